"""The rows of the federated benchmark (benchmarks/federated.py): what each one runs, and how a run is read back.

Central rows run on one machine in the benchmark's own process, with the calls `benchmarks/ablation.py`'s
`run_pair` makes for its rows (so they equal grouped_dp.json's rows of the same profile, pair and seed):

  direct                    the source teacher, no adaptation
  central_full              one-machine `gckd_full` on every target record (no privacy)
  central_grouped_dp_eps8   one site holding every record: grouped mode as a record-level DP release, epsilon 8

Federated rows run `fedgckd simulate` (``FED_ROWS`` gives each row's mode and privacy) and read the run folder it
leaves: the final model (evaluated here, once), metrics.json (the server's bytes and last-round val R1) and
ledger.json (every site's epsilon, its unit, delta and accountant).
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

from common.atomic import read_json

DELTA = 1e-5  # the delta for every record-level row; below 1/records of every site
CENTRAL_ROWS = ("direct", "central_full", "central_grouped_dp_eps8")
# row -> (mode, privacy, epsilon or None)
FED_ROWS: dict[str, tuple[str, str, float | None]] = {
    "fed_full_none": ("full", "none", None),
    "fed_grouped_none": ("grouped", "none", None),
    "fed_grouped_record_eps1": ("grouped", "record", 1.0),
    "fed_grouped_record_eps4": ("grouped", "record", 4.0),
    "fed_grouped_record_eps8": ("grouped", "record", 8.0),
    "fed_per_record_record_eps8": ("per-record", "record", 8.0),
    "fed_full_site_eps8": ("full", "site", 8.0),
}
ROWS = CENTRAL_ROWS + tuple(FED_ROWS)
# row -> the simulate preset (`--config`) it runs with: these rows run as a user of the shipped preset would (its
# settings were chosen on val: docs/federation.md); `--set` keys still win over it
_CONFIGS = Path(__file__).resolve().parents[1] / "simulations" / "configs"
PRESETS = {"fed_full_none": _CONFIGS / "no-dp.toml", "fed_per_record_record_eps8": _CONFIGS / "record-dp.toml"}


def simulate_command(row: str, *, data: Path, teacher: Path, target: str, sites: int, rounds: int, seed: int,
                     out: Path, cache: Path | None = None, sets: list[str] = (), cpus: int | None = None,
                     engine: str = "ray") -> list[str]:
    """The `fedgckd simulate` command line of a federated row (a Dirichlet partition over identities, delta 1e-5)."""
    if row not in FED_ROWS:
        raise KeyError(f"{row!r} is not a federated row; federated rows: {', '.join(FED_ROWS)}")
    mode, privacy, epsilon = FED_ROWS[row]
    cmd = [sys.executable, "-m", "fedgckd", "simulate", "--data", str(data), "--teacher", str(teacher), "--target", target,
           "--sites", str(sites), "--rounds", str(rounds), "--seed", str(seed), "--partition", "dirichlet",
           "--mode", mode, "--privacy", privacy, "--delta", f"{DELTA:g}", "--out", str(out),
           "--state-dir", str(out.parent / f"{out.name}_sites")]
    if epsilon is not None:
        cmd += ["--epsilon", f"{epsilon:g}"]
    if row in PRESETS:
        cmd += ["--config", str(PRESETS[row])]
    if cache is not None:
        cmd += ["--cache", str(cache)]
    if cpus is not None:
        cmd += ["--cpus", str(cpus)]
    if engine != "ray":
        cmd += ["--engine", engine]
    for s in sets:
        cmd += ["--set", s]
    return cmd


def read_privacy(run: Path) -> dict:
    """Epsilon per site from a run's ledger.json: the largest site's, with unit, delta and accountant as the ledger
    states them; whether every site stayed within the budget. Empty for a run without privacy."""
    led = read_json(run / "ledger.json")
    p = led["privacy"]
    if p["mode"] == "none":
        return {}
    # site-level DP: the server accounts the central mechanism per site; record-level: each site's own ledger
    per_site = (led.get("final_server_epsilon") if p["mode"] == "site" else None) or led["final_epsilon"]
    if not per_site:
        raise ValueError(f"{run / 'ledger.json'}: privacy {p['mode']!r} but no site has an epsilon")
    eps = max(per_site.values())
    return {"epsilon": round(eps, 3), "epsilon_unit": p.get("unit", p["mode"]), "delta": p["delta"],
            "accountant": p["accountant"], "epsilon_budget": p["epsilon_budget"],
            "within_budget": all(e <= p["epsilon_budget"] + 1e-9 for e in per_site.values())}


def read_bytes(run: Path) -> dict:
    """What one site sends per round: the trained numbers the server reports (``update_bytes``, v1's figure) and the
    mean of the reply sizes the server measured (every site, every round)."""
    m = read_json(run / "metrics.json")
    mb = m["model_bytes"]
    measured = [b for r in m["rounds"] for b in r.get("bytes_from_site", {}).values()]
    out = {"bytes_per_site_round": mb["update_bytes"], "full_model_bytes": mb["full_model_bytes"]}
    if measured:
        out["bytes_from_site_mean"] = round(statistics.fmean(measured), 1)
    return out


def read_run(run: Path, model_metrics: dict) -> dict:
    """A federated row's result: ``model_metrics`` (the final model on the evaluated split), the server's last-round
    val R1, wall time, epsilon and bytes."""
    m = read_json(run / "metrics.json")
    res = {"R1": model_metrics["R1"], "mAP": model_metrics["mAP"], "val_R1": m["rounds"][-1]["R1"],
           "wall_s": m.get("wall_s")}
    return res | read_privacy(run) | read_bytes(run)


def central_privacy(led) -> dict:
    """The claim of the one-machine DP row, as its ledger (a `SiteLedger` of adapt_grouped_release) states it."""
    eps = led.epsilon()
    return {"epsilon": round(eps, 3), "epsilon_unit": led.unit, "delta": led.delta, "accountant": led.accountant,
            "epsilon_budget": led.budget, "within_budget": eps <= led.budget + 1e-9}


GROUPED_DP_ROWS = {"central_full": "gckd_full", "central_grouped_dp_eps8": "gckd_grouped_dp_eps8"}  # same calls, same seed


def reuse_central(folder: Path, profile: str, target: str, seed: int, split: str, direct: dict, only: set[str]) -> dict:
    """The central rows of ``only`` that benchmarks/grouped_dp.py already ran for this profile, target, seed and split
    (its part in ``folder``), renamed; taken only if that part's ``direct`` row equals ours (the same teacher), else a
    ValueError naming the file. Rows the part lacks are left out (the caller runs them)."""
    path = folder / (f"{profile}_{target}_s{seed}" + ("" if split == "test" else f"_{split}") + ".json")
    if not path.exists():
        return {}
    part = read_json(path)
    theirs = part["rows"].get("direct")
    if part.get("split") != split or theirs is None or \
            (abs(theirs["R1"] - direct["R1"]) > 1e-6 or abs(theirs["mAP"] - direct["mAP"]) > 1e-6):
        raise ValueError(f"{path}: its direct row ({theirs}) is not this teacher's ({direct}) on the {split} split; "
                         "its central rows belong to another teacher, so they are not reused")
    out = {}
    for row, name in GROUPED_DP_ROWS.items():
        if row in only and name in part["rows"]:
            m = part["rows"][name]
            out[row] = {"R1": m["R1"], "mAP": m["mAP"], "from": f"{path.name}:{name}"}
            if "epsilon" in m:  # grouped_dp's claim: record-level, delta 1e-5, RDP (ablation.DELTA, the default accountant)
                out[row] |= {"epsilon": round(m["epsilon"], 3), "epsilon_unit": "record", "delta": DELTA,
                             "accountant": "rdp", "epsilon_budget": 8.0, "within_budget": m["epsilon"] <= 8.0 + 1e-9}
    return out
