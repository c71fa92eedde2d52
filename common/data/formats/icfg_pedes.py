"""ICFG-PEDES (Ding et al., "Semantically Self-Aligned Network for Text-to-Image
Part-aware Person Re-identification", 2021), built on MSMT17 images.

54,522 images of 4,102 identities, one caption per image
(train 3,102 ids / 34,674 images; test 1,000 / 19,848). No val split.

Layout::

    ROOT/ICFG-PEDES.json           (ICFG_PEDES.json, as the IRRA/SSAN READMEs
                                    spell it, is accepted too; hyphen preferred)
    ROOT/imgs/<file_path>          e.g. imgs/test/0000/0000_000_01_0303morning_0008_0.jpg

The JSON is a list; each record is one image::

    {"split": "train" | "test",
     "captions": ["The man is wearing ..."],
     "file_path": "test/0000/0000_000_01_0303morning_0008_0.jpg",  # relative to imgs/
     "id": 0,                       # int, used as it is (train ids run 0..N-1)
     "processed_tokens": [...]}     # ignored

The ``imgs/train`` and ``imgs/test`` folders follow MSMT17 storage and do not
define the split; the ``split`` key does.
"""

from __future__ import annotations

from common.data.formats.validate import FormatSpec, loader

SPEC = FormatSpec(
    name="icfg-pedes",
    annotation_files=("ICFG-PEDES.json", "ICFG_PEDES.json"),
    path_key="file_path",
    splits=("train", "test"),
)


load = loader(SPEC)
