"""Annotation-format loaders and the dataset registry, on tiny fixtures in each real format."""

from __future__ import annotations

import pytest
from fixtures_formats import (
    ANNOTATION_FILE,
    EXPECTED,
    FORMATS,
    PATH_KEY,
    image_of,
    n_records,
    write_annotation,
    write_format,
)

from common.data.records import DataError
from common.data.registry import LOADERS, available_domains, detect_format, load_dataset, resolve_domain

BAD = 2  # index of the record each bad-input test corrupts


def total_images(ds) -> int:
    return sum(len(recs) for recs in ds.splits.values())


def assert_bad_record(root, fmt, kind, index, *fragments, bad_count=1):
    """The first load raises naming file, record and kind; skip_bad keeps every good record."""
    file = (root / ANNOTATION_FILE[fmt]).resolve()
    with pytest.raises(DataError) as ei:
        load_dataset(fmt, root)
    err = ei.value
    assert err.kind == kind
    assert err.record == index
    assert err.file == str(file)
    msg = str(err)
    assert str(file) in msg and f"record {index}" in msg
    for frag in fragments:
        assert frag in msg, (frag, msg)

    ds = load_dataset(fmt, root, skip_bad=True)
    assert total_images(ds) == n_records(fmt) - bad_count
    kept = sorted(r.index for recs in ds.splits.values() for r in recs)
    assert index not in kept and len(kept) == n_records(fmt) - bad_count
    summary = ds.summary()
    assert summary["skipped"] == {kind: bad_count}
    assert summary["skipped_total"] == bad_count
    assert ds.skipped[0].record == index and ds.skipped[0].file == str(file)
    return err


# --------------------------------------------------------------------------- good data


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_loads_with_hand_counted_splits(tmp_path, fmt):
    root = tmp_path / fmt
    raw = write_format(fmt, root)
    ds = load_dataset(fmt, root)
    summary = ds.summary()
    assert summary["splits"] == EXPECTED[fmt]
    assert summary["skipped"] == {} and summary["skipped_total"] == 0
    assert ds.format == fmt and ds.name == fmt
    assert ds.annotation_file == (root / ANNOTATION_FILE[fmt]).resolve()
    for recs in ds.splits.values():
        for r in recs:
            assert r.image_path.is_absolute() and r.image_path.is_file()
            assert r.image_path == image_of(root, fmt, raw, r.index).resolve()
            assert r.pid == raw[r.index]["id"]
            assert r.captions == tuple(c.strip() for c in raw[r.index]["captions"])
            assert all(c == c.strip() and c for c in r.captions)


def test_captions_are_stripped(tmp_path):
    write_format("cuhk-pedes", tmp_path)
    ds = load_dataset("cuhk-pedes", tmp_path)
    assert ds.split("train")[0].captions == ("A man in a red coat.", "He carries a bag.")


def test_icfg_has_no_val_split(tmp_path):
    write_format("icfg-pedes", tmp_path)
    ds = load_dataset("icfg-pedes", tmp_path)
    assert set(ds.splits) == {"train", "test"}
    with pytest.raises(DataError) as ei:
        ds.split("val")
    assert ei.value.kind == "unknown_split"


@pytest.mark.parametrize("filename", ["ICFG-PEDES.json", "ICFG_PEDES.json"])
def test_icfg_accepts_both_file_names(tmp_path, filename):
    write_format("icfg-pedes", tmp_path, filename=filename)
    ds = load_dataset("icfg-pedes", tmp_path)
    assert ds.annotation_file.name == filename
    assert ds.summary()["splits"] == EXPECTED["icfg-pedes"]
    assert detect_format(tmp_path) == "icfg-pedes"


def test_embedded_reads_cuhk_format_named_after_folder(tmp_path):
    root = tmp_path / "sketch"
    write_format("cuhk-pedes", root)
    ds = load_dataset("embedded", root)
    assert ds.name == "sketch" and ds.format == "embedded"
    assert ds.summary()["splits"] == EXPECTED["cuhk-pedes"]
    assert set(LOADERS) == {"cuhk-pedes", "icfg-pedes", "rstpreid", "embedded"}


def test_progress_reports_every_record(tmp_path):
    write_format("rstpreid", tmp_path)
    calls = []
    load_dataset("rstpreid", tmp_path, progress=lambda done, total: calls.append((done, total)))
    n = n_records("rstpreid")
    assert calls == [(i, n) for i in range(1, n + 1)]


def test_check_images_false_never_touches_images(tmp_path):
    raw = write_format("cuhk-pedes", tmp_path)
    image_of(tmp_path, "cuhk-pedes", raw, BAD).unlink()
    ds = load_dataset("cuhk-pedes", tmp_path, check_images=False)
    assert total_images(ds) == n_records("cuhk-pedes")


# --------------------------------------------------------------------------- discovery


