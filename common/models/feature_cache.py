"""Frozen-trunk features, computed once per (backbone, data) and cached on disk.

With the trunks frozen, training only ever sees trunk features, so they are
extracted once: `extract_features(backbone, records)` -> `FeatureSet`.

Cache: `<cache_dir>/features/<key>.safetensors` plus `<key>.json` (a readable
sidecar). The key hashes the backbone fingerprint (weights + config), the
image size and normalisation, and every record's image path, file mtime
(ns) and size, and captions, in order. A hit is served only if the key stored
inside the safetensors file equals the recomputed key and the shapes match;
anything else is recomputed and rewritten. Files are written to a temporary
name in the same folder and moved into place with os.replace, so a reader
never sees a partial file. Identity labels are never cached: they are taken
from the records on every call, so one cache serves labelled and unlabelled views.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from common.data.records import DataError, Record

from .backbones import Backbone
from .preprocess import iter_image_batches

log = logging.getLogger(__name__)
CACHE_FORMAT = "fedgckd-features-v1"
Progress = Callable[[int, int], None]


@dataclass
class FeatureSet:
    """Trunk features of a list of records: one row per image, one per caption."""

    image_feats: torch.Tensor  # [N_img, Di] float32
    text_feats: torch.Tensor  # [N_txt, Dt] float32
    text_to_image: torch.Tensor  # [N_txt] long: row of the caption's image
    image_pids: torch.Tensor  # [N_img] long, -1 where unknown
    text_pids: torch.Tensor  # [N_txt] long, -1 where unknown
    image_paths: list[str]
    captions: list[str]
    backbone: str = ""
    fingerprint: str = ""
    cache_key: str = ""
    from_cache: bool = False
    stats: dict = field(default_factory=dict)  # seconds, images_per_s, captions_per_s of the extraction

    @property
    def n_images(self) -> int:
        return int(self.image_feats.shape[0])

    @property
    def n_texts(self) -> int:
        return int(self.text_feats.shape[0])

    def without_labels(self) -> "FeatureSet":
        """A copy whose identity labels are all -1 (what the adaptation path may see)."""
        return dataclasses.replace(self, image_pids=torch.full_like(self.image_pids, -1),
                                   text_pids=torch.full_like(self.text_pids, -1))

    def select_images(self, image_idx: Sequence[int] | torch.Tensor) -> "FeatureSet":
        """The subset of the given image rows with their captions (e.g. one site's share)."""
        idx = torch.as_tensor(image_idx, dtype=torch.long).reshape(-1)
        remap = torch.full((self.n_images,), -1, dtype=torch.long)
        remap[idx] = torch.arange(len(idx))
        keep = (remap[self.text_to_image] >= 0).nonzero().squeeze(1)
        keep = keep[torch.argsort(remap[self.text_to_image[keep]], stable=True)]
        return dataclasses.replace(
            self, image_feats=self.image_feats[idx], text_feats=self.text_feats[keep],
            text_to_image=remap[self.text_to_image[keep]], image_pids=self.image_pids[idx],
            text_pids=self.text_pids[keep], image_paths=[self.image_paths[i] for i in idx.tolist()],
            captions=[self.captions[i] for i in keep.tolist()])


def default_cache_dir() -> Path:
    """$FEDGCKD_CACHE, else ~/.cache/fedgckd."""
    env = os.environ.get("FEDGCKD_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "fedgckd"


def cache_key(backbone: Backbone, records: Sequence[Record], fingerprint: str | None = None) -> str:
    """sha256 over backbone fingerprint, image size, normalisation and (path, mtime_ns, size, captions) per record."""
    h = hashlib.sha256()
    head = {"format": CACHE_FORMAT, "fingerprint": fingerprint or backbone.fingerprint(),
            "image_size": list(backbone.image_size), "norm": backbone.normalization.as_dict()}
    h.update(json.dumps(head, sort_keys=True).encode())
    for r in records:
        path = os.path.abspath(r.image_path)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise DataError(path, "image file not found", record=r.index, kind="missing_image") from None
        h.update(json.dumps([path, st.st_mtime_ns, st.st_size, list(r.captions)]).encode() + b"\n")
    return h.hexdigest()


def _atomic_write(path: Path, write: Callable[[str], None]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _load_cached(path: Path, key: str, n_img: int, n_txt: int, backbone: Backbone, t2i: torch.Tensor):
    """(image_feats, text_feats) if `path` holds exactly these features, else None."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != CACHE_FORMAT or meta.get("key") != key:
                log.info("feature cache %s: key mismatch, recomputing", path)
                return None
            img, txt, stored_t2i = (f.get_tensor(k) for k in ("image_feats", "text_feats", "text_to_image"))
    except Exception as e:  # a truncated or foreign file: recompute rather than fail
        log.warning("feature cache %s unreadable (%s), recomputing", path, e)
        return None
    if (tuple(img.shape) != (n_img, backbone.image_dim) or tuple(txt.shape) != (n_txt, backbone.text_dim)
            or not torch.equal(stored_t2i, t2i)):
        log.warning("feature cache %s: shapes do not match the records, recomputing", path)
        return None
    return img, txt


@contextlib.contextmanager
def _threads(n: int | None):
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _compute(backbone, records, captions, batch_size, progress, total):
    paths = [str(r.image_path) for r in records]
    index_of = {p: r.index for p, r in zip(paths, records)}
    img_parts, done, t0 = [], 0, time.perf_counter()
    try:
        for batch in iter_image_batches(paths, backbone.image_size, backbone.normalization, batch_size=batch_size):
            img_parts.append(backbone.encode_images(batch, batch_size=batch_size))
            done += len(batch)
            if progress:
                progress(done, total)
    except DataError as e:
        raise DataError(e.file, e.reason, record=index_of.get(e.file), kind=e.kind) from e
    t_img = time.perf_counter() - t0
    img = torch.cat(img_parts) if img_parts else torch.empty(0, backbone.image_dim)
    # Unique captions (grammar-made captions repeat), sorted by length so padding is small,
    # in chunks so progress is regular.
    uniq = list(dict.fromkeys(captions))
    row = {c: i for i, c in enumerate(uniq)}
    order = sorted(range(len(uniq)), key=lambda i: len(uniq[i]))
    utxt = torch.empty(len(uniq), backbone.text_dim)
    chunk = batch_size * 8
    t1 = time.perf_counter()
    for s in range(0, len(order), chunk):
        idx = order[s : s + chunk]
        utxt[idx] = backbone.encode_text([uniq[i] for i in idx], batch_size=batch_size)
        done = len(paths) + round(len(captions) * min(s + chunk, len(order)) / len(order))
        if progress:
            progress(done, total)
    txt = utxt[torch.tensor([row[c] for c in captions], dtype=torch.long)] if captions else utxt
    t_txt = time.perf_counter() - t1
    stats = {"seconds": round(t_img + t_txt, 3), "image_seconds": round(t_img, 3), "text_seconds": round(t_txt, 3),
             "images_per_s": round(len(paths) / t_img, 2) if t_img > 0 else None,
             "captions_per_s": round(len(captions) / t_txt, 2) if t_txt > 0 else None,
             "unique_captions": len(uniq), "torch_threads": torch.get_num_threads()}
    return img, txt, stats


def extract_features(backbone: Backbone, records: Sequence[Record], cache_dir: Path | str | None = None,
                     progress: Progress | None = None, *, batch_size: int = 64, use_cache: bool = True,
                     num_threads: int | None = None) -> FeatureSet:
    """Trunk features of `records` (images in record order; captions flattened in record order).

    cache_dir: folder of the cache (default `default_cache_dir()`); `use_cache=False` neither reads nor writes.
    progress:  `progress(done, total)` with total = images + captions, called per batch.
    num_threads: torch threads during extraction (restored afterwards); None keeps the current setting.
    Raises DataError naming the file and record for a missing or undecodable image.
    """
    records = list(records)
    captions = [c for r in records for c in r.captions]
    t2i = torch.tensor([i for i, r in enumerate(records) for _ in r.captions], dtype=torch.long)
    image_pids = torch.tensor([-1 if r.pid is None else int(r.pid) for r in records], dtype=torch.long)
    text_pids = image_pids[t2i] if len(t2i) else torch.empty(0, dtype=torch.long)
    fp = backbone.fingerprint()
    key = cache_key(backbone, records, fp)
    total = len(records) + len(captions)
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    path = folder / "features" / f"{key}.safetensors"

    cached = _load_cached(path, key, len(records), len(captions), backbone, t2i) if use_cache else None
    stats: dict = {}
    if cached is not None:
        img, txt = cached
        if progress:
            progress(total, total)
    else:
        with _threads(num_threads):
            img, txt, stats = _compute(backbone, records, captions, batch_size, progress, total)
        if use_cache:
            path.parent.mkdir(parents=True, exist_ok=True)
            meta = {"format": CACHE_FORMAT, "key": key, "backbone": backbone.name, "fingerprint": fp}
            tensors = {"image_feats": img.contiguous(), "text_feats": txt.contiguous(), "text_to_image": t2i}
            _atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))
            side = {**meta, "image_size": list(backbone.image_size), "n_images": len(records),
                    "n_texts": len(captions), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "stats": stats}
            _atomic_write(path.with_suffix(".json"), lambda tmp: Path(tmp).write_text(json.dumps(side, indent=1)))
    return FeatureSet(image_feats=img, text_feats=txt, text_to_image=t2i, image_pids=image_pids,
                      text_pids=text_pids, image_paths=[str(r.image_path) for r in records], captions=captions,
                      backbone=backbone.name, fingerprint=fp, cache_key=key, from_cache=cached is not None,
                      stats=stats)
