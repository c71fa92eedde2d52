"""The frozen dual-encoder trunk (`Backbone`), its registry, fingerprint and trainable-layer selection.

Names accepted by `build_backbone`:
- `minilm-effnet` (default for results): all-MiniLM-L6-v2 (384-d, mean
  pooling) + EfficientNet-Lite0 ImageNet (1280-d, mean-pooled) at 256x128;
- `clip:PATH`: a transformers CLIP from a local directory;
- `tiny` / `tiny:SEED`: small random BERT + EfficientNet-Lite through the
  same classes, deterministic for a seed (tests, CI).

Trunks never travel: a site checks `fingerprint()` against the server's.
Which trunk layers train is configuration (`trainable_parameters`), given as
parameter-name prefixes such as "text.encoder.layer.5" or "image._blocks.15";
by default nothing in the trunk trains.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator

import torch
from torch import nn

from .clip import BackboneError, load_clip
from .image_towers import EFFNET_IMAGE_SIZE, TINY_IMAGE_SIZE, effnet_lite0, tiny_effnet
from .preprocess import Normalization
from .text_towers import minilm_text, tiny_bert_text

FINGERPRINT_VERSION = "fedgckd-backbone-v1"


def _clean(obj):
    """Drop path- and version-dependent keys (`_name_or_path`, `transformers_version`, ...) from configs."""
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in sorted(obj.items())
                if not str(k).startswith("_") and k not in ("transformers_version", "architectures")}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    return obj


def _matches(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _set_mode(module: nn.Module, mode: bool) -> None:
    """module.train(mode), but every BatchNorm stays in eval()."""
    module.train(mode)
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


class Backbone:
    """A text tower and an image tower; frozen by default; features via `encode_*` (no grad)."""

    def __init__(self, name: str, kind: str, text, image):
        self.name, self.kind = name, kind
        self._text, self._image = text, image
        self.freeze()
        self.eval()

    # -- shapes and modules -------------------------------------------------
    @property
    def text_dim(self) -> int:
        return self._text.dim

    @property
    def image_dim(self) -> int:
        return self._image.dim

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) the image tower expects."""
        return self._image.image_size

    @property
    def normalization(self) -> Normalization:
        return self._image.norm

    @property
    def text_module(self) -> nn.Module:
        return self._text.module

    @property
    def image_module(self) -> nn.Module:
        return self._image.module

    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """Trunk parameters named "text.<name>" and "image.<name>"."""
        for prefix, mod in (("text", self.text_module), ("image", self.image_module)):
            for n, p in mod.named_parameters():
                yield f"{prefix}.{n}", p

    # -- modes ----------------------------------------------------------------
    def freeze(self) -> None:
        for _, p in self.named_parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True) -> "Backbone":
        """Set both trunks' mode; BatchNorm stays in eval() regardless (DP and pretrained stats)."""
        _set_mode(self.text_module, mode)
        _set_mode(self.image_module, mode)
        return self

    def eval(self) -> "Backbone":
        return self.train(False)

    # -- with grad (for configurations that train trunk layers) ---------------
    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return self._text.tokenize(texts)

    def text_forward(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._text.forward(tokens)

    def image_forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self._image.forward(pixels)

    # -- frozen features (no grad, eval mode) ---------------------------------
    def encode_text(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:
        """[N, text_dim] features. Batches of similar length (less padding); order preserved."""
        texts = list(texts)
        out = torch.empty(len(texts), self.text_dim)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        was_training = self.text_module.training
        self.text_module.eval()
        try:
            with torch.no_grad():
                for s in range(0, len(order), batch_size):
                    idx = order[s : s + batch_size]
                    out[idx] = self._text.forward(self._text.tokenize([texts[i] for i in idx])).float()
        finally:
            _set_mode(self.text_module, was_training)
        return out

    def encode_images(self, pixels: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """[B, image_dim] features of normalised pixels [B, 3, H, W]."""
        if pixels.ndim != 4 or tuple(pixels.shape[1:]) != (3, *self.image_size):
            raise ValueError(f"{self.name}: expected pixels [B, 3, {self.image_size[0]}, {self.image_size[1]}], "
                             f"got {list(pixels.shape)}")
        was_training = self.image_module.training
        self.image_module.eval()
        try:
            parts = [self._image.encode(pixels[s : s + batch_size]).float() for s in range(0, len(pixels), batch_size)]
        finally:
            _set_mode(self.image_module, was_training)
        return torch.cat(parts) if parts else torch.empty(0, self.image_dim)

    # -- identity -------------------------------------------------------------
    def config(self) -> dict:
        return _clean({"kind": self.kind, "text": self._text.config(), "image": self._image.config()})

    def fingerprint(self, exclude: tuple[str, ...] = ()) -> str:
        """sha256 over the config and every trunk tensor (weights and buffers) in sorted-name order.

        Path-independent (a CLIP directory may live anywhere). `exclude` drops
        tensors under the given prefixes (trunk layers that train and travel).
        """
        h = hashlib.sha256(FINGERPRINT_VERSION.encode())
        h.update(json.dumps(self.config(), sort_keys=True, default=str).encode())
        for prefix, mod in (("text", self.text_module), ("image", self.image_module)):
            sd = mod.state_dict()
            for k in sorted(sd):
                name = f"{prefix}.{k}"
                if any(_matches(name, e) for e in exclude):
                    continue
                t = sd[k].detach().cpu().contiguous()
                h.update(f"{name}|{t.dtype}|{list(t.shape)}".encode())
                h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()

    def __repr__(self) -> str:
        return f"Backbone({self.name!r}, text_dim={self.text_dim}, image_dim={self.image_dim}, image_size={self.image_size})"


def trainable_parameters(backbone: Backbone, train_layers: tuple[str, ...] = ()) -> list[tuple[str, nn.Parameter]]:
    """Freeze the trunk, then unfreeze parameters under the `train_layers` prefixes; return them.

    BatchNorm parameters stay frozen even under a selected prefix: Opacus has
    no per-sample gradient for BatchNorm and rejects models that train it.
    A prefix that matches nothing raises (a typo must not silently train nothing).
    """
    backbone.freeze()
    bn = {f"{prefix}.{n}" for prefix, mod in (("text", backbone.text_module), ("image", backbone.image_module))
          for n, m in mod.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    params = dict(backbone.named_parameters())
    unmatched = [pre for pre in train_layers if not any(_matches(n, pre) for n in params)]
    if unmatched:
        examples = sorted({".".join(n.split(".")[:4]) for n in params})[:6]
        raise ValueError(f"train_layers {unmatched} match no parameter of backbone {backbone.name!r} "
                         f"(names look like {examples})")
    chosen = []
    for n, p in params.items():
        if any(_matches(n, pre) for pre in train_layers) and n.rsplit(".", 1)[0] not in bn:
            p.requires_grad_(True)
            chosen.append((n, p))
    return chosen


def _minilm_effnet(image_size=None) -> Backbone:
    return Backbone("minilm-effnet", "minilm-effnet", minilm_text(), effnet_lite0(image_size or EFFNET_IMAGE_SIZE))


def _tiny(image_size=None, seed: int = 0) -> Backbone:
    name = "tiny" if seed == 0 else f"tiny:{seed}"
    return Backbone(name, "tiny", tiny_bert_text(seed=seed), tiny_effnet(image_size or TINY_IMAGE_SIZE, seed=seed))


_REGISTRY: dict[str, Callable[..., Backbone]] = {"minilm-effnet": _minilm_effnet, "tiny": _tiny}


def register_backbone(name: str, builder: Callable[..., Backbone]) -> None:
    """Add a backbone name; `builder(image_size=None)` returns a Backbone."""
    _REGISTRY[name] = builder


def available_backbones() -> list[str]:
    return sorted(_REGISTRY) + ["clip:PATH", "tiny:SEED"]


def build_backbone(name: str, image_size: tuple[int, int] | None = None) -> Backbone:
    """Build a backbone by name, offline. `image_size` overrides (H, W) for EfficientNet towers."""
    if name.startswith("clip:"):
        path = name[len("clip:"):]
        if not path:
            raise BackboneError("clip backbone: give a directory, as in 'clip:/path/to/clip'")
        if image_size is not None:
            raise BackboneError("clip backbone: the image size is fixed by the model's config")
        text, image = load_clip(path)
        return Backbone(name, "clip", text, image)
    if name.startswith("tiny:"):
        try:
            seed = int(name[len("tiny:"):])
        except ValueError:
            raise BackboneError(f"backbone {name!r}: the seed after 'tiny:' must be an integer") from None
        return _tiny(image_size, seed=seed)
    if name not in _REGISTRY:
        raise BackboneError(f"unknown backbone {name!r}; available: {', '.join(available_backbones())}")
    return _REGISTRY[name](image_size=image_size)
