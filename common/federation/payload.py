"""The teacher broadcast: what the server sends a site once per teacher version.

Arrays: the teacher's projection heads (``teacher.<param>``) and the
teacher's embeddings of the public source anchor bank (``anchors.image``,
``anchors.text``). Config: the version tag, the backbone name and trunk
fingerprint (a site refuses other trunks), the head shape. Frozen trunks
never travel. The version is a content hash, so a site's cached copy can
never be confused with another run's teacher.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import torch

from common.models.heads import DualHeads, HeadConfig

TEACHER = "teacher."
ANCHOR_IMAGE, ANCHOR_TEXT = "anchors.image", "anchors.text"


def content_version(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for k in sorted(arrays):
        a = np.ascontiguousarray(arrays[k])
        h.update(f"{k}|{a.dtype}|{list(a.shape)}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:20]


def pack_teacher(heads: DualHeads, anchor_images: torch.Tensor, anchor_texts: torch.Tensor, backbone: str,
                 fingerprint: str) -> tuple[dict[str, np.ndarray], dict]:
    """(arrays, config) of one teacher version."""
    arrays = {TEACHER + k: v.detach().cpu().numpy().astype(np.float32) for k, v in heads.state_dict().items()}
    arrays[ANCHOR_IMAGE] = anchor_images.detach().cpu().numpy().astype(np.float32)
    arrays[ANCHOR_TEXT] = anchor_texts.detach().cpu().numpy().astype(np.float32)
    config = {"teacher-version": content_version(arrays), "backbone": backbone, "fingerprint": fingerprint,
              "head-config": json.dumps(heads.cfg.to_dict(), sort_keys=True), "text-dim": heads.text_dim,
              "image-dim": heads.image_dim}
    return arrays, config


def unpack_teacher(arrays: dict[str, np.ndarray], config: dict) -> tuple[DualHeads, torch.Tensor, torch.Tensor]:
    """(teacher heads in eval mode, anchor images, anchor texts); checks the version hash."""
    got = content_version(arrays)
    if got != config["teacher-version"]:
        raise ValueError(f"teacher payload does not match its version tag ({got} != {config['teacher-version']})")
    heads = DualHeads(int(config["text-dim"]), int(config["image-dim"]), HeadConfig.from_dict(json.loads(config["head-config"])))
    sd = {k[len(TEACHER):]: torch.from_numpy(np.array(v)) for k, v in arrays.items() if k.startswith(TEACHER)}
    heads.load_state_dict(sd)
    heads.eval()
    for p in heads.parameters():
        p.requires_grad_(False)
    return heads, torch.from_numpy(np.array(arrays[ANCHOR_IMAGE])), torch.from_numpy(np.array(arrays[ANCHOR_TEXT]))


class FixedAnchors:
    """Stands in for `PublicBank` at a site: the anchors arrive already embedded by the round's teacher.

    The site's teacher is fixed within a round (the server keeps the EMA), so
    `embed` always returns the broadcast embeddings, whatever heads it is given.
    """

    def __init__(self, images: torch.Tensor, texts: torch.Tensor):
        self.images, self.texts = images, texts

    def embed(self, heads=None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images, self.texts
