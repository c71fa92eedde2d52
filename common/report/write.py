"""Write ``audit.json`` and ``audit.html`` for a run folder (what `fedgckd audit` and `fedgckd simulate` call)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from common.atomic import atomic_write_bytes
from common.report.build import build_audit
from common.report.html import render_html
from common.report.recompute import MAX_PRV

AUDIT_JSON = "audit.json"
AUDIT_HTML = "audit.html"


def write_audit(run_dir: str | Path, out_dir: str | Path | None = None, empirical: dict | None = None,
                max_prv: int = MAX_PRV, progress: Callable[[int, int, dict | None], None] | None = None,
                ) -> tuple[dict, Path, Path]:
    """(audit, json path, html path). ``out_dir`` defaults to the run folder; ``empirical`` defaults to
    RUN_DIR/empirical_audit.json when present; ``max_prv`` caps the PRV evaluations (see ``recompute``);
    ``progress`` is told of each ledger account recomputed (`build_audit`)."""
    audit = build_audit(run_dir, empirical, max_prv, progress=progress)
    out = Path(out_dir) if out_dir is not None else Path(run_dir)
    text = json.dumps(audit, indent=1, sort_keys=True, allow_nan=False)  # strict JSON: no NaN/Infinity tokens
    json_path = atomic_write_bytes(out / AUDIT_JSON, (text + "\n").encode())
    html_path = atomic_write_bytes(out / AUDIT_HTML, render_html(audit).encode())
    return audit, json_path, html_path
