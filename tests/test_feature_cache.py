"""Feature extraction and its on-disk cache (tiny backbone, small JPEGs written with PIL)."""

import os
from pathlib import Path

import pytest
import torch
from PIL import Image

from common.data.records import DataError, Record
from common.models import DualHeads, HeadConfig, build_backbone, extract_features
from common.models.feature_cache import _atomic_write




@pytest.fixture(scope="module")
def backbone():
    return build_backbone("tiny")


def _jpeg(path: Path, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    arr = (torch.rand(128, 64, 3, generator=g) * 255).to(torch.uint8).numpy()
    Image.fromarray(arr).save(path, quality=90)


@pytest.fixture
def records(tmp_path):
    img = tmp_path / "imgs"
    img.mkdir()
    recs = []
    for i in range(5):
        _jpeg(img / f"{i}.jpg", i)
        caps = (f"a person number {i} in a red coat", f"someone {i} walking") if i != 3 else (f"only one caption {i}",)
        recs.append(Record(img / f"{i}.jpg", caps, None if i == 4 else i // 2, "train", i))
    return recs


@pytest.fixture
def counted(backbone, monkeypatch):
    calls = {"images": 0, "texts": 0}
    enc_i, enc_t = backbone.encode_images, backbone.encode_text

    def images(*a, **k):
        calls["images"] += 1
        return enc_i(*a, **k)

    def texts(*a, **k):
        calls["texts"] += 1
        return enc_t(*a, **k)

    monkeypatch.setattr(backbone, "encode_images", images)
    monkeypatch.setattr(backbone, "encode_text", texts)
    return calls


def test_extract_shapes_labels_and_progress(backbone, records, tmp_path):
    seen = []
    fs = extract_features(backbone, records, tmp_path / "cache", progress=lambda d, t: seen.append((d, t)),
                          batch_size=2)
    assert fs.image_feats.shape == (5, backbone.image_dim) and fs.text_feats.shape == (9, backbone.text_dim)
    assert fs.text_to_image.tolist() == [0, 0, 1, 1, 2, 2, 3, 4, 4]
    assert fs.image_pids.tolist() == [0, 0, 1, 1, -1] and fs.text_pids.tolist() == [0, 0, 0, 0, 1, 1, 1, -1, -1]
    assert fs.captions[6] == "only one caption 3" and fs.image_paths[2].endswith("2.jpg")
    assert seen[-1] == (14, 14) and all(a[0] <= b[0] for a, b in zip(seen, seen[1:])) and len(seen) > 2
    assert fs.stats["images_per_s"] > 0 and not fs.from_cache
    # rows match encoding the records one by one
    one = extract_features(backbone, records[3:4], use_cache=False)
    assert torch.allclose(one.image_feats[0], fs.image_feats[3], atol=1e-5)
    assert torch.allclose(one.text_feats[0], fs.text_feats[6], atol=1e-5)
    # features are ordinary tensors: a head can train on them
    heads = DualHeads(backbone.text_dim, backbone.image_dim, HeadConfig(out_dim=8, hidden=16))
    t, v = heads(fs.text_feats, fs.image_feats[fs.text_to_image])
    (t * v).sum().backward()


def test_second_call_is_a_verified_hit(backbone, records, tmp_path, counted):
    first = extract_features(backbone, records, tmp_path)
    assert counted["images"] > 0 and counted["texts"] > 0
    counted.update(images=0, texts=0)
    second = extract_features(backbone, records, tmp_path)
    assert second.from_cache and counted == {"images": 0, "texts": 0}
    assert torch.equal(first.image_feats, second.image_feats) and torch.equal(first.text_feats, second.text_feats)
    assert second.cache_key == first.cache_key and second.fingerprint == backbone.fingerprint()


def test_changes_invalidate_the_cache(backbone, records, tmp_path, counted):
    base = extract_features(backbone, records, tmp_path)
    changed = list(records)
    changed[1] = Record(records[1].image_path, ("a completely different caption",), 0, "train", 1)
    counted.update(images=0, texts=0)
    fs = extract_features(backbone, changed, tmp_path)
    assert not fs.from_cache and counted["texts"] > 0 and fs.cache_key != base.cache_key
    _jpeg(records[0].image_path, 99)  # new content in the same file
    st = os.stat(records[0].image_path)
    os.utime(records[0].image_path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    fs = extract_features(backbone, records, tmp_path)
    assert not fs.from_cache and not torch.allclose(fs.image_feats[0], base.image_feats[0])
    assert torch.allclose(fs.image_feats[1:], base.image_feats[1:], atol=1e-6)
    # another backbone (different weights) never reads these features
    assert not extract_features(build_backbone("tiny:1"), records, tmp_path).from_cache


def test_stale_or_corrupt_cache_file_is_never_served(backbone, records, tmp_path):
    fs = extract_features(backbone, records, tmp_path)
    path = tmp_path / "features" / f"{fs.cache_key}.safetensors"
    path.write_bytes(b"not a safetensors file")
    again = extract_features(backbone, records, tmp_path)
    assert not again.from_cache and torch.allclose(again.image_feats, fs.image_feats)
    # a valid file for other records, planted under this key's name, is rejected by its stored key
    other = extract_features(backbone, records[:4], tmp_path)
    os.replace(tmp_path / "features" / f"{other.cache_key}.safetensors", path)
    assert not extract_features(backbone, records, tmp_path).from_cache
    assert extract_features(backbone, records, tmp_path).from_cache


def test_atomic_writes_leave_no_temp_files(backbone, records, tmp_path):
    extract_features(backbone, records, tmp_path)
    names = sorted(p.name for p in (tmp_path / "features").iterdir())
    assert len(names) == 2 and names[0].endswith(".json") and names[1].endswith(".safetensors")
    target = tmp_path / "features" / "x.bin"

    def fail(tmp):
        Path(tmp).write_bytes(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError):
        _atomic_write(target, fail)
    assert not target.exists() and len(list((tmp_path / "features").iterdir())) == 2


def test_without_labels_and_select(backbone, records, tmp_path):
    fs = extract_features(backbone, records, tmp_path)
    blind = fs.without_labels()
    assert (blind.image_pids == -1).all() and (blind.text_pids == -1).all()
    assert fs.image_pids.tolist() == [0, 0, 1, 1, -1]  # the original keeps its labels
    assert torch.equal(blind.image_feats, fs.image_feats)
    sub = fs.select_images([4, 1])
    assert sub.image_paths == [fs.image_paths[4], fs.image_paths[1]] and sub.text_to_image.tolist() == [0, 0, 1, 1]
    assert torch.equal(sub.text_feats, fs.text_feats[[7, 8, 2, 3]]) and sub.captions[2] == fs.captions[2]


def test_missing_or_corrupt_image_names_file_and_record(backbone, records, tmp_path):
    records[2].image_path.unlink()
    with pytest.raises(DataError, match=r"2\.jpg, record 2: image file not found"):
        extract_features(backbone, records, tmp_path)
    records[2].image_path.write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"2\.jpg, record 2: cannot decode"):
        extract_features(backbone, records, tmp_path, use_cache=False)
    assert not (tmp_path / "features").exists()
