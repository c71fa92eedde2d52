"""The embedded (generated) benchmark: one dataset per domain, CUHK-PEDES format.

The generator writes each domain as::

    DIR/<domain>/reid_raw.json     exactly the CUHK-PEDES format
    DIR/<domain>/imgs/...          (see `common.data.formats.cuhk_pedes`)

so this loader is the CUHK-PEDES reader with ``Dataset.format = "embedded"`` and
``Dataset.name`` = the domain folder's name.
"""

from __future__ import annotations

from common.data.formats.cuhk_pedes import SPEC as CUHK_SPEC
from common.data.formats.validate import loader

SPEC = CUHK_SPEC


load = loader(SPEC, format_name="embedded", name_from_folder=True)
