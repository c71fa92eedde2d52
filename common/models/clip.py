"""CLIP towers from a local directory (`clip:PATH`), and a tiny random CLIP writer for tests.

No CLIP weights install by package name (MODELS_AND_DATA.md section 4), so
this path is used for real only when a user supplies a local transformers
CLIP directory (config.json + weights + tokenizer files, optionally
preprocessor_config.json for mean/std). Tests write a tiny random one with
`write_tiny_clip`, whose tokenizer is a byte-level BPE built offline.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .image_towers import ClipVisionModule, ClipVisionTower
from .preprocess import CLIP, Normalization
from .text_towers import ClipTextModule, ClipTextTower, quiet_transformers


class BackboneError(ValueError):
    """A backbone name or directory that cannot be used."""


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from bytes to printable unicode characters."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _read_norm(path: Path) -> Normalization:
    f = path / "preprocessor_config.json"
    if not f.is_file():
        return CLIP
    cfg = json.loads(f.read_text())
    mean, std = cfg.get("image_mean"), cfg.get("image_std")
    if not (isinstance(mean, list) and isinstance(std, list) and len(mean) == 3 and len(std) == 3):
        return CLIP
    return Normalization(tuple(float(v) for v in mean), tuple(float(v) for v in std))


def load_clip(path: str | Path) -> tuple[ClipTextTower, ClipVisionTower]:
    """Load a transformers CLIPModel + CLIPTokenizer from a local directory, offline.

    Raises `BackboneError` naming `path` when it does not hold a CLIP model.
    """
    from transformers import CLIPModel, CLIPTokenizer

    p = Path(path).expanduser()
    cfg_file = p / "config.json"
    if not p.is_dir():
        raise BackboneError(f"clip backbone: {str(path)!r} is not a directory")
    if not cfg_file.is_file():
        raise BackboneError(f"clip backbone: {str(path)!r} does not hold a CLIP model (no config.json)")
    try:
        model_type = json.loads(cfg_file.read_text()).get("model_type")
    except (json.JSONDecodeError, AttributeError) as e:
        raise BackboneError(f"clip backbone: {cfg_file} is not valid JSON: {e}") from e
    if model_type != "clip":
        raise BackboneError(f"clip backbone: {str(path)!r} holds a {model_type!r} model, not a CLIP model")
    try:
        with quiet_transformers():
            model, info = CLIPModel.from_pretrained(str(p), local_files_only=True, output_loading_info=True)
            tok = CLIPTokenizer.from_pretrained(str(p), local_files_only=True)
    except (OSError, ValueError) as e:
        raise BackboneError(f"clip backbone: cannot load a CLIP model from {str(path)!r}: {e}") from e
    if info["missing_keys"] or info["mismatched_keys"]:
        raise BackboneError(f"clip backbone: weights in {str(path)!r} do not match the config: {info}")
    model.eval()
    text = ClipTextTower(ClipTextModule(model.text_model, model.text_projection), tok,
                         max_length=int(model.config.text_config.max_position_embeddings))
    s = int(model.config.vision_config.image_size)
    image = ClipVisionTower(ClipVisionModule(model.vision_model, model.visual_projection), (s, s), _read_norm(p))
    return text, image


def write_tiny_clip(directory: str | Path, seed: int = 0, projection_dim: int = 16) -> Path:
    """Write a tiny random CLIP (2-layer, 32-wide towers, 32x32 images) plus tokenizer to `directory`.

    The tokenizer is byte-level BPE with no merges: every byte is a token, so
    any text encodes without unknown tokens. Deterministic for a given seed.
    """
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    chars = list(_bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    bos, eos = len(vocab), len(vocab) + 1
    vocab.update({"<|startoftext|>": bos, "<|endoftext|>": eos})
    tok = CLIPTokenizer(vocab=vocab, merges=[])
    common = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), max_position_embeddings=32, bos_token_id=bos, eos_token_id=eos,
                         pad_token_id=eos, **common),
        vision_config=dict(image_size=32, patch_size=8, **common),
        projection_dim=projection_dim,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(cfg)
    with quiet_transformers():
        model.save_pretrained(str(d))
        tok.save_pretrained(str(d))
    (d / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "CLIPImageProcessor", "image_mean": list(CLIP.mean), "image_std": list(CLIP.std),
        "crop_size": {"height": 32, "width": 32}, "size": {"shortest_edge": 32}}, indent=1))
    return d
