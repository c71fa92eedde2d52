"""Record-level DP-SGD step time against the same step without DP, measured in one process.

    python benchmarks/dp_step.py [--data DIR] [--target outline] [--teacher runs/teachers/flat] [--records 540]

The DP step is exactly what a site runs under ``privacy=record``
(`train_record_level`: Poisson batch, book-keeping ghost clipping, noise); the
non-DP step is the same model, loss, batch rule and optimiser with a plain
backward pass. Frozen-trunk features are computed once per site (the feature
cache), so both steps train only the heads. Measured for the parameters that
travel in the federation (``train-params=last``) and for all head parameters.
Timings alternate DP / non-DP and keep the best of several repeats, so a
noisy machine shows in both. Writes benchmarks/results/dp_step.json and .md.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch
from bench_utils import command_line, ensure_data, features, machine, write

from common.checkpoint import load_checkpoint
from common.federation.trainable import set_trainable, trainable_for_mode
from common.losses.cmkd import CMKDConfig
from common.models.backbones import build_backbone
from common.train.embed import embed_featureset
from common.train.record_level_dp import RecordLevelConfig, train_record_level
from common.train.record_pack import PackedStudent, RecordLoss, RecordPack, pack_texts, teacher_targets


def _plain_steps(heads, pack, targets, crit, cfg, g) -> None:
    """The non-DP twin of `train_record_level`: same Poisson batches, loss and SGD, plain backward."""
    model = PackedStudent(heads, pack.image.shape[1], pack.captions.shape[2], pack.captions.shape[1])
    opt = torch.optim.SGD([p for p in heads.parameters() if p.requires_grad], lr=cfg.lr, momentum=cfg.momentum)
    x = pack.inputs()
    crit.reduction = "mean"
    for _ in range(cfg.steps):
        idx = (torch.rand(len(pack), generator=g) < cfg.sample_rate).nonzero().squeeze(1)
        if len(idx) == 0:
            continue
        opt.zero_grad(set_to_none=True)
        crit(model(x[idx]), targets[idx]).backward()
        opt.step()


def measure(teacher_heads, site, train_params: str = "last", sample_rate: float = 0.25, steps: int = 20,
            repeats: int = 10) -> dict:
    """{"dp_step_s", "plain_step_s", "ratio", ...} for one site's FeatureSet (labels stripped).

    Each repeat times both twins back to back and the fastest of each counts. Ten repeats, because at a 180-record
    site a step takes 7-15 ms and a busy machine moved three-repeat ratios from 1.16 to 1.40-1.63 (the default
    profile's federated parts, remeasured; benchmarks/results/federated_parts/default_*_s0.json)."""
    pack = RecordPack.from_features(site)
    t, v = embed_featureset(teacher_heads, site)
    targets = teacher_targets(v, pack_texts(t, site.text_to_image, pack))
    crit = RecordLoss(v[:64], t[:64], CMKDConfig(), v.shape[1])
    cfg = RecordLevelConfig(noise_multiplier=1.0, sample_rate=sample_rate, steps=steps)
    timings: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(repeats):
        for dp in (False, True):
            heads = copy.deepcopy(teacher_heads).train()
            set_trainable(heads, trainable_for_mode(heads, train_params, "per_record"))  # what record-level runs train
            g = torch.Generator().manual_seed(0)
            t0 = time.perf_counter()
            if dp:
                crit.reduction = "mean"
                train_record_level(heads, pack, targets, crit, cfg, g)
            else:
                _plain_steps(heads, pack, targets, crit, cfg, g)
            timings[dp].append((time.perf_counter() - t0) / steps)
    dp_s, plain_s = min(timings[True]), min(timings[False])
    return {"train_params": train_params, "records": len(pack), "sample_rate": sample_rate,
            "expected_batch": round(sample_rate * len(pack), 1), "steps": steps, "repeats": repeats,
            "dp_step_s": round(dp_s, 5), "plain_step_s": round(plain_s, 5), "ratio": round(dp_s / plain_s, 2)}


def site_of(data: Path, target: str, teacher: Path, records: int):
    ckpt = load_checkpoint(teacher)
    bb = build_backbone(ckpt.backbone)
    fs = features(bb, data, target, "train", None, labels=False)
    return ckpt, fs.select_images(torch.arange(min(records, len(fs.image_feats))))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("data/embedded"))
    ap.add_argument("--target", default="outline")
    ap.add_argument("--teacher", type=Path, default=Path("runs/teachers/flat"), help="from benchmarks/direct_transfer.py")
    ap.add_argument("--records", type=int, default=540, help="site size (540 = a tenth of the target train split)")
    ap.add_argument("--sample-rate", type=float, default=0.25)
    args = ap.parse_args()
    ensure_data(args.data)
    ckpt, site = site_of(args.data, args.target, args.teacher, args.records)
    rows = [measure(ckpt.heads, site, tp, args.sample_rate) for tp in ("last", "all")]
    payload = {"backbone": ckpt.backbone, "ratio": rows[0]["ratio"], "runs": rows,
               "command": command_line(), "machine": machine()}
    lines = [f"Record-level DP-SGD step vs the same step without DP ({ckpt.backbone}, cached trunk features, "
             f"{rows[0]['records']} records, Poisson rate {args.sample_rate}).", "",
             "| trained parameters | DP step (ms) | non-DP step (ms) | ratio |", "|---|---|---|---|"]
    lines += [f"| {r['train_params']} | {1000 * r['dp_step_s']:.1f} | {1000 * r['plain_step_s']:.1f} | {r['ratio']}x |" for r in rows]
    lines += ["", f"Command: `{payload['command']}`."]
    write("dp_step", payload, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
