"""The embedded (generated) benchmark: one dataset per domain, CUHK-PEDES format.

The generator writes each domain as::

    DIR/<domain>/reid_raw.json     exactly the CUHK-PEDES format
    DIR/<domain>/imgs/...          (see `common.data.formats.cuhk_pedes`)

so this loader is the CUHK-PEDES reader with ``Dataset.format = "embedded"`` and
``Dataset.name`` = the domain folder's name.
"""

from __future__ import annotations

from pathlib import Path

from common.data.formats.cuhk_pedes import SPEC as CUHK_SPEC
from common.data.formats.validate import Progress, load_format
from common.data.records import Dataset

SPEC = CUHK_SPEC


def load(
    root: Path | str,
    *,
    skip_bad: bool = False,
    check_images: bool = True,
    progress: Progress | None = None,
    name: str | None = None,
) -> Dataset:
    """Load one generated domain from ``root`` (name defaults to the folder name)."""
    root = Path(root).expanduser().resolve()
    return load_format(
        SPEC,
        root,
        skip_bad=skip_bad,
        check_images=check_images,
        progress=progress,
        name=name or root.name,
        format_name="embedded",
    )
