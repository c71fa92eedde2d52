"""Direct transfer matrix: pretrain on each domain, evaluate on every domain's test split.

    python benchmarks/direct_transfer.py [--data DIR] [--backbone minilm-effnet]

Writes benchmarks/results/direct_transfer.json
({"backbone": ..., "matrix": {SOURCE: {TARGET: {R1, R5, R10, mAP, mINP}}}})
and direct_transfer.md. Checkpoints are selected on the source val split; each
test split is read once, at the end.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from bench_utils import METRICS, command_line, ensure_data, features, machine, write

from common.checkpoint import Checkpoint, save_checkpoint
from common.data.registry import available_domains
from common.models.backbones import build_backbone
from common.models.heads import HeadConfig
from common.train.pretrain import PretrainConfig, evaluate_heads, pretrain


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("data/embedded"))
    ap.add_argument("--backbone", default="minilm-effnet")
    ap.add_argument("--cache", type=Path, default=None)
    ap.add_argument("--teachers", type=Path, default=Path("runs/teachers"), help="where the per-domain teachers are saved")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    data = ensure_data(args.data)
    bb = build_backbone(args.backbone)
    domains = available_domains(data)
    matrix: dict = {}
    t0 = time.perf_counter()
    for src in domains:
        train, val = features(bb, data, src, "train", args.cache), features(bb, data, src, "val", args.cache)
        heads, hist = pretrain(train, val, HeadConfig(), PretrainConfig(seed=args.seed))
        meta = {"role": "teacher", "source": {"data": str(data), "domain": src}, "training": hist}
        save_checkpoint(Checkpoint(heads, bb.name, bb.fingerprint(), heads.cfg, bb.text_dim, bb.image_dim, args.seed, meta), args.teachers / src)
        matrix[src] = {}
        for tgt in domains:
            m = evaluate_heads(heads, features(bb, data, tgt, "test", args.cache))
            matrix[src][tgt] = {k: round(m[k], 2) for k in METRICS}
            print(f"{src} -> {tgt}: R1 {m['R1']:.2f} mAP {m['mAP']:.2f}", flush=True)
    payload = {"backbone": args.backbone, "matrix": matrix, "command": command_line(), "machine": machine(), "seconds": round(time.perf_counter() - t0, 1)}
    lines = [
        f"Text-to-image R1 / mAP on each target's test split (rows: source the teacher was trained on; backbone `{args.backbone}`).",
        "",
        "| source \\ target | " + " | ".join(domains) + " |",
        "|---|" + "---|" * len(domains),
    ]
    for src in domains:
        cells = [f"{matrix[src][t]['R1']:.1f} / {matrix[src][t]['mAP']:.1f}" for t in domains]
        lines.append(f"| {src} | " + " | ".join(cells) + " |")
    lines += ["", f"Command: `{payload['command']}`; {payload['machine']['cores']} cores, torch {payload['machine']['torch']}, {payload['seconds']} s."]
    write("direct_transfer", payload, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
