"""Emulated record-level DP federations: what limits DP-SGD at sites of a couple of hundred records.

    python benchmarks/dp_emulation.py [--data DIR] [--source flat] [--target outline] [--sites 10] [--jobs 2]

A FedAvg loop in one process, without Flower, over the same per-record pieces
the federation runs (`build_site_context`, `refine`, `RecordLoss`,
`train_record_level`): the target's train split dealt out IID to equal sites,
the teacher fixed, no DP prototypes, each site's update scaled to twice the
broadcast's norm (as `client/task.py` does). Every setting is one run (fresh
DP noise); R1 and mAP on the target **val** split, the split on which the
federation's step size was chosen (the test split is for
benchmarks/federated.py). Settings, each against the epsilon-8 plan of
10 rounds x 20 steps at rate 0.25 (delta 1e-5, RDP):

- `last`: the shipped trained set (image head's last Linear) at lr 0.1 and
  0.01, and without noise (lr 2) for its ceiling;
- `norms+biases` and `rank16` (a rank-16 update in the top principal
  directions of the teacher's hidden activations on public source images):
  fewer trained numbers, less noise, less capacity;
- `distributed`: one local step per round for 200 rounds with each site
  adding 1/sqrt(sites) of the noise, which is what secure aggregation would
  allow (the sum of the sites' noise then has the planned multiplier on the
  union of their batches); `fedsgd` is the same schedule with each site
  adding all of it. Not implemented in the federation: it needs Flower's
  SecAgg+ and a trust model in which the server sees only the sum.

Writes benchmarks/results/dp_emulation.json and dp_emulation.md.
"""

from __future__ import annotations

import argparse
import copy
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from bench_utils import command_line, ensure_data, features, machine, write
from torch import nn

from common.checkpoint import load_checkpoint
from common.federation.trainable import set_trainable, trainable_for_mode
from common.losses.cmkd import CMKDConfig
from common.models.backbones import build_backbone
from common.privacy.noise_calibration import plan_record_level
from common.train.adapt import AdaptConfig, refine
from common.train.pretrain import evaluate_heads
from common.train.record_level_dp import RecordLevelConfig, train_record_level
from common.train.record_pack import RecordLoss, RecordPack, pack_texts, teacher_targets
from common.train.site_context import PublicBank, build_site_context

SETTINGS = {  # name: (train set, lr, epsilon or 0 for no noise, rounds, local steps, share of the noise each site adds)
    "last_lr0.1": ("last", 0.1, 8.0, 10, 20, "all"),
    "last_lr0.01": ("last", 0.01, 8.0, 10, 20, "all"),
    "last_no_noise": ("last", 2.0, 0.0, 10, 20, "all"),
    "norms+biases": ("norms+biases", 0.5, 8.0, 10, 20, "all"),
    "norms+biases_no_noise": ("norms+biases", 5.0, 0.0, 10, 20, "all"),
    "rank16": ("rank16", 0.5, 8.0, 10, 20, "all"),
    "rank16_no_noise": ("rank16", 2.0, 0.0, 10, 20, "all"),
    "fedsgd": ("last", 0.5, 8.0, 200, 1, "all"),
    "distributed": ("last", 1.0, 8.0, 200, 1, "sqrt"),
}
SAMPLE_RATE, DELTA, UPDATE_BOUND = 0.25, 1e-5, 2.0


