"""Write the embedded benchmark to disk in the CUHK-PEDES annotation format.

Layout written by `synthesize`::

    OUT/manifest.json                  generator version, seed, profile, domains, counts
    OUT/<domain>/reid_raw.json         CUHK-PEDES records: split, captions, file_path, id
    OUT/<domain>/imgs/<split>/<id>_<k>.jpg
    OUT/<domain>/domain.json           the domain's style and counts (marks it as generated)
    OUT/<domain>/identities.json       each identity's attributes and split

Determinism: identities of a domain are drawn in one sequence from
SeedSequence(seed, crc32(domain), 0); image k of identity `id` uses
(seed, crc32(domain), 1, id, k) and its captions (seed, crc32(domain), 2, id, k).
Nothing depends on global random state or on which worker renders what, so the
same seed gives byte-identical files for any number of workers.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import zlib
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np

from common.data.synth.attributes import Identity, sample_identities
from common.data.synth.captions import caption_pair
from common.data.synth.domains import DOMAINS
from common.data.synth.profiles import PROFILES, Profile
from common.data.synth.render import render_image

GENERATOR = "fedgckd.synth"
VERSION = "1.0"
SPLITS = ("train", "val", "test")
_MARKER = "domain.json"

Progress = Callable[[int, int], None]


def _domain_key(name: str) -> int:
    return zlib.crc32(name.encode("utf-8"))


def plan_identities(domain: str, profile: Profile, seed: int) -> list[tuple[str, Identity]]:
    """(split, identity) for every identity of a domain; ids 1..N, train first."""
    rng = np.random.default_rng([seed, _domain_key(domain), 0])
    n_train, n_val, n_test = profile.identities
    idents = sample_identities(rng, n_train + n_val + n_test)
    splits = ["train"] * n_train + ["val"] * n_val + ["test"] * n_test
    return list(zip(splits, idents))


def _render_identity(job: tuple) -> list[dict]:
    """Render and write all images of one identity; return its annotation records."""
    root, domain, split, ident, n_images, size, seed, quality = job
    style = DOMAINS[domain]
    key = _domain_key(domain)
    records = []
    for k in range(n_images):
        img, shot = render_image(ident, style, np.random.default_rng([seed, key, 1, ident.pid, k]), size)
        rel = f"{split}/{ident.pid}_{k}.jpg"
        img.save(Path(root) / domain / "imgs" / rel, format="JPEG", quality=quality, subsampling=0)
        caps = caption_pair(ident, shot.view, style.grammar, np.random.default_rng([seed, key, 2, ident.pid, k]))
        records.append({"split": split, "captions": caps, "file_path": rel, "id": ident.pid})
    return records


def _prepare_domain_dir(root: Path, domain: str) -> None:
    ddir = root / domain
    imgs = ddir / "imgs"
    if imgs.exists():
        if not (ddir / _MARKER).is_file():
            raise ValueError(f"{imgs} exists and was not written by the generator (no {_MARKER}); choose an empty --out folder")
        shutil.rmtree(imgs)  # a previous generated run: replace it wholly
    for split in SPLITS:
        (imgs / split).mkdir(parents=True, exist_ok=True)


def _counts(records: list[dict]) -> dict:
    out = {}
    for split in SPLITS:
        recs = [r for r in records if r["split"] == split]
        out[split] = {"identities": len({r["id"] for r in recs}), "images": len(recs), "captions": sum(len(r["captions"]) for r in recs)}
    return out


def _dump(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def synthesize(
    out_dir: Path | str,
    seed: int = 0,
    profile: str = "default",
    workers: int | None = None,
    progress: Progress | None = None,
) -> dict:
    """Generate every domain of `profile` into `out_dir`; return per-domain counts.

    workers: processes to render with (default: all cores; 1 renders in this
    process). progress: optional callable(done_images, total_images).
    Returns {domain: {"root": str, "splits": {split: {identities, images, captions}}}}.
    """
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose from {', '.join(PROFILES)}")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    prof = PROFILES[profile]
    root = Path(out_dir).expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    workers = max(1, int(workers or os.cpu_count() or 1))

    plans = {d: plan_identities(d, prof, seed) for d in prof.domains}
    jobs = []
    for d in prof.domains:
        _prepare_domain_dir(root, d)
        jobs += [(str(root), d, split, ident, prof.images_per_identity, prof.size, seed, prof.jpeg_quality) for split, ident in plans[d]]
    total = len(jobs) * prof.images_per_identity
    results: list[list[dict]] = []

    def _tick(res: list[dict]) -> None:
        results.append(res)
        if progress is not None:
            progress(len(results) * prof.images_per_identity, total)

    if progress is not None:
        progress(0, total)
    if workers == 1 or len(jobs) < 2:
        for job in jobs:
            _tick(_render_identity(job))
    else:
        ctx = multiprocessing.get_context("spawn")  # no fork of a possibly multi-threaded parent
        with ctx.Pool(min(workers, len(jobs))) as pool:
            for res in pool.imap(_render_identity, jobs, chunksize=max(1, min(16, len(jobs) // (8 * workers)))):
                _tick(res)

    summary: dict = {}
    by_domain: dict[str, list[dict]] = {d: [] for d in prof.domains}
    for job, res in zip(jobs, results):
        by_domain[job[1]].extend(res)
    for d in prof.domains:
        ddir = root / d
        records = by_domain[d]
        counts = _counts(records)
        _dump(ddir / "reid_raw.json", records)
        _dump(ddir / "identities.json", [{"split": split, **ident.to_json()} for split, ident in plans[d]])
        _dump(ddir / _MARKER, {"generator": GENERATOR, "version": VERSION, "seed": seed, "profile": prof.name,
                                "domain": d, "style": asdict(DOMAINS[d]), "counts": counts})
        summary[d] = {"root": str(ddir), "splits": counts}
    _dump(root / "manifest.json", {
        "generator": GENERATOR, "version": VERSION, "seed": seed, "profile": prof.name, "settings": asdict(prof),
        "domains": list(prof.domains),
        "counts": {d: summary[d]["splits"] for d in prof.domains},
    })
    return summary
