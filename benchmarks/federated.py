"""Federated GCKD on one pair of the embedded benchmark: privacy modes against the floor and the central run.

    python benchmarks/federated.py [--data DIR] [--source flat] [--target outline] [--sites 10] [--rounds 10]

Runs `fedgckd simulate` once per setting (10 sites, delta 1e-5), evaluates each
final model once on the target test split, and measures the record-level DP
step against the same step without DP in one process. Writes
benchmarks/results/federated.json and federated.md.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import torch
from bench_utils import command_line, ensure_data, features, machine, write

from common.atomic import read_json
from common.checkpoint import load_checkpoint
from common.models.backbones import build_backbone
from common.train.adapt import AdaptConfig, adapt
from common.train.pretrain import evaluate_heads
from common.train.site_context import PublicBank

RUNS = {
    "fed_none": ["--privacy", "none", "--mode", "full"],
    "fed_site_eps8": ["--privacy", "site", "--mode", "full", "--epsilon", "8"],
    "fed_record_eps1": ["--privacy", "record", "--mode", "per-record", "--epsilon", "1"],
    "fed_record_eps4": ["--privacy", "record", "--mode", "per-record", "--epsilon", "4"],
    "fed_record_eps8": ["--privacy", "record", "--mode", "per-record", "--epsilon", "8"],
}


def simulate(args, teacher: Path, name: str, extra: list[str]) -> Path:
    out = args.runs / name
    cmd = [sys.executable, "-m", "fedgckd", "simulate", "--data", str(args.data), "--teacher", str(teacher), "--target", args.target,
           "--sites", str(args.sites), "--rounds", str(args.rounds), "--delta", "1e-5", "--out", str(out), "--state-dir", str(out / "sites"), *extra]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return out


def final_epsilon(run: Path) -> float | None:
    audit = run / "audit.json"
    if not audit.exists():
        return None
    sites = read_json(audit).get("sites", [])
    eps = [s.get("epsilon") or s.get("epsilon_rdp") for s in (sites.values() if isinstance(sites, dict) else sites)]
    eps = [e for e in eps if isinstance(e, (int, float))]
    return round(max(eps), 3) if eps else None


def dp_step_ratio(bb, data: Path, target: str, teacher_heads, sites: int) -> float:
    """Record-level DP step / the same step without DP, on one site-sized pack, in one process."""
    from common.losses.cmkd import CMKDConfig
    from common.train.record_level_dp import RecordLevelConfig, train_record_level
    from common.train.record_pack import RecordLoss, RecordPack, pack_texts, teacher_targets
    from common.train.embed import embed_featureset

    fs = features(bb, data, target, "train", None, labels=False)
    site = fs.select_images(torch.arange(len(fs.image_feats) // sites))
    pack = RecordPack.from_features(site)
    t, v = embed_featureset(teacher_heads, site)
    targets = teacher_targets(v, pack_texts(t, site.text_to_image, pack))
    crit = RecordLoss(v[:64], t[:64], CMKDConfig(), v.shape[1])
    cfg = RecordLevelConfig(noise_multiplier=1.0, sample_rate=0.5, steps=30)
    timings = {}
    for dp in (False, True, False, True):
        heads = load_checkpoint_copy(teacher_heads)
        g = torch.Generator().manual_seed(0)
        t0 = time.perf_counter()
        if dp:
            train_record_level(heads, pack, targets, crit, cfg, g)
        else:
            _plain_steps(heads, pack, targets, crit, cfg, g)
        timings.setdefault(dp, []).append(time.perf_counter() - t0)
    return round(min(timings[True]) / min(timings[False]), 2)


def load_checkpoint_copy(heads):
    import copy

    return copy.deepcopy(heads).train()


def _plain_steps(heads, pack, targets, crit, cfg, g) -> None:
    from common.train.record_pack import PackedStudent

    model = PackedStudent(heads, pack.image.shape[1], pack.captions.shape[2], pack.captions.shape[1])
    opt = torch.optim.SGD(heads.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    x = pack.inputs()
    crit.reduction = "mean"
    for _ in range(cfg.steps):
        idx = (torch.rand(len(pack), generator=g) < cfg.sample_rate).nonzero().squeeze(1)
        if len(idx) == 0:
            continue
        opt.zero_grad()
        crit(model(x[idx]), targets[idx]).backward()
        opt.step()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("data/embedded"))
    ap.add_argument("--source", default="flat")
    ap.add_argument("--target", default="outline")
    ap.add_argument("--sites", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--teacher", type=Path, default=Path("runs/teachers/flat"), help="from benchmarks/direct_transfer.py")
    ap.add_argument("--runs", type=Path, default=Path("runs/federated"))
    args = ap.parse_args()
    data = ensure_data(args.data)
    t0 = time.perf_counter()
    ckpt = load_checkpoint(args.teacher)
    bb = build_backbone(ckpt.backbone)
    test = features(bb, data, args.target, "test", None)
    out = {"direct": evaluate_heads(ckpt.heads, test)}
    src = features(bb, data, args.source, "train", None)
    tgt = features(bb, data, args.target, "train", None, labels=False)
    out["central"] = evaluate_heads(adapt(ckpt.heads, tgt, PublicBank.from_source(src, 2048), AdaptConfig())[0], test)
    metrics = None
    for name, extra in RUNS.items():
        run = simulate(args, args.teacher, name, extra)
        out[name] = evaluate_heads(load_checkpoint(run / "model").heads, test)
        eps = final_epsilon(run)
        if eps is not None and name != "fed_none":
            out[name]["epsilon"] = eps
        metrics = read_json(run / "metrics.json")
        print(f"{name}: R1 {out[name]['R1']:.2f} mAP {out[name]['mAP']:.2f} eps {out[name].get('epsilon')}", flush=True)
    mb = metrics["model_bytes"]
    runs = {k: {m: round(v[m], 2) for m in ("R1", "mAP")} | ({"epsilon": v["epsilon"]} if "epsilon" in v else {}) for k, v in out.items()}
    payload = {
        "source": args.source, "target": args.target, "sites": args.sites, "rounds": args.rounds, "delta": 1e-5, "runs": runs,
        "bytes_per_site_round": mb["update_bytes"], "full_model_bytes": mb["full_model_bytes"],
        "dp_step_ratio": dp_step_ratio(bb, data, args.target, ckpt.heads, args.sites),
        "command": command_line(), "machine": machine(), "seconds": round(time.perf_counter() - t0, 1),
    }
    lines = [f"{args.source}→{args.target}, {args.sites} sites, {args.rounds} rounds, delta 1e-5, target test split.", "",
             "| run | R1 | mAP | epsilon (per site, RDP) |", "|---|---|---|---|"]
    for k, v in runs.items():
        lines.append(f"| {k} | {v['R1']:.1f} | {v['mAP']:.1f} | {v.get('epsilon', '–')} |")
    frac = 100 * mb["update_bytes"] / mb["full_model_bytes"]
    lines += ["", f"Bytes per site per round: {mb['update_bytes']:,} ({frac:.2f}% of the full model's {mb['full_model_bytes']:,} B). "
              f"DP step / non-DP step: {payload['dp_step_ratio']}x.", "", f"Command: `{payload['command']}`; {payload['seconds']} s."]
    write("federated", payload, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
