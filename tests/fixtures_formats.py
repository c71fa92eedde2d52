"""Tiny on-disk datasets in each real annotation format, for the loader tests.

`write_format(fmt, root)` writes a handful of 8x16 JPEG images under
``root/imgs/`` and the format's annotation file, and returns the raw record list
it wrote so a test can corrupt one record and call `write_annotation` again.
`EXPECTED[fmt]` holds the hand-counted identities/images/captions per split.
"""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

FORMATS = ("cuhk-pedes", "icfg-pedes", "rstpreid")

ANNOTATION_FILE = {"cuhk-pedes": "reid_raw.json", "icfg-pedes": "ICFG-PEDES.json", "rstpreid": "data_captions.json"}
PATH_KEY = {"cuhk-pedes": "file_path", "icfg-pedes": "file_path", "rstpreid": "img_path"}

# (split, image path relative to imgs/, id, captions)
_RECORDS = {
    # CUHK-PEDES: 1-based ids, ~2 captions each, train/val/test.
    "cuhk-pedes": [
        ("train", "train_query/p1_s1.jpg", 1, ["  A man in a red coat.  ", "He carries a bag."]),
        ("train", "train_query/p1_s2.jpg", 1, ["A man in red.", "Red coat, black trousers."]),
        ("train", "cam_a/p2_s3.jpg", 2, ["A woman with long hair.", "She wears a skirt."]),
        ("val", "cam_b/p3_s4.jpg", 3, ["A child in blue.", "Blue shirt and shorts."]),
        ("test", "test_query/p4_s5.jpg", 4, ["An old man.", "Grey jacket."]),
        ("test", "test_query/p4_s6.jpg", 4, ["An old man walking."]),
        ("test", "cam_a/p5_s7.jpg", 5, ["A cyclist.", "Yellow helmet."]),
    ],
    # ICFG-PEDES: one caption each, train/test only, MSMT17-style folders.
    "icfg-pedes": [
        ("train", "train/0000/0000_000_01_0303morning_0001_0.jpg", 0, ["The man wears a white shirt."]),
        ("train", "train/0000/0000_001_01_0303morning_0002_0.jpg", 0, ["A man in a white shirt."]),
        ("train", "train/0001/0001_000_05_0303noon_0003_0.jpg", 1, ["The woman has a black backpack."]),
        ("train", "train/0002/0002_000_07_0303noon_0004_0.jpg", 2, ["A man with glasses."]),
        ("test", "test/0003/0003_000_02_0303afternoon_0005_0.jpg", 3, ["The woman wears green trousers."]),
        ("test", "test/0004/0004_000_03_0303afternoon_0006_0.jpg", 4, ["A boy in a cap."]),
    ],
    # RSTPReid: img_path, 2 captions each, train/val/test.
    "rstpreid": [
        ("train", "0000_c14_0001.jpg", 0, ["A man in a suit.", "Dark suit, white shirt."]),
        ("train", "0000_c3_0002.jpg", 0, ["A man wearing a suit.", "He holds a phone."]),
        ("val", "0001_c5_0003.jpg", 1, ["A woman in a dress.", "Floral dress."]),
        ("test", "0002_c7_0004.jpg", 2, ["A student with a backpack.", "Blue backpack."]),
        ("test", "0003_c1_0005.jpg", 3, ["A man on a scooter.", "\tBlack helmet.\n"]),
    ],
}

EXPECTED = {
    "cuhk-pedes": {
        "train": {"identities": 2, "images": 3, "captions": 6},
        "val": {"identities": 1, "images": 1, "captions": 2},
        "test": {"identities": 2, "images": 3, "captions": 5},
    },
    "icfg-pedes": {
        "train": {"identities": 3, "images": 4, "captions": 4},
        "test": {"identities": 2, "images": 2, "captions": 2},
    },
    "rstpreid": {
        "train": {"identities": 1, "images": 2, "captions": 4},
        "val": {"identities": 1, "images": 1, "captions": 2},
        "test": {"identities": 2, "images": 2, "captions": 4},
    },
}


def n_records(fmt: str) -> int:
    return len(_RECORDS[fmt])


def write_image(path: Path, seed: int = 0) -> None:
    """Write a tiny valid image, encoded as its extension says (JPEG here)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 16), ((37 * seed) % 256, (91 * seed) % 256, 128)).save(path)


def write_annotation(root: Path, fmt: str, raw: object, filename: str | None = None) -> Path:
    """Write ``raw`` as the format's annotation file (or ``filename``) under ``root``."""
    file = root / (filename or ANNOTATION_FILE[fmt])
    file.write_text(json.dumps(raw, indent=1), encoding="utf-8")
    return file


def write_format(fmt: str, root: Path, filename: str | None = None) -> list[dict]:
    """Write the fixture dataset of ``fmt`` into ``root``; return its raw records."""
    root.mkdir(parents=True, exist_ok=True)
    raw = []
    for i, (split, rel, pid, caps) in enumerate(_RECORDS[fmt]):
        write_image(root / "imgs" / rel, seed=i + 1)
        rec = {"split": split, "captions": list(caps), PATH_KEY[fmt]: rel, "id": pid}
        if fmt != "rstpreid":
            rec["processed_tokens"] = [c.split() for c in caps]  # present in the real files, ignored
        raw.append(rec)
    write_annotation(root, fmt, raw, filename)
    return raw


def image_of(root: Path, fmt: str, raw: list[dict], index: int) -> Path:
    """The image file of record ``index``."""
    return root / "imgs" / raw[index][PATH_KEY[fmt]]
