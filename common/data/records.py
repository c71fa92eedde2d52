"""The in-memory form every dataset loader produces, and the errors it raises.

One `Record` is one image with its captions, as in the annotation files of
CUHK-PEDES, ICFG-PEDES and RSTPReid. A `Dataset` holds the records of every
split plus an account of every bad record that was skipped (only when the
caller asked for `skip_bad`); nothing is dropped without being counted.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

SPLITS = ("train", "val", "test")


class DataError(ValueError):
    """Bad input. Names the file and, where there is one, the record."""

    def __init__(self, file: Path | str, reason: str, record: int | None = None, kind: str = "invalid"):
        self.file = str(file)
        self.record = record
        self.reason = reason
        self.kind = kind
        where = f"{self.file}" + (f", record {record}" if record is not None else "")
        super().__init__(f"{where}: {reason}")


@dataclass(frozen=True)
class Record:
    """One annotated image.

    image_path: absolute path of the image file.
    captions:   its non-empty captions (CUHK-PEDES and RSTPReid have 2, ICFG-PEDES 1).
    pid:        identity label as written in the file, or None where labels
                must not be seen (the adaptation path strips them).
    split:      one of SPLITS.
    index:      position of the record in its annotation file (for errors).
    """

    image_path: Path
    captions: tuple[str, ...]
    pid: int | None
    split: str
    index: int


@dataclass(frozen=True)
class SkippedRecord:
    file: str
    record: int | None
    kind: str
    reason: str


@dataclass
class Dataset:
    """All splits of one dataset (one domain of the embedded benchmark)."""

    name: str  # e.g. "cuhk-pedes" or the embedded domain's folder name
    format: str  # registry key of the loader that read it
    root: Path
    annotation_file: Path
    splits: dict[str, list[Record]] = field(default_factory=dict)
    skipped: list[SkippedRecord] = field(default_factory=list)

    def split(self, name: str) -> list[Record]:
        if name not in self.splits:
            raise DataError(self.annotation_file, f"split {name!r} is not in this dataset (has: {sorted(self.splits)})", kind="unknown_split")
        return self.splits[name]

    def summary(self) -> dict:
        """Identities, images and captions per split, plus skipped counts by kind."""
        out: dict = {"dataset": self.name, "format": self.format, "annotation_file": str(self.annotation_file), "splits": {}}
        for name, recs in self.splits.items():
            out["splits"][name] = {
                "identities": len({r.pid for r in recs if r.pid is not None}),
                "images": len(recs),
                "captions": sum(len(r.captions) for r in recs),
            }
        out["skipped"] = dict(Counter(s.kind for s in self.skipped))
        out["skipped_total"] = len(self.skipped)
        return out
