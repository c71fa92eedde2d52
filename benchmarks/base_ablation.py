"""What costs the base model its R1: the project's pretraining choices against a simple reference, on val.

    python benchmarks/base_ablation.py [--data DIR] [--seed 0]

The reference recipe (an independent 60-line script on the same frozen towers):
EfficientNet-Lite0 at 256x128 with mean+max pooling of the last map (2,560-d),
MiniLM mean pooling; heads Linear(d, 512) -> GELU -> Linear(512, 256) without
LayerNorm; symmetric identity-aware InfoNCE at tau 0.05; AdamW 1e-3, wd 1e-4,
batches of 128 pairs, 30 epochs, the last kept. Naive fine-tuning: same loss with
diagonal targets, 15 epochs at 3e-4, from the source heads.

Each variant changes the reference in one place (or is the project's former
default), pretrains on each source domain's train split and reports in-domain
*val* R1, plus naive pair fine-tuning flat->outline and flat->shaded on the
target val split (trained on the target train split without labels). No test
split is read. Features come from the project's feature cache: the 256x128
mean+max features hold the mean-pooled ones as their first half (exactly), and
the 192x96 mean-pooled features are a second backbone configuration.

Writes benchmarks/results/base_ablation.json and .md.
"""

from __future__ import annotations

import argparse
import copy
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from bench_utils import command_line, ensure_data, features, machine, write

from common.metrics.fast_eval import evaluate_embeddings

DOMAINS = ("flat", "outline", "shaded")


@dataclass(frozen=True)
class Variant:
    size: tuple[int, int] = (256, 128)
    pool: str = "meanmax"  # mean | meanmax
    input_norm: bool = False
    hidden_norm: bool = False
    loss: str = "infonce_id"  # infonce_id | sdm_id (SDM + identity classifier, the old default)
    tau: float = 0.05
    epochs: int = 30
    select: str = "last"  # last | val (best val R1 with cosine schedule, the old default)
    cosine: bool = False
    lr: float = 1e-3
    batch: int = 128


VARIANTS: dict[str, Variant] = {
    "reference": Variant(),
    "res_192x96": Variant(size=(192, 96)),
    "pool_mean": Variant(pool="mean"),
    "input_layernorm": Variant(input_norm=True),
    "hidden_layernorm": Variant(hidden_norm=True),
    "loss_sdm_id": Variant(loss="sdm_id"),
    "tau_0.02": Variant(tau=0.02),
    "tau_0.1": Variant(tau=0.1),
    "cosine_last": Variant(cosine=True),
    "epochs_60_cosine": Variant(epochs=60, cosine=True),
    "old_default": Variant(size=(192, 96), pool="mean", input_norm=True, hidden_norm=True, loss="sdm_id", epochs=40,
                           select="val", cosine=True),
    "res_192x96_mean": Variant(size=(192, 96), pool="mean"),
    "pool_mean+hidden_layernorm": Variant(pool="mean", hidden_norm=True),
    "pool_mean+input_layernorm": Variant(pool="mean", input_norm=True),
}
QUICK = ("reference", "pool_mean", "res_192x96_mean", "input_layernorm", "hidden_layernorm", "loss_sdm_id", "tau_0.02",
         "cosine_last", "old_default")


class Head(nn.Module):
    def __init__(self, d: int, input_norm: bool, hidden_norm: bool):
        super().__init__()
        mods: list[nn.Module] = [nn.LayerNorm(d)] if input_norm else []
        mods += [nn.Linear(d, 512)] + ([nn.LayerNorm(512)] if hidden_norm else []) + [nn.GELU(), nn.Linear(512, 256)]
        self.net = nn.Sequential(*mods)

    def forward(self, x):
        return F.normalize(self.net(x), dim=-1)


def backbone_for(size: tuple[int, int]):
    """(256, 128): mean+max features (their first half is the mean); (192, 96): the former mean-pooled configuration."""
    from common.models.backbones import Backbone
    from common.models.image_towers import effnet_lite0
    from common.models.text_towers import minilm_text
    pool = "meanmax" if size == (256, 128) else "mean"
    return Backbone("minilm-effnet", "minilm-effnet", minilm_text(), effnet_lite0(size, pool=pool))


