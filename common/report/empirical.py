"""Empirical privacy audit in one training run: canaries at one site, membership guesses, a lower bound.

Procedure (Steinke, Nasr & Jagielski 2023; the bound is in `one_run`):
1. build ``m`` canary records (`canaries.make_canaries`) and flip a secret
   fair coin per canary with the OS's randomness (``secrets``): heads, the
   canary joins the site's training data; tails, it does not;
2. train with the real record-level code path, ``run_local_round`` with
   ``privacy=record`` (DP k-means prototypes over the site's records, GMP
   targets, per-record CMKD, Opacus DP-SGD with Poisson sampling; or, with
   ``mode=grouped``, the group-clipped path, where canaries enter groups like
   any other record; with ``train-params=lowrank:R`` each round attaches
   rank-R adapters on bases the server would compute from the public bank,
   trains their B's and folds ``W += B A``, as a one-site federation does),
   for the given rounds, starting from the teacher's heads as a first federated round
   does. "Without DP" is the same path with noise multiplier 0;
3. score every canary (`canaries`: by default the white-box update score,
   which the server could compute from the site's update; or a black-box
   pair-similarity score), guess "in" for the top k and "out" for the
   bottom k, count correct guesses and
   turn them into ``epsilon_lower_bound`` at 95% confidence
   (`one_run.best_bound`, Bonferroni over a fixed list of k).

What it audits: the record-level mechanism of one site (add/remove one canary
record; every other record fixed), i.e. the DP k-means releases and the
DP-SGD steps that the canaries enter. ``accounted_epsilon`` is the Opacus RDP
epsilon of exactly the history this training ran, at the same delta. A
lower bound above it would mean the accounting (or the implementation) is
wrong; a lower bound far below it is expected: one-run audits with a few
hundred canaries are loose.
"""

from __future__ import annotations

import copy
import math
import secrets
import time
from dataclasses import asdict, dataclass, field
from typing import Sequence

import torch

from common.federation import adapters as wire
from common.federation.config import FedConfig
from common.federation.local_round import adapt_config, run_local_round
from common.models.feature_cache import FeatureSet
from common.models.heads import DualHeads
from common.models.low_rank import merge_low_rank, trained_numbers
from common.privacy.accounting import AccountingError, compute_epsilon, merge_history
from common.privacy.ledger import NEIGHBOURING
from common.report import one_run
from common.report.canaries import SCORES, low_rank_views, make_canaries, pair_scores, update_scores, with_records

METHOD = "one-run canary audit (Steinke, Nasr & Jagielski, NeurIPS 2023, arXiv:2305.08846)"
STATEMENT = ("If training is (eps, delta)-DP then P[W >= v] <= f(v) + 2 m delta max_{1<=i<=v} (f(v-i) - f(v)) / i, "
             "with W the number of correct guesses among r, f(v) = P[Binomial(r, e^eps/(1+e^eps)) >= v] and m "
             "canaries each included by an independent fair coin (the paper's main result for approximate DP, "
             "computed as in its Appendix D). The lower bound is the largest eps for which the "
             "observed v has p-value < beta/len(k tried) (Bonferroni), i.e. 95% confidence overall.")
SCORE_TEXT = {
    "update": "white-box: the canary's unit per-record gradient at the starting student projected on the site's "
              "update (start - end), after removing the canaries' top shared gradient directions",
    "pair": "black-box: gain of the canary's image-caption cosine similarity relative to the other canaries' captions",
}
LOW_RANK_SCORE = ("; lowrank:R: in the adapters' space (gradients with respect to the first round's B's, the update "
                  "(W_start - W_end) A^T, i.e. -B after one round)")


@dataclass
class CanaryAuditConfig:
    canaries: int = 256  # m: the bound tightens with m; a few hundred keeps the audit to seconds on heads
    ks: tuple[int, ...] = ()  # guesses "in" (and "out") per side; () = 5/10/25/50% of m, fixed in advance
    beta: float = one_run.BETA  # 1 - confidence of the lower bound
    score: str = "update"  # "update" (white-box, what the server sees) or "pair" (black-box); see canaries.py
    seed: int = 0  # canary features and the data-order seed only; coins, DP noise and Poisson sampling use OS randomness


@dataclass
class EmpiricalAudit:
    epsilon_lower_bound: float  # at confidence 1 - beta; 0.0 = nothing detected
    accounted_epsilon: float  # Opacus RDP epsilon of the audited training's own history (inf without noise)
    delta: float
    unit: str
    neighbouring: str
    canaries: int
    included: int
    site_records: int  # the site's real records (canaries not counted)
    guesses: list[dict]
    training: dict  # the mechanism's parameters: noise per round, sample rate, steps, clip norm, ...
    history: list[list]  # (noise_multiplier, sample_rate, steps) entries of the audited training
    scores: list[float]
    coins: list[bool]  # revealed after training; the canaries are synthetic
    confidence: float  # 1 - beta
    beta: float
    wall_s: float
    accountant: str = "rdp"
    method: str = METHOD
    statement: str = STATEMENT
    score: str = "update"
    score_definition: str = ""
    source: dict = field(default_factory=dict)  # what was audited (data, target, teacher, run) when known

    @property
    def within_accounting(self) -> bool:
        return self.epsilon_lower_bound <= self.accounted_epsilon

    def to_dict(self) -> dict:
        """JSON-ready (strict JSON: an infinite accounted epsilon becomes null plus ``accounted_infinite``)."""
        d = asdict(self)
        d["within_accounting"] = self.within_accounting
        d["accounted_infinite"] = math.isinf(self.accounted_epsilon)
        if d["accounted_infinite"]:
            d["accounted_epsilon"] = None
        return d


