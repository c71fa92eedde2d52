"""Parsing and validation shared by every annotation format.

CUHK-PEDES, ICFG-PEDES and RSTPReid (and the embedded benchmark, which copies
CUHK-PEDES) all store one JSON list of records, each with a split, a list of
captions, an image path relative to ``imgs/`` and an identity. They differ only
in the annotation file's name, the key of the image path and the splits they
allow; a `FormatSpec` declares those differences and `load_format` does the rest.

Every problem becomes a `DataError` naming the annotation file, the record
index (where there is one) and a ``kind``:

=================  ==========================================================
``missing_file``   the dataset folder or its annotation file does not exist
``unreadable_file`` the annotation file exists but cannot be read
``corrupt_json``   not valid JSON (with line/column), or top level not a list
``invalid_record`` a record is not an object, or a value has the wrong type
``missing_key``    a required key is absent (the key is named)
``unknown_split``  a split outside the format's allowed ones (both are named)
``empty_caption``  an empty caption list, or a caption that is only whitespace
``duplicate_path`` a second record for one image (the earlier record is named)
``missing_image``  the image file does not exist
``corrupt_image``  PIL cannot identify or verify the image
=================  ==========================================================

File-level kinds always raise. Record-level kinds raise on the first bad record,
or, with ``skip_bad=True``, are recorded in `Dataset.skipped` and counted by
`Dataset.summary()`; nothing is dropped silently.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from common.data.records import DataError, Dataset, Record, SkippedRecord

Progress = Callable[[int, int], None]

#: Record-level error kinds; these may be skipped with ``skip_bad=True``.
RECORD_KINDS = (
    "invalid_record",
    "missing_key",
    "unknown_split",
    "empty_caption",
    "duplicate_path",
    "missing_image",
    "corrupt_image",
)


@dataclass(frozen=True)
class FormatSpec:
    """What distinguishes one annotation format from another.

    name:             registry key, e.g. ``"cuhk-pedes"``.
    annotation_files: accepted file names inside the dataset root, in order of
                      preference (the first one that exists is read).
    path_key:         record key holding the image path relative to ``imgs/``.
    splits:           splits a record may name.
    id_key:           record key holding the identity (an int).
    images_dir:       folder under the root that image paths are relative to.
    """

    name: str
    annotation_files: tuple[str, ...]
    path_key: str
    splits: tuple[str, ...]
    id_key: str = "id"
    images_dir: str = "imgs"


def find_annotation_file(spec: FormatSpec, root: Path | str) -> Path:
    """Return the first of ``spec.annotation_files`` present in ``root``.

    Raises DataError(kind="missing_file") naming the folder and the files looked for.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(root, f"dataset folder does not exist (expected a {spec.name} folder)", kind="missing_file")
    for fname in spec.annotation_files:
        if (root / fname).is_file():
            return root / fname
    looked = " or ".join(spec.annotation_files)
    raise DataError(root, f"no {spec.name} annotation file: looked for {looked}", kind="missing_file")


def read_json_list(file: Path) -> list:
    """Read a JSON file whose top level must be a list; file-level errors raise."""
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(file, "annotation file does not exist", kind="missing_file") from None
    except UnicodeDecodeError as e:
        raise DataError(file, f"not UTF-8 text (byte {e.start}): {e.reason}", kind="corrupt_json") from None
    except OSError as e:
        raise DataError(file, f"cannot read annotation file: {e.strerror or e}", kind="unreadable_file") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(
            file, f"corrupt JSON at line {e.lineno}, column {e.colno} (char {e.pos}): {e.msg}", kind="corrupt_json"
        ) from None
    if not isinstance(data, list):
        raise DataError(file, f"top level must be a JSON list of records, got {type(data).__name__}", kind="corrupt_json")
    return data


