"""How record-level DP's cost shrinks as sites hold more records: emulated federations at 180, 600 and 1,800 records per site.

    python benchmarks/site_size.py [--per-site 180 600 1800] [--train-sets last all] [--lrs 0.1 0.5 2.0] [--reuse]

The target comes from the ``sites`` profile of the generated benchmark (6,000
train identities of the outline style, written to ``--data`` if absent; about
ten minutes on two cores, then a few more to extract its trunk features once).

DP-SGD's noise is fixed by (epsilon, delta, steps, sampling rate); the signal,
a sum of clipped per-record gradients, grows with the records in a step. So at
a fixed epsilon a site with ten times the records sees a tenth of the relative
noise. The embedded benchmark gives each of 10 sites about 180 records; this
benchmark deals nested subsets of a ten-times larger target train split (the
``sites`` profile) to 10 IID sites and, per size, runs:

- ``direct``: the source teacher;
- ``central``: full-mode GCKD on one machine over all the sites' records (the
  reference gain, as in benchmarks/federated.py; its refined graph is
  refreshed about once an epoch at every size, as the default does at 1,800);
- ``fed_no_noise``: the record-level federation's pieces without noise
  (`benchmarks/dp_emulation.py`'s FedAvg loop: per-record loss, 10 rounds x
  20 steps at rate 0.25, lr 2), once per trained set in ``--train-sets``
  (``last``: the image head's last Linear, the federation's default; ``all``:
  the whole image head);
- ``fed_record_eps8``: the same at epsilon 8 (delta 1e-5, RDP), one run per
  trained set and step size in ``--lrs``; the step size is chosen on the
  target **val** split and the table reports the **test** split.

``--reuse`` keeps the runs the last JSON holds, and those an interrupted
invocation finished (each finished run is saved at once to
``runs/site_size_progress.json``), and runs only the missing ones (the
one-machine run at 1,800 records per site alone takes about 20 minutes); the
JSON lists every run with its settings under ``jobs``.

Writes benchmarks/results/site_size.json and site_size.md.
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import torch
from bench_utils import RESULTS, command_line, ensure_data, features, machine, refresh_for, write
from dp_emulation import DELTA, SAMPLE_RATE, emulate

from common.atomic import atomic_write_json, read_json
from common.checkpoint import load_checkpoint
from common.models.backbones import build_backbone
from common.privacy.noise_calibration import plan_record_level
from common.train.adapt import AdaptConfig, adapt
from common.train.pretrain import evaluate_heads
from common.train.site_context import PublicBank

EPSILON, ROUNDS, STEPS, NO_NOISE_LR = 8.0, 10, 20, 2.0
PROGRESS = Path("runs/site_size_progress.json")  # every finished run, saved as it ends (read by --reuse)


def load(args, per_site: int):
    bb = build_backbone("minilm-effnet")
    src = features(bb, args.source_data, args.source, "train", args.cache)
    tgt = features(bb, args.data, args.target, "train", args.cache, labels=False)
    pick = torch.randperm(len(tgt.image_feats), generator=torch.Generator().manual_seed(0))[: per_site * args.sites]
    val = features(bb, args.data, args.target, "val", args.cache)
    test = features(bb, args.data, args.target, "test", args.cache)
    return load_checkpoint(args.teacher).heads, src, tgt.select_images(pick.sort().values), val, test


def both(heads, val, test) -> dict:
    m = evaluate_heads(heads, test)
    return {"val_R1": round(evaluate_heads(heads, val)["R1"], 2), "R1": round(m["R1"], 2), "mAP": round(m["mAP"], 2)}


def job(args, per_site: int, kind: str, train_set: str, lr: float) -> dict:
    t0 = time.perf_counter()
    result = _job(args, per_site, kind, train_set, lr)
    print(f"  {per_site} records per site, {kind}{f' {train_set} lr {lr:g}' if train_set else ''}: val R1 "
          f"{result['val_R1']:.1f}, test R1 {result['R1']:.1f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return {"records_per_site": per_site, "kind": kind, "train_set": train_set, "lr": lr, "result": result}


def _job(args, per_site: int, kind: str, train_set: str, lr: float) -> dict:
    torch.set_num_threads(1)
    teacher, src, tgt, val, test = load(args, per_site)
    if kind == "direct":
        return both(teacher, val, test)
    if kind == "central":
        cfg = AdaptConfig(refresh_steps=refresh_for(len(tgt.image_feats)))  # about once a pass at every size
        return both(adapt(teacher, tgt, PublicBank.from_source(src, 2048), cfg)[0], val, test)
    eps = EPSILON if kind == "fed_record_eps8" else 0.0
    res, heads = emulate(teacher, src, tgt, val, args.sites, train_set, lr, eps, ROUNDS, STEPS, return_heads=True)
    return both(heads, val, test) | {"noise_multiplier": res["site_noise_multiplier"], "trained_numbers": res["trained_numbers"]}


def _key(j: dict) -> tuple:
    return j["records_per_site"], j["kind"], j["train_set"], float(j["lr"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("data/sites"), help="the `sites` profile (see above)")
    ap.add_argument("--source-data", type=Path, default=Path("data/embedded"))
    ap.add_argument("--source", default="flat")
    ap.add_argument("--target", default="outline")
    ap.add_argument("--teacher", type=Path, default=Path("runs/teachers/flat"), help="from benchmarks/direct_transfer.py")
    ap.add_argument("--sites", type=int, default=10)
    ap.add_argument("--per-site", nargs="+", type=int, default=[180, 600, 1800])
    ap.add_argument("--train-sets", nargs="+", default=["last", "all"], help="what record-level sites train (train-params)")
    ap.add_argument("--lrs", nargs="+", type=float, default=[0.1, 0.5, 2.0])
    ap.add_argument("--cache", type=Path, default=Path("runs/cache/site_size"), help="trunk features (extracted once)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--reuse", action="store_true", help="keep the runs the last JSON already holds; run only the missing ones")
    ap.add_argument("--table-only", action="store_true", help="rewrite the table from the last JSON, run nothing")
    args = ap.parse_args()
    if args.table_only:
        return rerender()
    ensure_data(args.data, profile="sites")
    t0 = time.perf_counter()
    load(args, 1)  # extract and cache the trunk features once, before the workers read them
    wanted = [(min(args.per_site), "direct", "", 0.0)] + [(n, "central", "", 0.0) for n in args.per_site]
    wanted += [(n, "fed_no_noise", t, NO_NOISE_LR) for n in args.per_site for t in args.train_sets]
    wanted += [(n, "fed_record_eps8", t, lr) for n in args.per_site for t in args.train_sets for lr in args.lrs]
    old = read_json(RESULTS / "site_size.json") if args.reuse and (RESULTS / "site_size.json").exists() else {}
    finished = read_json(PROGRESS).get("jobs", []) if args.reuse and PROGRESS.exists() else []
    kept = list({_key(j): j for j in old.get("jobs", []) + finished if _key(j) in set(wanted)}.values())
    todo = sorted(set(wanted) - {_key(j) for j in kept}, key=lambda j: (-j[0], j[2] != "all"))  # the longest first
    print(f"{len(kept)} runs kept from the last JSON and the progress file, {len(todo)} to run", flush=True)
    done = list(kept)
    with ProcessPoolExecutor(args.jobs) as pool:
        for future in as_completed([pool.submit(job, args, *t) for t in todo]):
            done.append(future.result())
            atomic_write_json(PROGRESS, {"jobs": done})  # atomic: an interrupted benchmark resumes with --reuse
    payload = summarise(args, done)
    payload |= {"commands": old.get("commands", []) + [command_line()], "machine": machine(),
                "seconds": round(old.get("seconds", 0.0) + time.perf_counter() - t0, 1) if kept else round(time.perf_counter() - t0, 1)}
    write("site_size", payload, table(payload))


def summarise(args, done: list[dict]) -> dict:
    got = {_key(j): j["result"] for j in done}
    direct = next(j["result"] for j in done if j["kind"] == "direct")
    sigma = plan_record_level(EPSILON, DELTA, ROUNDS, STEPS, SAMPLE_RATE).dp_sgd_noise_multiplier
    assert all(abs(j["result"]["noise_multiplier"] - sigma) < 1e-3 for j in done if j["kind"] == "fed_record_eps8")
    sizes = []
    for n in sorted(args.per_site):
        central = got[(n, "central", "", 0.0)]
        gain = central["R1"] - direct["R1"]
        per_set = {}
        for t in args.train_sets:
            by_lr = {str(lr): got[(n, "fed_record_eps8", t, float(lr))] for lr in args.lrs}
            best = max(by_lr, key=lambda lr: by_lr[lr]["val_R1"])
            runs = {"fed_no_noise": got[(n, "fed_no_noise", t, NO_NOISE_LR)], "fed_record_eps8": by_lr[best] | {"lr": float(best), "by_lr": by_lr}}
            runs["share_of_central_gain"] = {k: round((runs[k]["R1"] - direct["R1"]) / gain, 3) for k in ("fed_no_noise", "fed_record_eps8")}
            per_set[t] = runs
        sizes.append({"records_per_site": n, "records_per_step": round(SAMPLE_RATE * n, 1), "central": central, "train_sets": per_set})
    return {"source": args.source, "target": args.target, "sites": args.sites, "epsilon": EPSILON, "delta": DELTA,
            "accountant": "rdp", "rounds": ROUNDS, "local_steps": STEPS, "sample_rate": SAMPLE_RATE,
            "noise_multiplier": round(sigma, 4), "direct": direct, "sizes": sizes, "jobs": done}


def table(p: dict) -> str:
    d = p["direct"]["R1"]
    lines = [f"{p['source']}→{p['target']} (`sites` profile), {p['sites']} IID sites, emulated record-level FedAvg: "
             f"{p['rounds']} rounds x {p['local_steps']} steps at rate {p['sample_rate']}, noise multiplier "
             f"{p['noise_multiplier']:.3f} (epsilon {p['epsilon']:g} per record, delta {p['delta']:g}, RDP) at every size. "
             f"Test R1 (val R1 chose the step size); direct transfer {d:.1f}. Shares are of the gain over direct transfer. "
             "Trained: `last` = the image head's last Linear, `all` = the whole image head.", "",
             "| records per site | records per step | central R1 | trained | fed, no noise R1 (share of central) | "
             "fed, epsilon 8 R1 (share of central) | epsilon 8's share of the no-noise gain | lr chosen on val |",
             "|---|---|---|---|---|---|---|---|"]
    for s in p["sizes"]:
        for t, r in s["train_sets"].items():
            sh = r["share_of_central_gain"]
            kept = (r["fed_record_eps8"]["R1"] - d) / (r["fed_no_noise"]["R1"] - d)
            lines.append(f"| {s['records_per_site']:,} | {s['records_per_step']:g} | {s['central']['R1']:.1f} | `{t}` | "
                         f"{r['fed_no_noise']['R1']:.1f} ({sh['fed_no_noise']:.0%}) | {r['fed_record_eps8']['R1']:.1f} "
                         f"({sh['fed_record_eps8']:.0%}) | {kept:.0%} | {r['fed_record_eps8']['lr']:g} |")
    lines += ["", "Commands: " + "; ".join(f"`{c}`" for c in p["commands"]) + f"; {p['seconds']} s in all."]
    return "\n".join(lines) + "\n"


def rerender() -> None:
    """Rewrite site_size.md from site_size.json (after a change to the table's layout)."""
    payload = read_json(RESULTS / "site_size.json")
    write("site_size", payload, table(payload))


if __name__ == "__main__":
    main()
