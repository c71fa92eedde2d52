"""A run folder: what makes a folder one, refusing to run into it again, and when a finished run has failed.

`fedgckd simulate --out` and `fedgckd demo --out` on a folder that already holds
a run would overwrite its model, metrics and ledger without a word, and the
sites' ledgers (which outlive runs) already hold what that run spent, so every
site of the new run would refuse and the command would still exit 0. So a new
run into an existing run folder is refused unless the user says what they want:
``--resume`` (continue it), ``--force`` (overwrite it), or a new ``--state-dir``
(fresh site ledgers). A run in which no site trained, or whose privacy audit
failed its checks, exits with status 1.
"""

from __future__ import annotations

from pathlib import Path


RUN_FILES = ("ledger.json", "metrics.json", "checkpoint.safetensors", "model")  # what makes a folder a run


def existing_run_refusal(out: Path, state_dir: Path | None, force: bool) -> str | None:
    """Why a new run may not go into ``out`` (None: it may).

    A run folder's model, metrics and ledger would be overwritten without a word, and its sites' ledgers
    (in its state folder) already hold its spending, so every site of the new run would refuse. Allowed:
    ``--force``, or an explicit ``--state-dir`` other than the earlier run's (fresh site ledgers)."""
    found = [name for name in RUN_FILES if (out / name).exists()]
    if not found or force:
        return None
    from common.atomic import read_json

    try:
        earlier = (read_json(out / "metrics.json").get("config", {}) if (out / "metrics.json").exists() else {})
    except ValueError:
        earlier = {}
    earlier_state = Path(earlier.get("state-dir") or out / "sites")
    if state_dir is not None and Path(state_dir).resolve() != earlier_state.resolve():
        return None
    return (f"{out} already holds a run ({', '.join(found)}): a new run would overwrite it, and the sites' ledgers "
            f"in {earlier_state} already hold what it spent (a new run continues them; a site whose budget is spent "
            f"refuses). Continue it with --resume {out}, choose a new --out, give a new --state-dir (fresh site "
            "ledgers), or pass --force to overwrite it.")


def run_failure(result: dict, audit: dict | None) -> str | None:
    """Why a finished run counts as failed (exit status 1): no site trained in any round, or the privacy audit
    found an inconsistency (or could not be written)."""
    if not any(r.get("trained") for r in result.get("rounds", [])[1:]):
        refused = sorted({site for r in result.get("rounds", []) for site in r.get("refused", {})})
        why = f"; refused: {', '.join(refused)} (see the reasons above and in audit.html)" if refused else ""
        return f"no site trained in any round{why}"
    if audit is None:
        return "the privacy audit was not written"
    if not audit["checks"]["ok"]:
        kinds = sorted({f["kind"] for f in audit["checks"]["flags"] if f["severity"] == "error"})
        return f"the privacy audit failed its checks ({', '.join(kinds)}); see audit.html"
    return None