@pytest.mark.parametrize("fmt", FORMATS)
def test_detect_format(tmp_path, fmt):
    write_format(fmt, tmp_path)
    assert detect_format(tmp_path) == fmt


def test_detect_format_embedded_marker(tmp_path):
    write_format("cuhk-pedes", tmp_path)
    (tmp_path / "domain.json").write_text("{}", encoding="utf-8")
    assert detect_format(tmp_path) == "embedded"


def test_detect_format_names_folder_and_files_looked_for(tmp_path):
    with pytest.raises(DataError) as ei:
        detect_format(tmp_path)
    msg = str(ei.value)
    assert ei.value.kind == "missing_file" and str(tmp_path) in msg
    for f in ("reid_raw.json", "ICFG-PEDES.json", "ICFG_PEDES.json", "data_captions.json"):
        assert f in msg


def test_detect_format_refuses_two_formats_in_one_folder(tmp_path):
    write_format("cuhk-pedes", tmp_path)
    write_annotation(tmp_path, "rstpreid", [])
    with pytest.raises(DataError) as ei:
        detect_format(tmp_path)
    assert ei.value.kind == "ambiguous_format"


def _data_dir(tmp_path):
    data = tmp_path / "data"
    write_format("cuhk-pedes", data / "CUHK-PEDES")
    write_format("icfg-pedes", data / "ICFG-PEDES", filename="ICFG_PEDES.json")
    write_format("rstpreid", data / "RSTPReid")
    write_format("cuhk-pedes", data / "sketch")
    (data / "sketch" / "domain.json").write_text("{}", encoding="utf-8")
    (data / "notes").mkdir()  # no annotation file: not a domain
    return data


def test_resolve_domain_loads_real_and_generated_domains(tmp_path):
    data = _data_dir(tmp_path)
    assert available_domains(data) == ["CUHK-PEDES", "ICFG-PEDES", "RSTPReid", "sketch"]
    for domain, fmt, expected in [
        ("CUHK-PEDES", "cuhk-pedes", EXPECTED["cuhk-pedes"]),
        ("ICFG-PEDES", "icfg-pedes", EXPECTED["icfg-pedes"]),
        ("RSTPReid", "rstpreid", EXPECTED["rstpreid"]),
        ("sketch", "embedded", EXPECTED["cuhk-pedes"]),
    ]:
        ds = resolve_domain(data, domain)
        assert (ds.name, ds.format) == (domain, fmt)
        assert ds.summary()["splits"] == expected
    assert resolve_domain(data, "rstpreid").name == "RSTPReid"  # case-insensitive fallback


def test_resolve_domain_unknown_lists_available(tmp_path):
    data = _data_dir(tmp_path)
    with pytest.raises(DataError) as ei:
        resolve_domain(data, "photo")
    msg = str(ei.value)
    assert ei.value.kind == "unknown_domain" and str(data) in msg and "'photo'" in msg
    assert ei.value.reason.endswith("available domains: CUHK-PEDES, ICFG-PEDES, RSTPReid, sketch")


def test_resolve_domain_folder_without_annotation(tmp_path):
    data = _data_dir(tmp_path)
    with pytest.raises(DataError) as ei:
        resolve_domain(data, "notes")
    assert ei.value.kind == "missing_file" and "reid_raw.json" in str(ei.value)


def test_resolve_domain_missing_data_dir(tmp_path):
    with pytest.raises(DataError) as ei:
        resolve_domain(tmp_path / "nowhere", "sketch")
    assert ei.value.kind == "missing_file" and "nowhere" in str(ei.value)


def test_load_dataset_unknown_format(tmp_path):
    with pytest.raises(DataError) as ei:
        load_dataset("market1501", tmp_path)
    assert ei.value.kind == "unknown_format" and "cuhk-pedes" in str(ei.value)


# --------------------------------------------------------------------------- file-level errors


@pytest.mark.parametrize("fmt", FORMATS)
def test_missing_annotation_file(tmp_path, fmt):
    (tmp_path / "imgs").mkdir()
    for skip_bad in (False, True):
        with pytest.raises(DataError) as ei:
            load_dataset(fmt, tmp_path, skip_bad=skip_bad)
        assert ei.value.kind == "missing_file"
        assert str(tmp_path) in str(ei.value) and ANNOTATION_FILE[fmt] in str(ei.value)


@pytest.mark.parametrize("fmt", FORMATS)
def test_corrupt_json(tmp_path, fmt):
    write_format(fmt, tmp_path)
    file = tmp_path / ANNOTATION_FILE[fmt]
    file.write_text(file.read_text(encoding="utf-8")[:-40], encoding="utf-8")  # truncated
    for skip_bad in (False, True):  # file-level: raises even with skip_bad
        with pytest.raises(DataError) as ei:
            load_dataset(fmt, tmp_path, skip_bad=skip_bad)
        err = ei.value
        assert err.kind == "corrupt_json" and err.record is None
        assert str(file.resolve()) in str(err) and "line" in str(err) and "column" in str(err)


