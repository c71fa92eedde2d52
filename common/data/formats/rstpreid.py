"""RSTPReid (Zhu et al., "DSSL: Deep Surroundings-person Separation Learning for
Text-based Person Retrieval", ACM MM 2021), built on MSMT17 images.

20,505 images of 4,101 identities, 5 images per identity, 2 captions per image
(train 3,701 ids / 18,505 images; val 200 / 1,000; test 200 / 1,000).

Layout::

    ROOT/data_captions.json
    ROOT/imgs/<img_path>           e.g. imgs/3903_c14_0007.jpg

The JSON is a list; each record is one image::

    {"split": "train" | "val" | "test",
     "captions": ["A man with ...", "..."],
     "img_path": "3903_c14_0007.jpg",  # relative to imgs/ -- note: img_path,
                                       # not file_path as in CUHK/ICFG-PEDES
     "id": 3903}                       # int, used as it is
"""

from __future__ import annotations

from common.data.formats.validate import FormatSpec, loader

SPEC = FormatSpec(
    name="rstpreid",
    annotation_files=("data_captions.json",),
    path_key="img_path",
    splits=("train", "val", "test"),
)


load = loader(SPEC)
