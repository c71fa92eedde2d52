"""One entry point for every dataset: a name -> loader registry plus discovery.

>>> sorted(LOADERS)
['cuhk-pedes', 'embedded', 'icfg-pedes', 'rstpreid']

`load_dataset(name, root)` reads a dataset whose format you know;
`detect_format(root)` tells the format from the annotation file present;
`resolve_domain(data_dir, domain)` loads ``data_dir/domain`` with the detected
format. The last is how ``--data DIR --source DOMAIN`` works, for generated
domains (``DIR/<domain>/reid_raw.json``) and for real datasets placed beside
them (``DIR/CUHK-PEDES``, ``DIR/ICFG-PEDES``, ``DIR/RSTPReid``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from common.data.formats import cuhk_pedes, embedded, icfg_pedes, rstpreid
from common.data.formats.validate import FormatSpec, Progress
from common.data.records import DataError, Dataset

Loader = Callable[..., Dataset]

#: Format name -> loader ``(root, *, skip_bad, check_images, progress, name) -> Dataset``.
LOADERS: dict[str, Loader] = {
    "cuhk-pedes": cuhk_pedes.load,
    "icfg-pedes": icfg_pedes.load,
    "rstpreid": rstpreid.load,
    "embedded": embedded.load,
}

#: Formats `detect_format` recognises by their annotation file, in the order tried.
_DETECTABLE: tuple[FormatSpec, ...] = (cuhk_pedes.SPEC, icfg_pedes.SPEC, rstpreid.SPEC)

#: A file the embedded-benchmark generator may write beside ``reid_raw.json``;
#: where present, `detect_format` says ``"embedded"`` instead of ``"cuhk-pedes"``
#: (both read the same way; only ``Dataset.format`` differs).
EMBEDDED_MARKERS: tuple[str, ...] = ("domain.json",)


def _annotation_files() -> list[str]:
    return [f for spec in _DETECTABLE for f in spec.annotation_files]


def load_dataset(
    name: str,
    root: Path | str,
    *,
    skip_bad: bool = False,
    check_images: bool = True,
    progress: Progress | None = None,
) -> Dataset:
    """Load the dataset at ``root`` with the loader registered as ``name``.

    Raises DataError(kind="unknown_format") for an unregistered name, and the
    loaders' DataErrors for bad data (see `common.data.formats.validate`).
    """
    if name not in LOADERS:
        raise DataError(root, f"unknown dataset format {name!r} (known: {', '.join(sorted(LOADERS))})", kind="unknown_format")
    return LOADERS[name](root, skip_bad=skip_bad, check_images=check_images, progress=progress)


def detect_format(root: Path | str) -> str:
    """Return the registry name of the format whose annotation file is in ``root``.

    ``reid_raw.json`` means ``"cuhk-pedes"``, or ``"embedded"`` when an
    EMBEDDED_MARKERS file sits beside it. Raises DataError(kind="missing_file")
    naming the folder and every file looked for if none is present, and
    DataError(kind="ambiguous_format") if files of two formats are.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(root, "dataset folder does not exist", kind="missing_file")
    found = [(spec, f) for spec in _DETECTABLE for f in spec.annotation_files if (root / f).is_file()]
    names = sorted({spec.name for spec, _ in found})
    if not found:
        raise DataError(root, f"no annotation file found: looked for {', '.join(_annotation_files())}", kind="missing_file")
    if len(names) > 1:
        files = ", ".join(f for _, f in found)
        raise DataError(root, f"annotation files of several formats ({files}); keep one per folder", kind="ambiguous_format")
    if names[0] == cuhk_pedes.SPEC.name and any((root / m).is_file() for m in EMBEDDED_MARKERS):
        return "embedded"
    return names[0]


def available_domains(data_dir: Path | str) -> list[str]:
    """Names of the subfolders of ``data_dir`` that hold an annotation file, sorted."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        return []
    files = _annotation_files()
    return sorted(d.name for d in data_dir.iterdir() if d.is_dir() and any((d / f).is_file() for f in files))


def resolve_domain(
    data_dir: Path | str,
    domain: str,
    *,
    skip_bad: bool = False,
    check_images: bool = True,
    progress: Progress | None = None,
) -> Dataset:
    """Load ``data_dir/domain`` with its detected format; ``Dataset.name`` is the folder name.

    An exact folder name wins; otherwise a unique case-insensitive match is used
    (``cuhk-pedes`` finds ``CUHK-PEDES``). Raises DataError(kind="missing_file")
    if ``data_dir`` does not exist, DataError(kind="unknown_domain") listing the
    available domains if no folder matches, and the loader's errors otherwise.
    """
    data_dir = Path(data_dir).expanduser()
    if not data_dir.is_dir():
        raise DataError(data_dir, "data folder does not exist", kind="missing_file")
    folder = data_dir / domain
    if not folder.is_dir():
        matches = [d for d in data_dir.iterdir() if d.is_dir() and d.name.lower() == domain.lower()]
        if len(matches) != 1:
            avail = available_domains(data_dir)
            listing = ", ".join(avail) if avail else f"none (no subfolder holds {' / '.join(_annotation_files())})"
            raise DataError(data_dir, f"no domain {domain!r} here; available domains: {listing}", kind="unknown_domain")
        folder = matches[0]
    fmt = detect_format(folder)
    return LOADERS[fmt](folder, skip_bad=skip_bad, check_images=check_images, progress=progress, name=folder.name)