@pytest.mark.parametrize("fmt", FORMATS)
def test_top_level_not_a_list(tmp_path, fmt):
    raw = write_format(fmt, tmp_path)
    write_annotation(tmp_path, fmt, {"records": raw})
    with pytest.raises(DataError) as ei:
        load_dataset(fmt, tmp_path, skip_bad=True)
    assert ei.value.kind == "corrupt_json" and "list" in str(ei.value)


# --------------------------------------------------------------------------- record-level errors


@pytest.mark.parametrize("fmt", FORMATS)
def test_missing_image(tmp_path, fmt):
    raw = write_format(fmt, tmp_path)
    image_of(tmp_path, fmt, raw, BAD).unlink()
    assert_bad_record(tmp_path, fmt, "missing_image", BAD, raw[BAD][PATH_KEY[fmt]])


@pytest.mark.parametrize("fmt", FORMATS)
def test_corrupt_image(tmp_path, fmt):
    raw = write_format(fmt, tmp_path)
    image_of(tmp_path, fmt, raw, BAD).write_bytes(b"\xff\xd8 not really a jpeg")
    assert_bad_record(tmp_path, fmt, "corrupt_image", BAD, raw[BAD][PATH_KEY[fmt]])


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("key", ["path", "captions", "id", "split"])
def test_missing_key(tmp_path, fmt, key):
    raw = write_format(fmt, tmp_path)
    key = PATH_KEY[fmt] if key == "path" else key
    del raw[BAD][key]
    write_annotation(tmp_path, fmt, raw)
    assert_bad_record(tmp_path, fmt, "missing_key", BAD, repr(key))


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(
    ("bad", "fragment"),
    [("not an object", "JSON object"), ({"id": "7"}, "'id'"), ({"captions": "one string"}, "'captions'")],
)
def test_invalid_record(tmp_path, fmt, bad, fragment):
    raw = write_format(fmt, tmp_path)
    raw[BAD] = bad if isinstance(bad, str) else {**raw[BAD], **bad}
    write_annotation(tmp_path, fmt, raw)
    assert_bad_record(tmp_path, fmt, "invalid_record", BAD, fragment)


@pytest.mark.parametrize("fmt", FORMATS)
def test_unknown_split(tmp_path, fmt):
    raw = write_format(fmt, tmp_path)
    raw[BAD]["split"] = "dev"
    write_annotation(tmp_path, fmt, raw)
    err = assert_bad_record(tmp_path, fmt, "unknown_split", BAD, "'dev'", "train", "test")
    assert ("val" in err.reason) == (fmt != "icfg-pedes")


def test_icfg_rejects_val_split(tmp_path):
    raw = write_format("icfg-pedes", tmp_path)
    raw[BAD]["split"] = "val"
    write_annotation(tmp_path, "icfg-pedes", raw)
    assert_bad_record(tmp_path, "icfg-pedes", "unknown_split", BAD, "'val'", "allows: train, test")


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(("captions", "fragment"), [([], "empty caption list"), (["fine", "   "], "caption 1 is empty")])
def test_empty_caption(tmp_path, fmt, captions, fragment):
    raw = write_format(fmt, tmp_path)
    raw[BAD]["captions"] = captions
    write_annotation(tmp_path, fmt, raw)
    assert_bad_record(tmp_path, fmt, "empty_caption", BAD, fragment)


@pytest.mark.parametrize("fmt", FORMATS)
def test_duplicate_path(tmp_path, fmt):
    raw = write_format(fmt, tmp_path)
    raw[BAD][PATH_KEY[fmt]] = raw[0][PATH_KEY[fmt]]
    write_annotation(tmp_path, fmt, raw)
    assert_bad_record(tmp_path, fmt, "duplicate_path", BAD, raw[0][PATH_KEY[fmt]], "record 0")


def test_first_bad_record_raises_and_skip_bad_counts_all(tmp_path):
    raw = write_format("cuhk-pedes", tmp_path)
    raw[1]["split"] = "dev"
    raw[4]["captions"] = []
    image_of(tmp_path, "cuhk-pedes", raw, 5).unlink()
    write_annotation(tmp_path, "cuhk-pedes", raw)
    with pytest.raises(DataError) as ei:
        load_dataset("cuhk-pedes", tmp_path)
    assert (ei.value.record, ei.value.kind) == (1, "unknown_split")
    ds = load_dataset("cuhk-pedes", tmp_path, skip_bad=True)
    assert [(s.record, s.kind) for s in ds.skipped] == [(1, "unknown_split"), (4, "empty_caption"), (5, "missing_image")]
    assert ds.summary()["skipped"] == {"unknown_split": 1, "empty_caption": 1, "missing_image": 1}
    assert total_images(ds) == n_records("cuhk-pedes") - 3
