"""Model checkpoints: what a trained fedgckd model is on disk.

A checkpoint is a folder:

    CKPT/
      heads.safetensors   the trainable weights (projection heads), nothing else
      config.json         format version, backbone name and trunk fingerprint,
                          head config, seed, how the weights were chosen, history

The frozen trunks are *not* saved: they come from installed packages (or the
user's CLIP folder) and are identified by `backbone_fingerprint`, which a
loader checks so that heads are never paired with other trunks.

A checkpoint that cannot be read (junk JSON, a missing key, a damaged
safetensors file, weights of other shapes) raises `CheckpointError`, a
`ValueError` that names the file, so the CLI prints one line and exits 2.

Where the source data lives: `source_meta` records the data folder as typed,
as an absolute path and relative to the checkpoint's own folder (so a teacher
moved together with its data, or used from another working directory, still
finds it); `source_data_dir` resolves it back (see there).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save

from common.atomic import atomic_write_bytes, atomic_write_json, read_json
from common.models.heads import DualHeads, HeadConfig

FORMAT = "fedgckd-checkpoint/1"


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read; the message names the file."""


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
    try:
        cfg = read_json(cfg_file)
    except (json.JSONDecodeError, UnicodeDecodeError) as ex:
        raise CheckpointError(f"{cfg_file}: not a fedgckd checkpoint config, the JSON does not parse ({ex})") from None
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        got = cfg.get("format") if isinstance(cfg, dict) else type(cfg).__name__
        raise CheckpointError(f"{cfg_file}: unsupported checkpoint format {got!r} (expected {FORMAT})")
    missing = [k for k in ("backbone", "backbone_fingerprint", "head_config", "text_dim", "image_dim", "seed") if k not in cfg]
    if missing:
        raise CheckpointError(f"{cfg_file}: checkpoint config lacks {', '.join(missing)}")
    if expect_fingerprint is not None and cfg["backbone_fingerprint"] != expect_fingerprint:
        raise CheckpointError(
            f"{cfg_file}: trained on backbone {cfg['backbone']} with trunk fingerprint "
            f"{cfg['backbone_fingerprint'][:12]}, but the installed trunks hash to {expect_fingerprint[:12]}"
        )
    try:
        head_cfg = HeadConfig.from_dict(cfg["head_config"])
        heads = DualHeads(cfg["text_dim"], cfg["image_dim"], head_cfg)
    except (TypeError, ValueError) as ex:
        raise CheckpointError(f"{cfg_file}: head_config/text_dim/image_dim do not describe heads ({ex})") from None
    weights = path / "heads.safetensors"
    if not weights.exists():
        raise FileNotFoundError(f"{path} is not a complete fedgckd checkpoint: {weights} is missing")
    try:
        heads.load_state_dict(load_file(str(weights)))
    except (SafetensorError, RuntimeError, OSError) as ex:  # junk bytes; weights of other shapes or names
        first = str(ex).strip().splitlines()[0] if str(ex).strip() else type(ex).__name__
        raise CheckpointError(f"{weights}: cannot load the heads' weights ({first})") from None
    heads.eval()
    return Checkpoint(heads, cfg["backbone"], cfg["backbone_fingerprint"], head_cfg, cfg["text_dim"], cfg["image_dim"], cfg["seed"], cfg.get("meta", {}))


def source_meta(data: Path | str, domain: str, out: Path | str) -> dict:
    """The `meta["source"]` of a checkpoint written to `out`, trained on `data/domain`."""
    data_abs = Path(data).resolve()
    return {"data": str(data), "domain": domain, "data_absolute": str(data_abs),
            "data_from_checkpoint": os.path.relpath(data_abs, Path(out).resolve())}


def source_data_dir(ckpt_dir: Path | str, meta: dict, data: Path | str | None = None,
                    override: Path | str | None = None) -> Path:
    """The folder holding the checkpoint's source domain (``meta`` is its ``meta["source"]``).

    In order: ``override`` (the user's --source-data) if given; the recorded folder relative to the checkpoint's
    own folder, then its absolute path (checkpoints from `source_meta`); ``data`` (the command's --data) if it
    holds the source domain; and for older checkpoints, which stored only the path as typed (relative to where
    pretraining ran), that path under the working directory and under each folder above the checkpoint.
    The first that holds the domain wins; none does: `CheckpointError` naming the checkpoint and every place tried.
    """
    ckpt_dir, domain = Path(ckpt_dir), str(meta.get("domain", ""))
    if override is not None:
        if not (Path(override) / domain).is_dir():
            raise CheckpointError(f"--source-data {override}: no folder {Path(override) / domain} for the source domain "
                                  f"{domain!r} of {ckpt_dir / 'config.json'}")
        return Path(override)
    tried: list[Path] = []
    candidates: list[Path] = []
    if meta.get("data_from_checkpoint"):
        candidates.append(ckpt_dir / meta["data_from_checkpoint"])
    if meta.get("data_absolute"):
        candidates.append(Path(meta["data_absolute"]))
    if data is not None:
        candidates.append(Path(data))
    typed = meta.get("data")
    if typed and not Path(typed).is_absolute():
        candidates += [Path(typed)] + [up / typed for up in ckpt_dir.resolve().parents]
    elif typed:
        candidates.append(Path(typed))
    for c in candidates:
        if c in tried:
            continue
        tried.append(c)
        if (c / domain).is_dir():
            return c
    shown = "; ".join(str(t) for t in tried[:6]) + ("; ..." if len(tried) > 6 else "")
    raise CheckpointError(f"{ckpt_dir / 'config.json'}: its source data (domain {domain!r}, recorded as "
                          f"{typed!r}) is not in any of: {shown}. Pass --source-data DIR, the folder holding {domain}/")


def clone_heads(heads: DualHeads) -> DualHeads:
    out = DualHeads(heads.text_dim, heads.image_dim, heads.cfg)
    out.load_state_dict({k: v.clone() for k, v in heads.state_dict().items()})
    return out


def heads_num_bytes(heads: DualHeads) -> int:
    return sum(t.numel() * t.element_size() for t in heads.state_dict().values())


__all__ = ["Checkpoint", "CheckpointError", "save_checkpoint", "load_checkpoint", "source_meta", "source_data_dir",
           "clone_heads", "heads_num_bytes"]
