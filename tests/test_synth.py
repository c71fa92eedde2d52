"""The embedded benchmark generator: format, determinism, captions, domain differences, preview."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common.data.synth import DOMAINS, PROFILES, preview, synthesize
from common.data.synth.attributes import sample_identities
from common.data.synth.vocab import VOCABS

RECORD_KEYS = {"split", "captions", "file_path", "id"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synth") / "tiny"
    summary = synthesize(out, seed=0, profile="tiny", workers=1)
    return out, summary


def _records(root: Path, domain: str) -> list[dict]:
    return json.loads((root / domain / "reid_raw.json").read_text(encoding="utf-8"))


def _identities(root: Path, domain: str) -> dict[int, dict]:
    return {r["pid"]: r for r in json.loads((root / domain / "identities.json").read_text(encoding="utf-8"))}


def _all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z][a-z-]*", text.lower()))


def test_tiny_writes_cuhk_format(tiny):
    root, summary = tiny
    prof = PROFILES["tiny"]
    manifest = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
    assert len(manifest["domains"]) >= 3 and manifest["domains"] == list(summary)
    assert manifest["seed"] == 0 and manifest["profile"] == "tiny" and manifest["version"]
    n_train, n_val, n_test = prof.identities
    for domain in manifest["domains"]:
        recs = _records(root, domain)
        assert manifest["counts"][domain]["train"]["identities"] == n_train
        assert len(recs) == (n_train + n_val + n_test) * prof.images_per_identity
        for r in recs:
            assert set(r) == RECORD_KEYS
            assert r["split"] in ("train", "val", "test")
            assert isinstance(r["id"], int) and not isinstance(r["id"], bool) and r["id"] >= 1
            assert isinstance(r["file_path"], str) and not Path(r["file_path"]).is_absolute()
            assert isinstance(r["captions"], list) and len(r["captions"]) == 2
            assert all(isinstance(c, str) and c.strip() for c in r["captions"])
            path = root / domain / "imgs" / r["file_path"]
            with Image.open(path) as im:
                im.verify()
            with Image.open(path) as im:
                assert im.size == prof.size and im.mode == "RGB"
        train_ids = sorted({r["id"] for r in recs if r["split"] == "train"})
        assert train_ids == list(range(1, n_train + 1))
        other = {r["id"] for r in recs if r["split"] != "train"}
        assert min(other) == n_train + 1 and max(other) == n_train + n_val + n_test
        per_id: dict[int, int] = {}
        for r in recs:
            per_id[r["id"]] = per_id.get(r["id"], 0) + 1
        assert min(per_id.values()) >= 2
        assert len({r["file_path"] for r in recs}) == len(recs)


def test_identities_unique_within_domain(tiny):
    root, _ = tiny
    for domain in DOMAINS:
        idents = _identities(root, domain)
        keys = {tuple(v for k, v in r.items() if k not in ("pid", "split", "skin", "hair_colour", "tint")) for r in idents.values()}
        assert len(keys) == len(idents)
    big = sample_identities(np.random.default_rng(0), 1000)
    assert len({i.key() for i in big}) == 1000


def test_project_loader_reads_generated_domain(tiny):
    from common.data.registry import detect_format, load_dataset

    root, summary = tiny
    domain = next(iter(summary))
    assert detect_format(root / domain) == "embedded"
    ds = load_dataset("embedded", root / domain)
    assert len(ds.split("train")) == summary[domain]["splits"]["train"]["images"]


def test_same_seed_same_bytes_any_workers(tiny, tmp_path):
    root, _ = tiny
    again = tmp_path / "again"
    synthesize(again, seed=0, profile="tiny", workers=2)
    a, b = _all_files(root), _all_files(again)
    assert a.keys() == b.keys()
    assert all(a[k] == b[k] for k in a)

    other = tmp_path / "other"
    synthesize(other, seed=1, profile="tiny", workers=1)
    c = _all_files(other)
    for domain in DOMAINS:
        assert c[f"{domain}/reid_raw.json"] != a[f"{domain}/reid_raw.json"]
    assert sum(c[k] != a[k] for k in a if k.endswith(".jpg")) > len(a) // 2


def test_rewrite_replaces_previous_run_and_refuses_foreign_dirs(tmp_path):
    out = tmp_path / "out"
    synthesize(out, seed=3, profile="tiny", workers=1)
    stale = out / "flat" / "imgs" / "train" / "stale.jpg"
    stale.write_bytes(b"x")
    synthesize(out, seed=3, profile="tiny", workers=1)
    assert not stale.exists()
    foreign = tmp_path / "foreign"
    (foreign / "flat" / "imgs").mkdir(parents=True)
    with pytest.raises(ValueError, match="not written by the generator"):
        synthesize(foreign, profile="tiny", workers=1)


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown profile"):
        synthesize("/nonexistent-never-written", profile="huge")
    with pytest.raises(ValueError, match="seed"):
        synthesize("/nonexistent-never-written", seed=-1, profile="tiny")


def test_captions_paraphrase_but_agree(tiny):
    root, _ = tiny
    for domain, style in DOMAINS.items():
        vocab = VOCABS[style.grammar]
        idents = _identities(root, domain)
        by_id: dict[int, list[str]] = {}
        for r in _records(root, domain):
            assert r["captions"][0] != r["captions"][1]
            by_id.setdefault(r["id"], []).extend(r["captions"])
        for pid, caps in by_id.items():
            ident = idents[pid]
            upper_colours = set(vocab.colour_words(ident["upper_colour"]))
            upper_nouns = {w for phrase in vocab.upper[ident["upper"]] for w in _words(phrase)}
            shoe_colours = set(vocab.colour_words(ident["shoes_colour"]))
            for c in caps:
                words = _words(c)
                assert words & upper_colours, (domain, c, upper_colours)
                assert words & upper_nouns, (domain, c, ident["upper"])
                assert words & shoe_colours, (domain, c, ident["shoes_colour"])
                assert not re.search(r"\b[Aa] [aeiou]", c), c  # "an orange", never "a orange"
            assert len(set(caps)) == len(caps)  # no two captions of an identity are the same text


def test_domains_differ_measurably(tiny):
    root, _ = tiny
    stats = {}
    for domain in DOMAINS:
        recs = _records(root, domain)
        words = np.mean([len(c.split()) for r in recs for c in r["captions"]])
        imgs = [np.asarray(Image.open(root / domain / "imgs" / r["file_path"]).convert("RGB"), dtype=np.float32) for r in recs]
        a = np.stack(imgs)
        sharp = np.abs(np.diff(a.mean(-1), axis=2)).mean()
        stats[domain] = {"words": words, "bright": a.mean(), "warm": a[..., 0].mean() / a[..., 2].mean(), "sharp": sharp}
    s = stats
    assert s["flat"]["words"] > s["shaded"]["words"] + 5 > s["outline"]["words"] + 5
    assert s["flat"]["bright"] > s["shaded"]["bright"] + 30
    assert s["shaded"]["warm"] > s["flat"]["warm"] + 0.2
    assert s["outline"]["sharp"] > 1.3 * s["flat"]["sharp"] > 1.3 * s["shaded"]["sharp"]


def test_preview_sheet_layout(tiny, tmp_path):
    from common.data.synth.preview import CAPTION_LINES, CELL_W, IMG_H, LABEL_W, LINE_H, PAD

    root, summary = tiny
    out = preview(root, tmp_path / "sheet.png", per_domain=4, seed=1)
    assert out.is_file()
    with Image.open(out) as im:
        assert im.format == "PNG"
        row_h = PAD + IMG_H + 4 + CAPTION_LINES * LINE_H + PAD
        assert im.size == (LABEL_W + 4 * CELL_W, row_h * len(summary))
    with pytest.raises(FileNotFoundError):
        preview(tmp_path / "missing", tmp_path / "x.png")
