"""CUHK-PEDES (Li et al., "Person Search with Natural Language Description", CVPR 2017).

40,206 images of 13,003 identities, two captions per image on average
(train 11,003 ids / 34,054 images; val 1,000 / 3,078; test 1,000 / 3,074).

Layout::

    ROOT/reid_raw.json
    ROOT/imgs/<file_path>          e.g. imgs/train_query/p11600_s14885.jpg

``reid_raw.json`` is a JSON list; each record is one image::

    {"split": "train" | "val" | "test",
     "captions": ["A woman wearing ...", "..."],   # non-empty strings
     "file_path": "train_query/p11600_s14885.jpg", # relative to imgs/
     "id": 1,                                      # int, 1-based
     "processed_tokens": [...]}                    # ignored

``Record.pid`` keeps ``id`` as written; IRRA trains on ``id - 1``.
"""

from __future__ import annotations

from common.data.formats.validate import FormatSpec, loader

SPEC = FormatSpec(
    name="cuhk-pedes",
    annotation_files=("reid_raw.json",),
    path_key="file_path",
    splits=("train", "val", "test"),
)


load = loader(SPEC)