class SubspaceLinear(nn.Module):
    """A frozen Linear plus a trainable update B @ A, A a fixed public basis; `fold` writes it back."""

    def __init__(self, base: nn.Linear, basis: torch.Tensor):
        super().__init__()
        self.base = base.requires_grad_(False)
        self.A = nn.Linear(basis.shape[1], basis.shape[0], bias=False).requires_grad_(False)
        self.A.weight.data.copy_(basis)
        self.B = nn.Linear(basis.shape[0], base.out_features)
        nn.init.zeros_(self.B.weight), nn.init.zeros_(self.B.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.base(h) + self.B(self.A(h))

    @torch.no_grad()
    def fold(self) -> nn.Linear:
        self.base.weight += self.B.weight @ self.A.weight
        self.base.bias += self.B.bias
        return self.base


def load(args):
    bb = build_backbone("minilm-effnet")
    src = features(bb, args.data, args.source, "train", None)
    tgt = features(bb, args.data, args.target, "train", None, labels=False)
    val = features(bb, args.data, args.target, "val", None)
    return load_checkpoint(args.teacher).heads, src, tgt, val


def run_setting(args, name: str) -> dict:
    torch.set_num_threads(1)
    spec, lr, eps, rounds, steps, share = SETTINGS[name]
    teacher, src, tgt, val = load(args)
    return emulate(teacher, src, tgt, val, args.sites, spec, lr, eps, rounds, steps, share)


def emulate(teacher, src, tgt, val, n_sites: int, spec: str, lr: float, eps: float, rounds: int, steps: int,
            share: str = "all", sample_rate: float = SAMPLE_RATE, return_heads: bool = False):
    """One emulated record-level FedAvg run: `tgt` dealt out IID to `n_sites` sites; R1/mAP on `val`
    (with `return_heads`, also the final global heads)."""
    bank = PublicBank.from_source(src, 1024, seed=0)
    acfg = AdaptConfig(mode="per_record", prototypes=0)
    sigma = plan_record_level(eps, DELTA, rounds, steps, sample_rate).dp_sgd_noise_multiplier if eps else 0.0
    site_sigma = sigma / n_sites ** 0.5 if share == "sqrt" else sigma
    parts = torch.randperm(len(tgt.image_feats), generator=torch.Generator().manual_seed(0)).chunk(n_sites)
    sites = []
    for idx in parts:
        fs = tgt.select_images(idx.sort().values)
        ctx = build_site_context(teacher, fs, bank, acfg, torch.Generator().manual_seed(0))
        r_img, r_txt = refine(teacher, fs, ctx, acfg)
        pack = RecordPack.from_features(fs)
        sites.append((pack, teacher_targets(r_img, pack_texts(r_txt, fs.text_to_image, pack)), ctx))
    glob = copy.deepcopy(teacher)
    names = trainable_for_mode(glob, "last" if spec == "rank16" else spec, "per_record")
    basis = None
    if spec == "rank16":  # public: the teacher's hidden image activations on source images
        with torch.no_grad():
            pick = torch.randperm(len(src.image_feats), generator=torch.Generator().manual_seed(0))[:1024]
            hidden = teacher.image_head.net[:-1](src.image_feats[pick].float())
        basis = torch.linalg.svd(hidden, full_matrices=False)[2][:16].contiguous()
    start = evaluate_heads(glob, val)
    gen = torch.Generator().manual_seed(torch.seed())
    for _ in range(rounds):
        ref = {n: p.detach().clone() for n, p in glob.named_parameters() if n in names}
        bound = UPDATE_BOUND * torch.sqrt(sum((v ** 2).sum() for v in ref.values()))
        updates = []
        for pack, targets, ctx in sites:
            st = copy.deepcopy(glob)
            set_trainable(st, names)
            if basis is not None:
                st.image_head.net[-1] = SubspaceLinear(st.image_head.net[-1], basis)
            crit = RecordLoss(ctx.public_images(), ctx.public_texts(), CMKDConfig(), teacher.cfg.out_dim)
            st.train()
            train_record_level(st, pack, targets, crit, RecordLevelConfig(noise_multiplier=site_sigma, clip_norm=1.0,
                               sample_rate=sample_rate, steps=steps, lr=lr), gen)
            if basis is not None:
                st.image_head.net[-1] = st.image_head.net[-1].fold()
            delta = {n: p.detach() - ref[n] for n, p in st.named_parameters() if n in names}
            norm = torch.sqrt(sum((v ** 2).sum() for v in delta.values()))
            updates.append({n: v * min(1.0, float(bound / norm)) for n, v in delta.items()})
        with torch.no_grad():
            for n, p in glob.named_parameters():
                if n in names:
                    p.copy_(ref[n] + torch.stack([u[n] for u in updates]).mean(0))
    glob.eval()
    end = evaluate_heads(glob, val)
    out_dim = teacher.cfg.out_dim
    numbers = sum(p.numel() for n, p in glob.named_parameters() if n in names) if basis is None else (len(basis) + 1) * out_dim
    res = {"train_set": spec, "lr": lr, "epsilon": eps, "rounds": rounds, "local_steps": steps,
           "site_noise_multiplier": round(site_sigma, 4), "planned_noise_multiplier": round(sigma, 4),
           "noise_share": share, "trained_numbers": numbers, "records_per_site": len(tgt.image_feats) // n_sites,
           "val_R1_start": round(start["R1"], 2), "val_R1": round(end["R1"], 2), "val_mAP": round(end["mAP"], 2)}
    return (res, glob) if return_heads else res


def diagnose(args) -> dict:
    """Why the noise wins: per-record gradient norms at the teacher, the norm of the mean clipped gradient, the
    share of the mean gradient's energy in the rank-16 public basis, and sqrt(steps) * rate / sigma per rate."""
    from common.train.bookkeeping_clip import BookkeepingClipper, clippable_layers
    from common.train.record_pack import PackedStudent

    torch.set_num_threads(1)
    teacher, src, tgt, _ = load(args)
    bank = PublicBank.from_source(src, 1024, seed=0)
    acfg = AdaptConfig(mode="per_record", prototypes=0)
    fs = tgt.select_images(torch.arange(min(400, len(tgt.image_feats))))
    ctx = build_site_context(teacher, fs, bank, acfg, torch.Generator().manual_seed(0))
    r_img, r_txt = refine(teacher, fs, ctx, acfg)
    pack = RecordPack.from_features(fs)
    st = copy.deepcopy(teacher)
    set_trainable(st, trainable_for_mode(st, "last", "per_record"))
    model = PackedStudent(st, pack.image.shape[1], pack.captions.shape[2], pack.captions.shape[1])
    clipper = BookkeepingClipper(clippable_layers(model, [p for p in st.parameters() if p.requires_grad]))
    crit = RecordLoss(ctx.public_images(), ctx.public_texts(), CMKDConfig(), teacher.cfg.out_dim, reduction="none")
    losses = crit(model(pack.inputs()), teacher_targets(r_img, pack_texts(r_txt, fs.text_to_image, pack)))
    clipped, norms = clipper.clipped_sum(losses, 1.0)
    raw, _ = clipper.clipped_sum(crit(model(pack.inputs()), teacher_targets(r_img, pack_texts(r_txt, fs.text_to_image, pack))), 1e12)
    clipper.close()
    weight = st.image_head.net[-1].weight
    with torch.no_grad():
        pick = torch.randperm(len(src.image_feats), generator=torch.Generator().manual_seed(0))[:1024]
        basis = torch.linalg.svd(teacher.image_head.net[:-1](src.image_feats[pick].float()), full_matrices=False)[2][:16]
    g = raw[weight] / len(losses)
    snr = {str(q): round(200 ** 0.5 * q / plan_record_level(8.0, DELTA, 10, 20, q).dp_sgd_noise_multiplier, 3)
           for q in (0.05, 0.1, 0.25, 0.5, 1.0)}
    return {"records": len(losses), "grad_norm_median": round(float(norms.median()), 2),
            "grad_norm_p10_p90": [round(float(torch.quantile(norms, q)), 2) for q in (0.1, 0.9)],
            "mean_clipped_grad_norm": round(float(torch.sqrt(sum((v ** 2).sum() for v in clipped.values())) / len(losses)), 3),
            "rank16_energy_share": round(float((g @ basis.T @ basis).norm() ** 2 / g.norm() ** 2), 3),
            "sqrt_steps_rate_over_sigma_eps8_200_steps": snr}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("data/embedded"))
    ap.add_argument("--source", default="flat")
    ap.add_argument("--target", default="outline")
    ap.add_argument("--teacher", type=Path, default=Path("runs/teachers/flat"), help="from benchmarks/direct_transfer.py")
    ap.add_argument("--sites", type=int, default=10)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--only", nargs="+", choices=list(SETTINGS))
    args = ap.parse_args()
    args.data = ensure_data(args.data)
    t0 = time.perf_counter()
    names = args.only or list(SETTINGS)
    with ProcessPoolExecutor(args.jobs) as pool:
        diag = pool.submit(diagnose, args)
        results = dict(zip(names, pool.map(run_setting, [args] * len(names), names)))
        diag = diag.result()
    payload = {"source": args.source, "target": args.target, "sites": args.sites, "split": "val", "delta": DELTA,
               "sample_rate": SAMPLE_RATE, "runs": results, "diagnosis": diag, "command": command_line(), "machine": machine(),
               "seconds": round(time.perf_counter() - t0, 1)}
    lines = [f"Emulated FedAvg, {args.source}→{args.target}, {args.sites} IID sites, teacher fixed, no prototypes; "
             f"target val split (start R1 {next(iter(results.values()))['val_R1_start']:.1f}).", "",
             "| setting | trained numbers | lr | rounds x steps | noise multiplier per site | val R1 | val mAP |",
             "|---|---|---|---|---|---|---|"]
    for k, r in results.items():
        lines.append(f"| {k} | {r['trained_numbers']:,} | {r['lr']} | {r['rounds']} x {r['local_steps']} | "
                     f"{r['site_noise_multiplier']} | {r['val_R1']:.1f} | {r['val_mAP']:.1f} |")
    lines += ["", f"At the teacher ({diag['records']} target records, `last`): per-record gradient norm median "
              f"{diag['grad_norm_median']} (10-90%: {diag['grad_norm_p10_p90'][0]}-{diag['grad_norm_p10_p90'][1]}), so clip 1 "
              f"binds for every record; mean clipped gradient norm {diag['mean_clipped_grad_norm']}; share of the mean "
              f"gradient's energy in the rank-16 public basis {diag['rank16_energy_share']:.0%}. sqrt(steps) x rate / sigma "
              "at epsilon 8 over 200 steps, by rate: " + ", ".join(f"{q}: {v}" for q, v in
                                                                     diag["sqrt_steps_rate_over_sigma_eps8_200_steps"].items()) + ".",
              "", f"Command: `{payload['command']}`; {payload['seconds']} s."]
    write("dp_emulation", payload, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
