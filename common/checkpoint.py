"""Model checkpoints: what a trained fedgckd model is on disk.

A checkpoint is a folder:

    CKPT/
      heads.safetensors   the trainable weights (projection heads), nothing else
      config.json         format version, backbone name and trunk fingerprint,
                          head config, seed, how the weights were chosen, history

The frozen trunks are *not* saved: they come from installed packages (or the
user's CLIP folder) and are identified by `backbone_fingerprint`, which a
loader checks so that heads are never paired with other trunks.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from safetensors.torch import load_file, save

from common.atomic import atomic_write_bytes, atomic_write_json, read_json
from common.models.heads import DualHeads, HeadConfig

FORMAT = "fedgckd-checkpoint/1"


@dataclass
class Checkpoint:
    heads: DualHeads
    backbone: str
    backbone_fingerprint: str
    head_config: HeadConfig
    text_dim: int
    image_dim: int
    seed: int
    meta: dict = field(default_factory=dict)  # role, selection criterion, history, data provenance


def save_checkpoint(ckpt: Checkpoint, out: Path | str) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in ckpt.heads.state_dict().items()}
    atomic_write_bytes(out / "heads.safetensors", save(tensors))
    atomic_write_json(
        out / "config.json",
        {
            "format": FORMAT,
            "backbone": ckpt.backbone,
            "backbone_fingerprint": ckpt.backbone_fingerprint,
            "head_config": asdict(ckpt.head_config),
            "text_dim": ckpt.text_dim,
            "image_dim": ckpt.image_dim,
            "seed": ckpt.seed,
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "meta": ckpt.meta,
        },
    )
    return out


def load_checkpoint(path: Path | str, expect_fingerprint: str | None = None) -> Checkpoint:
    path = Path(path)
    cfg_file = path / "config.json"
    if not cfg_file.exists():
        raise FileNotFoundError(f"{path} is not a fedgckd checkpoint: {cfg_file} is missing")
    cfg = read_json(cfg_file)
    if cfg.get("format") != FORMAT:
        raise ValueError(f"{cfg_file}: unsupported checkpoint format {cfg.get('format')!r} (expected {FORMAT})")
    if expect_fingerprint is not None and cfg["backbone_fingerprint"] != expect_fingerprint:
        raise ValueError(
            f"{cfg_file}: trained on backbone {cfg['backbone']} with trunk fingerprint "
            f"{cfg['backbone_fingerprint'][:12]}, but the installed trunks hash to {expect_fingerprint[:12]}"
        )
    head_cfg = HeadConfig(**cfg["head_config"])
    heads = DualHeads(cfg["text_dim"], cfg["image_dim"], head_cfg)
    heads.load_state_dict(load_file(str(path / "heads.safetensors")))
    heads.eval()
    return Checkpoint(heads, cfg["backbone"], cfg["backbone_fingerprint"], head_cfg, cfg["text_dim"], cfg["image_dim"], cfg["seed"], cfg.get("meta", {}))


def clone_heads(heads: DualHeads) -> DualHeads:
    out = DualHeads(heads.text_dim, heads.image_dim, heads.cfg)
    out.load_state_dict({k: v.clone() for k, v in heads.state_dict().items()})
    return out


def heads_num_bytes(heads: DualHeads) -> int:
    return sum(t.numel() * t.element_size() for t in heads.state_dict().values())


__all__ = ["Checkpoint", "save_checkpoint", "load_checkpoint", "clone_heads", "heads_num_bytes"]