def image_feats(feats: torch.Tensor, size: tuple[int, int], pool: str) -> torch.Tensor:
    if size == (256, 128):
        return feats if pool == "meanmax" else feats[:, : feats.shape[1] // 2]
    if pool != "mean":
        raise ValueError("the 192x96 configuration is mean-pooled only")
    return feats


def id_infonce(t, v, tp, vp, tau, diag=False):
    sim = t @ v.t() / tau
    y = torch.eye(len(t)) if diag else (tp[:, None] == vp[None, :]).float()
    return -(y / y.sum(1, keepdim=True) * F.log_softmax(sim, 1)).sum(1).mean() - (
        y.t() / y.t().sum(1, keepdim=True) * F.log_softmax(sim.t(), 1)).sum(1).mean()


def sdm_id(t, v, tp, vp, tau, clf):
    from common.losses.sdm import sdm_loss
    return sdm_loss(t, v, tp, vp, tau) + 0.5 * (F.cross_entropy(clf(t), tp) + F.cross_entropy(clf(v), vp))


def evaluate(th, ih, d) -> float:
    with torch.no_grad():
        return evaluate_embeddings(th(d["text"]), ih(d["image"]), d["tpid"], d["ipid"])["R1"]


def train(var: Variant, tr: dict, va: dict | None, seed: int, init=None, diag=False, epochs=None, lr=None):
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    if init is None:
        th = Head(tr["text"].shape[1], var.input_norm, var.hidden_norm)
        ih = Head(tr["image"].shape[1], var.input_norm, var.hidden_norm)
    else:
        th, ih = copy.deepcopy(init)
    params = list(th.parameters()) + list(ih.parameters())
    clf = None
    if var.loss == "sdm_id" and not diag:
        uniq, dense = torch.unique(tr["tpid"], return_inverse=True)
        clf = nn.Linear(256, len(uniq))
        nn.init.normal_(clf.weight, std=0.001)
        params += list(clf.parameters())
    epochs = epochs or var.epochs
    opt = torch.optim.AdamW(params, lr=lr or var.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs) if var.cosine else None
    n = len(tr["text"])
    best, best_state = -1.0, None
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        for s in range(0, n - 1, var.batch):
            idx = perm[s:s + var.batch]
            if len(idx) < 2:
                continue
            t, v = th(tr["text"][idx]), ih(tr["image"][tr["t2i"][idx]])
            tp = tr["tpid"][idx]
            if clf is not None:
                tp = dense[idx]
                loss = sdm_id(t, v, tp, tp, var.tau, clf)
            else:
                loss = id_infonce(t, v, tp, tp, var.tau, diag=diag)
            opt.zero_grad()
            loss.backward()
            opt.step()
        if sched:
            sched.step()
        if var.select == "val" and va is not None:
            r1 = evaluate(th, ih, va)
            if r1 > best:
                best, best_state = r1, copy.deepcopy((th.state_dict(), ih.state_dict()))
    if best_state is not None:
        th.load_state_dict(best_state[0])
        ih.load_state_dict(best_state[1])
    return th, ih


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("data/embedded"))
    ap.add_argument("--cache", type=Path, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variants", nargs="*", default=list(QUICK))
    ap.add_argument("--domains", nargs="*", default=list(DOMAINS), help="source domains to pretrain on (in-domain val)")
    ap.add_argument("--targets", nargs="*", default=["outline", "shaded"], help="naive fine-tuning flat->TARGET")
    ap.add_argument("--name", default="base_ablation", help="results file stem")
    args = ap.parse_args()
    data = ensure_data(args.data)
    t0 = time.perf_counter()
    torch.set_num_threads(1)  # small matmuls: one thread is as fast and does not stall on a busy machine
    sizes = sorted({VARIANTS[v].size for v in args.variants})
    sets: dict = {}
    needed = sorted(set(args.domains) | set(args.targets) | ({"flat"} if args.targets else set()))
    for size in sizes:
        bb = backbone_for(size)
        for dom in needed:
            for split in ("train", "val"):
                fs = features(bb, data, dom, split, args.cache)
                s = sets.setdefault((dom, split), {"text": fs.text_feats, "t2i": fs.text_to_image, "tpid": fs.text_pids,
                                                   "ipid": fs.image_pids, "maps": {}})
                s["maps"][size] = fs.image_feats
                print(f"features {dom}/{split} at {size}: {tuple(fs.image_feats.shape)}", flush=True)
    rows: dict = {}
    for name in args.variants:
        var = VARIANTS[name]

        def view(dom, split, labels=True):
            s = sets[dom, split]
            return {"text": s["text"], "t2i": s["t2i"], "tpid": s["tpid"] if labels else torch.arange(len(s["text"])),
                    "ipid": s["ipid"], "image": image_feats(s["maps"][var.size], var.size, var.pool)}

        row, teachers = {}, {}
        for dom in sorted(set(args.domains) | ({"flat"} if args.targets else set())):
            th, ih = train(var, view(dom, "train"), view(dom, "val"), args.seed)
            teachers[dom] = (th, ih)
            row[f"{dom}->{dom}"] = round(evaluate(th, ih, view(dom, "val")), 2)
        for tgt in args.targets:
            row[f"flat->{tgt} direct"] = round(evaluate(*teachers["flat"], view(tgt, "val")), 2)
            tr = view(tgt, "train", labels=False)
            th, ih = train(replace(var, select="last", cosine=False), tr, None, args.seed, init=teachers["flat"],
                           diag=True, epochs=15, lr=3e-4)
            row[f"flat->{tgt} naive"] = round(evaluate(th, ih, view(tgt, "val")), 2)
        rows[name] = {"variant": var.__dict__, "val_R1": row}
        print(name, row, flush=True)
    cols = list(next(iter(rows.values()))["val_R1"])
    lines = ["Val R1 of each base variant (one change from the reference recipe; `old_default` is the project's former base).",
             "", "| variant | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    lines += [f"| {n} | " + " | ".join(f"{r['val_R1'][c]:.1f}" for c in cols) + " |" for n, r in rows.items()]
    payload = {"rows": rows, "split": "val", "seed": args.seed, "command": command_line(), "machine": machine(),
               "seconds": round(time.perf_counter() - t0, 1)}
    lines += ["", f"Command: `{payload['command']}`; {payload['seconds']} s."]
    write(args.name, payload, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