def parse_record(spec: FormatSpec, raw: object, index: int, file: Path, images_root: Path) -> Record:
    """Validate one raw record's structure and build a `Record` (image not yet checked)."""

    def bad(reason: str, kind: str = "invalid_record") -> DataError:
        return DataError(file, reason, record=index, kind=kind)

    if not isinstance(raw, dict):
        raise bad(f"record must be a JSON object, got {type(raw).__name__}")
    for key in ("split", "captions", spec.path_key, spec.id_key):
        if key not in raw:
            raise bad(f"missing key {key!r} (a {spec.name} record needs split, captions, {spec.path_key}, {spec.id_key})", "missing_key")

    split = raw["split"]
    if not isinstance(split, str):
        raise bad(f"'split' must be a string, got {type(split).__name__}")
    if split not in spec.splits:
        raise bad(f"unknown split {split!r} ({spec.name} allows: {', '.join(spec.splits)})", "unknown_split")

    captions = raw["captions"]
    if not isinstance(captions, list):
        raise bad(f"'captions' must be a list of strings, got {type(captions).__name__}")
    if not captions:
        raise bad("empty caption list", "empty_caption")
    stripped = []
    for j, cap in enumerate(captions):
        if not isinstance(cap, str):
            raise bad(f"caption {j} must be a string, got {type(cap).__name__}")
        if not cap.strip():
            raise bad(f"caption {j} is empty", "empty_caption")
        stripped.append(cap.strip())

    rel = raw[spec.path_key]
    if not isinstance(rel, str) or not rel.strip():
        raise bad(f"{spec.path_key!r} must be a non-empty string, got {rel!r}")
    if os.path.isabs(rel):
        raise bad(f"{spec.path_key!r} must be relative to {spec.images_dir}/, got absolute path {rel!r}")

    pid = raw[spec.id_key]
    if isinstance(pid, bool) or not isinstance(pid, int):
        raise bad(f"{spec.id_key!r} must be an integer, got {pid!r}")
    if pid < 0:
        raise bad(f"{spec.id_key!r} must not be negative, got {pid}")

    image_path = Path(os.path.normpath(images_root / rel))
    return Record(image_path=image_path, captions=tuple(stripped), pid=pid, split=split, index=index)


def check_image(path: Path, file: Path, index: int) -> None:
    """Raise DataError if the image is missing or PIL cannot read its header/verify it."""
    if not path.is_file():
        raise DataError(file, f"image not found: {path}", record=index, kind="missing_image")
    try:
        with Image.open(path) as im:
            im.verify()
    except Exception as e:  # PIL raises many types (OSError, SyntaxError, struct.error, ...)
        raise DataError(file, f"unreadable image {path}: {e}", record=index, kind="corrupt_image") from None


def load_format(
    spec: FormatSpec,
    root: Path | str,
    *,
    skip_bad: bool = False,
    check_images: bool = True,
    progress: Progress | None = None,
    name: str | None = None,
    format_name: str | None = None,
) -> Dataset:
    """Read and validate the dataset at ``root`` in the format ``spec`` describes.

    Records are checked in file order. Without ``skip_bad`` the first bad record
    raises its DataError; with it, bad records go to ``Dataset.skipped``.
    File-level errors (missing or corrupt annotation file) always raise.

    check_images: if true, each image must exist and pass ``PIL.Image.verify()``;
                  if false, image paths are only resolved, never touched.
    progress:     called as ``progress(done, total)`` after each record while
                  checking images (total = number of records in the file).
    name:         ``Dataset.name`` (default ``spec.name``).
    format_name:  ``Dataset.format`` (default ``spec.name``).
    """
    root = Path(root).expanduser().resolve()
    file = find_annotation_file(spec, root)
    raw_records = read_json_list(file)
    images_root = root / spec.images_dir
    ds = Dataset(
        name=name or spec.name,
        format=format_name or spec.name,
        root=root,
        annotation_file=file,
        splits={s: [] for s in spec.splits},
    )
    seen: dict[Path, int] = {}  # image path -> index of the kept record using it
    total = len(raw_records)
    for index, raw in enumerate(raw_records):
        try:
            rec = parse_record(spec, raw, index, file, images_root)
            if rec.image_path in seen:
                raise DataError(
                    file,
                    f"duplicate image path {raw[spec.path_key]!r} (already used by record {seen[rec.image_path]})",
                    record=index,
                    kind="duplicate_path",
                )
            if check_images:
                check_image(rec.image_path, file, index)
        except DataError as e:
            if not skip_bad:
                raise
            ds.skipped.append(SkippedRecord(file=e.file, record=e.record, kind=e.kind, reason=e.reason))
        else:
            seen[rec.image_path] = index
            ds.splits[rec.split].append(rec)
        if check_images and progress is not None:
            progress(index + 1, total)
    return ds


def loader(spec: FormatSpec, format_name: str | None = None, name_from_folder: bool = False) -> Callable[..., Dataset]:
    """The `load(root, *, skip_bad, check_images, progress, name)` function of one format."""

    def load(root: Path | str, *, skip_bad: bool = False, check_images: bool = True, progress: Progress | None = None, name: str | None = None) -> Dataset:
        root = Path(root).expanduser().resolve()
        if name is None and name_from_folder:
            name = root.name
        return load_format(spec, root, skip_bad=skip_bad, check_images=check_images, progress=progress, name=name, format_name=format_name)

    load.__doc__ = f"Load a {format_name or spec.name} dataset from ``root`` (see `load_format`)."
    return load