def run_canary_audit(teacher: DualHeads, site: FeatureSet, anchor_images: torch.Tensor, anchor_texts: torch.Tensor,
                     names: list[str], fed: FedConfig, noise_per_round: Sequence[float],
                     audit: CanaryAuditConfig | None = None, bank=None) -> EmpiricalAudit:
    """Audit one site's record-level training (one `run_local_round` per entry of ``noise_per_round``).

    ``names``: the student the server holds (`broadcast_names`). With ``train-params=lowrank:R``, ``bank`` (the
    public `PublicBank`) is required: each round's adapter bases are computed from it as the server does."""
    audit = audit or CanaryAuditConfig()
    if audit.score not in SCORES:
        raise ValueError(f"score must be one of {SCORES}, got {audit.score!r}")
    # grouped mode keeps its groups: a canary enters a group like any other record (its key is its own)
    fed = fed.replace(privacy="record", mode="grouped" if fed.mode == "grouped" else "per-record").validate()
    if not noise_per_round:
        raise ValueError("noise_per_round must name at least one round")
    t0 = time.perf_counter()
    site = site.without_labels()
    canaries = make_canaries(site, audit.canaries, torch.Generator().manual_seed(audit.seed))
    coin = secrets.SystemRandom()
    coins = [coin.random() < 0.5 for _ in range(audit.canaries)]
    inside = torch.tensor([i for i, c in enumerate(coins) if c], dtype=torch.long)
    train_set = with_records(site, canaries.select_images(inside))
    rank = wire.rank_of(fed.train_params)
    if rank is not None and bank is None:
        raise ValueError(f"train-params={fed.train_params!r}: the audit needs the public bank to compute the bases")
    start = copy.deepcopy(teacher)  # what a first federated round starts from (public)
    student = copy.deepcopy(start)
    spends, first_bases, trained = [], None, 0
    for r, sigma in enumerate(noise_per_round):
        work, round_names = student, names
        if rank is not None:  # the server's bases for this round's broadcast student, attached as a site attaches them
            bases = wire.unpack_bases(wire.round_bases(student.eval(), bank.image_feats, bank.text_feats, rank),
                                      student, rank)
            first_bases = first_bases or bases
            work = copy.deepcopy(student)
            round_names = wire.attach(work, bases, fed.train_params)
        res = run_local_round(work, teacher, anchor_images, anchor_texts, train_set, round_names, fed, float(sigma),
                              seed=audit.seed + r)
        trained = trained_numbers(work)
        student = merge_low_rank(work)  # W += B A: the server's fold of one site's reply (plain heads: unchanged)
        spends += res.spends
    acfg = adapt_config(fed.replace(mode="per-record"), audit.seed)  # a canary's own gradient
    if audit.score == "pair":
        scores = pair_scores(start, student, canaries).tolist()
    elif rank is not None:
        start_view, end_view, view_names = low_rank_views(start, student, first_bases, fed.train_params)
        scores = update_scores(start_view, end_view, teacher, canaries, anchor_images, anchor_texts, view_names,
                               acfg).tolist()
    else:
        scores = update_scores(start, student, teacher, canaries, anchor_images, anchor_texts, names, acfg).tolist()
    history = merge_history([s.entry() for s in spends])
    try:
        accounted = compute_epsilon(history, fed.delta, "rdp").epsilon
    except AccountingError:
        accounted = float("inf")
    lower, outcomes = one_run.best_bound(scores, coins, fed.delta, audit.ks or None, audit.beta)
    training = {"rounds": len(noise_per_round), "noise_multiplier": [float(s) for s in noise_per_round],
                "sample_rate": fed.sample_rate, "steps_per_round": fed.local_steps, "clip_norm": fed.clip_norm,
                "lr": fed.lr, "train_params": fed.train_params, "prototypes": fed.prototypes,
                "prototype_iters": fed.prototype_iters, "prototype_noise": fed.prototype_noise_multiplier(),
                "mechanisms": sorted({s.mechanism for s in spends}), "trained_numbers": trained}
    return EmpiricalAudit(
        epsilon_lower_bound=lower, accounted_epsilon=accounted, delta=fed.delta, unit="record",
        neighbouring=NEIGHBOURING["record"], canaries=audit.canaries, included=len(inside),
        site_records=site.n_images, guesses=[asdict(o) for o in outcomes], training=training,
        history=[list(e) for e in history], scores=[float(s) for s in scores], coins=coins,
        confidence=1 - audit.beta, beta=audit.beta, wall_s=round(time.perf_counter() - t0, 2), score=audit.score,
        score_definition=SCORE_TEXT[audit.score] + (LOW_RANK_SCORE if rank is not None and audit.score == "update" else ""))
