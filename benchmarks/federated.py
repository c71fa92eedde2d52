"""Federated GCKD against the one-machine rows, ten sites of the `sites` profile (and the default profile's corner).

    python benchmarks/federated.py --profile sites --pairs flat:outline --seeds 0 [--runs ...]   # one part
    python benchmarks/federated.py --merge                                                       # the table

Each call runs the rows of `benchmarks/federated_rows.py` for one profile, its pairs and seeds, and writes a part
`benchmarks/results/federated_parts/PROFILE_SOURCE_TARGET_sSEED.json`. The central rows (`direct`, `central_full`,
`central_grouped_dp_eps8`) run here with the calls of `benchmarks/ablation.py` (`run_pair`); each federated row runs
`fedgckd simulate` (`--sites` sites, a Dirichlet partition over identities, `--rounds` rounds, delta 1e-5, its seed)
from the same teacher. Every final model is evaluated once on the target **test** split (`--split val` for choosing
settings: the test split is then not read, and val parts are never merged). Profiles:

- ``sites``: the `sites` profile's targets (18,000 train records each, `--sites-data`, generated there if the folder
  is new), so ten sites hold about 1,800 records each; the teacher from the default profile's source (`--data`):
  simulate finds the source through the teacher checkpoint, which records its data folder;
- ``default``: the embedded benchmark's targets (1,800 train records over the sites: the reported corner).

The teacher is pretrained per seed as `run_pair` does (its checkpoint saved under `--work`), unless `--teacher` names
one checkpoint for every seed. `--set KEY=VALUE` passes run-config keys to every simulate call (recorded with the
row). `--central-from DIR` takes `central_full` and `central_grouped_dp_eps8` from grouped_dp.py's parts where it ran
them with the same teacher (its `direct` row must equal ours), instead of running them again. A part of a (profile,
pair, seed) written later replaces the rows it holds. `--merge` reads every test part and writes
`benchmarks/results/federated.json` (``{"runs": {PROFILE: {PAIR: {ROW: {"R1", "mAP", "epsilon", ...}}}},
"bytes_per_site_round", "full_model_bytes", "dp_step_ratio"}``; `benchmarks/federated_merge.py`), its table and
`federated.svg` (R1 against epsilon, central DP and federated on one figure).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from bench_utils import RESULTS, command_line, ensure_data, features, machine, refresh_for, write
from federated_merge import load_parts, markdown, merge, plot
from federated_rows import CENTRAL_ROWS, DELTA, FED_ROWS, ROWS, central_privacy, read_run, reuse_central, simulate_command

from common.atomic import atomic_write_bytes, atomic_write_json, read_json
from common.checkpoint import Checkpoint, load_checkpoint, save_checkpoint, source_meta
from common.models.backbones import build_backbone
from common.models.heads import HeadConfig
from common.train.adapt import AdaptConfig, adapt
from common.train.adapt_release import adapt_grouped_release
from common.train.pretrain import PretrainConfig, evaluate_heads, pretrain
from common.train.site_context import PublicBank
from dp_step import measure as measure_dp_step

PARTS = RESULTS / "federated_parts"
PROFILES = ("default", "sites")


def teacher_for(args, bb, data: Path, src: str, seed: int, s_train, s_val) -> Path:
    """The teacher checkpoint of this seed: `--teacher`, or pretrained here as `run_pair` does and saved under --work
    with its source data folder recorded (so simulate finds the source when --data holds only the targets)."""
    if args.teacher is not None:
        return args.teacher
    out = args.work / "teachers" / f"{src}_s{seed}"
    heads, hist = pretrain(s_train, s_val, HeadConfig(), PretrainConfig(seed=seed))
    meta = {"role": "teacher", "source": source_meta(data, src, out), "training": hist}
    save_checkpoint(Checkpoint(heads, bb.name, bb.fingerprint(), heads.cfg, bb.text_dim, bb.image_dim, seed, meta), out)
    return out


def central_rows(teacher, t_train, t_eval, bank, seed: int, only: set[str]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for row in (r for r in CENTRAL_ROWS if r in only):
        t0 = time.perf_counter()
        if row == "direct":
            res = evaluate_heads(teacher, t_eval)
        elif row == "central_full":  # run_pair's gckd_full
            res = evaluate_heads(adapt(teacher, t_train, bank, AdaptConfig(seed=seed, refresh_steps=refresh_for(t_train.n_images)))[0], t_eval)
        else:  # run_pair's gckd_grouped_dp_eps8
            heads, _, led = adapt_grouped_release(teacher, t_train, bank, AdaptConfig(seed=seed, mode="grouped"), 8, DELTA)
            res = evaluate_heads(heads, t_eval) | central_privacy(led)
        out[row] = {"R1": res["R1"], "mAP": res["mAP"], "wall_s": round(time.perf_counter() - t0, 1)} | \
            {k: v for k, v in res.items() if k not in ("R1", "mAP", "R5", "R10", "mINP")}
        print(f"  seed {seed} {row:28s} R1 {out[row]['R1']:6.2f} mAP {out[row]['mAP']:6.2f}", flush=True)
    return out


def fed_row(args, row: str, target_data: Path, teacher: Path, tgt: str, seed: int, t_eval, stem: str) -> dict:
    out = args.work / stem / row
    shutil.rmtree(out, ignore_errors=True)  # a fresh federation: sites keep their ledgers across runs otherwise
    shutil.rmtree(out.parent / f"{out.name}_sites", ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = simulate_command(row, data=target_data, teacher=teacher, target=tgt, sites=args.sites, rounds=args.rounds,
                           seed=seed, out=out, cache=args.cache, sets=args.set, cpus=args.cpus,
                           engine=args.engine)
    print("+", " ".join(cmd), flush=True)
    env = dict(os.environ, OMP_NUM_THREADS="1") if args.jobs > 1 else None
    log = out.parent / f"{row}.log"
    with open(log, "wb") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env).returncode
    if rc != 0:
        tail = log.read_text(errors="replace").splitlines()[-15:]
        raise SystemExit(f"{row}: fedgckd simulate exited {rc} (log {log}):\n" + "\n".join(tail))
    res = read_run(out, evaluate_heads(load_checkpoint(out / "model").heads, t_eval))
    res["settings"] = {"sites": args.sites, "rounds": args.rounds, "set": list(args.set)}  # not the engine: same apps
    print(f"  seed {seed} {row:28s} R1 {res['R1']:6.2f} mAP {res['mAP']:6.2f} epsilon {res.get('epsilon')}", flush=True)
    return res


def run_part(args) -> list[Path]:
    data = ensure_data(args.data)
    target_data = ensure_data(args.sites_data, profile="sites") if args.profile == "sites" else data
    bb = build_backbone(args.backbone)
    only, written = set(args.runs), []
    for pair in args.pairs:
        src, tgt = pair.split(":")
        s_train, s_val = features(bb, data, src, "train", args.cache), features(bb, data, src, "val", args.cache)
        t_train = features(bb, target_data, tgt, "train", args.cache, labels=False)
        t_eval = features(bb, target_data, tgt, args.split, args.cache)
        for seed in args.seeds:
            t0 = time.perf_counter()
            stem = f"{args.profile}_{src}_{tgt}_s{seed}" + ("" if args.split == "test" else f"_{args.split}")
            stem += f"_{args.tag}" if args.tag else ""
            teacher_dir = teacher_for(args, bb, data, src, seed, s_train, s_val)
            teacher = load_checkpoint(teacher_dir).heads
            bank = PublicBank.from_source(s_train, 2048, seed=seed)
            need_direct = "direct" in only or args.central_from is not None
            rows = central_rows(teacher, t_train, t_eval, bank, seed, {"direct"}) if need_direct else {}
            if args.central_from:  # grouped_dp.py's rows of this teacher, where it ran them
                rows |= reuse_central(args.central_from, args.profile, tgt, seed, args.split, rows["direct"], only)
            rest = (only & set(CENTRAL_ROWS)) - set(rows) - {"direct"}
            if rest:
                rows |= central_rows(teacher, t_train, t_eval, bank, seed, rest)
            if "direct" not in only:
                rows.pop("direct", None)
            fed = [r for r in FED_ROWS if r in only]
            with ThreadPoolExecutor(args.jobs) as pool:
                done = list(pool.map(lambda r: fed_row(args, r, target_data, teacher_dir, tgt, seed, t_eval, stem), fed))
            rows |= dict(zip(fed, done))
            part = {"profile": args.profile, "pair": f"{src}->{tgt}", "seed": seed, "split": args.split, "rows": rows,
                    "command": command_line(), "machine": machine(), "seconds": round(time.perf_counter() - t0, 1)}
            if fed:  # the record-level DP step against the plain one, on a site-sized pack of this target
                site = t_train.select_images(torch.arange(len(t_train.image_feats) // args.sites))
                part["dp_step"] = measure_dp_step(teacher, site, "last", 0.25)
            PARTS.mkdir(parents=True, exist_ok=True)
            name = PARTS / f"{stem}.json"
            if name.exists() and args.split == "test":  # keep the rows this call did not rerun
                old = read_json(name)
                part["rows"] = {**old["rows"], **rows}
                part["commands"] = [*old.get("commands", [old["command"]]), part["command"]]
                part.setdefault("dp_step", old.get("dp_step"))
            atomic_write_json(name, part)
            written.append(name)
            print(f"wrote {name}", flush=True)
    return written


def write_merged() -> dict:
    parts = load_parts(PARTS)
    if not parts:
        raise SystemExit(f"no test parts under {PARTS}: run some first (see --help)")
    payload = merge(parts) | {"machine": machine()}
    write("federated", payload, markdown(payload))
    atomic_write_bytes(RESULTS / "federated.svg", plot(payload["runs"]).encode())
    return payload


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", choices=PROFILES, default="sites")
    ap.add_argument("--data", type=Path, default=Path("data/embedded"), help="the default profile (source, and its targets)")
    ap.add_argument("--sites-data", type=Path, default=Path("data/sites"), help="the sites profile (18,000-record targets)")
    ap.add_argument("--backbone", default="minilm-effnet")
    ap.add_argument("--pairs", nargs="+", default=["flat:outline", "flat:shaded"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--runs", nargs="+", default=list(ROWS), choices=ROWS)
    ap.add_argument("--split", choices=("val", "test"), default="test")
    ap.add_argument("--sites", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a run-config key for every simulate call")
    ap.add_argument("--teacher", type=Path, default=None, help="one teacher checkpoint for every seed (default: pretrain per seed)")
    ap.add_argument("--work", type=Path, default=Path("runs/federated"), help="teachers and run folders")
    ap.add_argument("--central-from", type=Path, default=None, metavar="DIR",
                    help="take central_full / central_grouped_dp_eps8 from grouped_dp.py's parts in DIR (e.g. "
                         "benchmarks/results/grouped_dp_parts) where it ran them with this teacher; run the rest")
    ap.add_argument("--cache", type=Path, default=None)
    ap.add_argument("--cpus", type=int, default=None, help="simulate --cpus")
    ap.add_argument("--engine", choices=("ray", "inprocess"), default="ray",
                    help="simulate --engine: inprocess runs the sites one after another in one process (no Ray actors)")
    ap.add_argument("--jobs", type=int, default=1, help="federations run side by side (one torch thread each)")
    ap.add_argument("--tag", default="", help="val only: a suffix of the part's and run folder's names, so that each "
                    "setting studied keeps its own part (a val part is otherwise replaced by the next val call)")
    ap.add_argument("--merge", action="store_true", help="merge the test parts into federated.json, .md and .svg")
    args = ap.parse_args(argv)
    if args.tag and args.split == "test":
        ap.error("--tag names val studies; test parts are merged into the table by (profile, pair, seed)")
    if args.merge:
        write_merged()
    else:
        run_part(args)


if __name__ == "__main__":
    main()
