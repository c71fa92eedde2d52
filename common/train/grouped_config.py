"""What a `grouped` adaptation run does (`GroupedConfig`, every default with its reason) and its privacy plan.

`grouped` mode is GCKD's in-site contrast under record-level DP by group
clipping (docs/privacy.md, section 4): see `common.train.grouped_adapt` for
the schedule, `common.train.grouped_dp` for the step and its ``Delta = 2C``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from common.privacy.noise_calibration import plan_record_level, prototype_noise_for


@dataclass
class GroupedConfig:
    expected_batch: int = 1024  # records per step on average: the Poisson rate is expected_batch / records (at most
    # max_rate). At a fixed epsilon a larger batch gives a better signal-to-noise ratio per step (the noise on the
    # mean shrinks like z / groups and z grows slower than the rate): at 18,000 records and epsilon 8 the run's
    # noise-to-largest-signal ratio (2z sqrt(d) / groups / sqrt(steps), d = 262k) is 0.66 at 512, 0.44 at 1,024,
    # 0.35 at 2,048 (160 steps). Without noise 512 and 1,024 scored the same (val R1 40.2, groups of 48, 1,800 records)
    max_rate: float = 0.5  # cap on the rate, so that small sites still get many distinct batches
    group_size: int = 16  # target mean group size (sets the public number of bins). In-group contrast needs members:
    # without noise, val R1 (flat->outline, 1,800 records, one run each) with hashed sub-bins was 29.2 / 36.3 / 40.2
    # for groups of about 8 / 24 / 48, with hyperplane sub-bins 35.3 / 40.4 / 41.5 for 8 / 16 / 32. Under noise every
    # group's clipped gradient carries at most C, so smaller groups give more signal per step: 16 keeps nearly all of
    # 32's score with twice the groups (DP-GCL and the issue's outside probe used 8)
    bins: int | None = None  # sub-bins in every prototype cell (public); None: per cell, from the release's noisy
    # counts (a cell's expected sampled records / group_size), so that groups stay near the target size
    sub_bin: str = "lsh"  # how a prototype cell is split: "hash" (a keyed hash of the record: random group-mates,
    # new ones every step) or "lsh" (random hyperplanes through the prototype, new every step: group-mates with
    # similar caption views, so a person's other photos tend to share the group as pseudo-positives). Without
    # noise, with the other defaults: val R1 36.8 hash, 41.5 lsh (flat->outline, 1,800 records, one run each)
    max_group: int = 48  # most members a group trains on in one step (the rest of an over-full group sit the step
    # out, chosen by a keyed hash: still a function of the group alone). Every group is padded to the largest one, so
    # a rare huge group costs the whole step; 3x the target size drops few records
    prototypes: int = 16  # DP k-means prototypes of the records' teacher caption views: the first part of the group
    # key (records that share a prototype are likely neighbours) and public nodes of the in-group GMP. Few, so that a
    # cell holds enough records for groups and each prototype has members above its release noise at 1,800 records
    prototype_iters: int = 2  # noisy Lloyd iterations per release (each one is a Gaussian mechanism in the accountant)
    prototype_noise: float | None = None  # noise multiplier of each release; None: 4.0 without a target epsilon, or
    # the value at which the run's releases cost `prototype_budget_share` of it
    prototype_budget_share: float = 0.2  # share of a target epsilon the prototype releases may cost (as the federation)
    steps: int | None = None  # DP-SGD steps per teacher round; None: size-aware (`steps_per_round`), the fewest that
    # make `passes` expected passes over the site, at least `min_steps`. A fixed count is a different schedule at every
    # size: 80 steps (the outside probe) are 40 passes at 1,800 records but 4.6 at 18,000, where (val R1 at
    # epsilon 8, flat->outline, seeds 0/1/2) 2 x 80 steps scored 12.8, 2 x 400 (23 passes) 22.7, and 2 x 800 18.9
    # (seed 0; 2 x 352 steps 20.5, seed 0): the noise grows with the steps, so the best count is finite. At 1,800
    # records more passes did not help (docs/grouped.md)
    passes: float = 23.0  # expected passes over the site per teacher round when `steps` is None: the measured 2 x 400
    # steps at 18,000 records (2 x 405 here); below `min_steps`' 40 passes at 1,800 records, where the floor keeps 80
    min_steps: int = 80  # fewest steps per round when `steps` is None: the fixed default the small sites were tuned on
    clip_norm: float = 1.0  # per-group gradient bound C; Delta = 2C. Group losses of unit-norm embeddings have
    # gradients far above 1, so the clip always binds and only the direction of each group's gradient counts
    noise_multiplier: float = 0.0  # z: noise std z * 2C. 0 = no noise (then the run claims no epsilon); the
    # command line derives it from --epsilon over every step, round and release (`plan_grouped`)
    optimizer: str = "adam"  # Adam on the released (noisy) gradients: post-processing. Its per-coordinate step size
    # does not shrink with the noise, which plain SGD needs tuning per epsilon for
    lr: float = 2e-3  # Adam step size; without noise (groups of 48) 2e-3 scored 40.2 val R1, 5e-3 36.7
    train_params: str = "all"  # which head parameters train (`common.federation.trainable`: last, all,
    # norms+biases or name prefixes); both heads train. Without noise "all" 40.2 val R1, "last" 27.2 (groups of 48);
    # under noise fewer trained numbers mean less noise (sqrt(d)): the outside probe trained "last".
    # "lowrank:R" ("lowrank:R+biases"): each round, rank-R adapters W + B A on every Linear of both heads, A the top-R
    # principal directions of the layer's input on the PUBLIC anchor bank (frozen), only B trains (FFA-LoRA style;
    # `common.models.low_rank`); merged back into plain heads at the round's end. With minilm-effnet heads (hidden 512,
    # out 256) lowrank:8 trains 12,288 numbers (+1,536 biases) against 1,115,648 for "all". Not yet measured on val
    neighbours: int = 1  # a group member's nearest group-mates (by the refined mean caption) that may become mutual
    # pseudo-positives. Inside a group of ~14 the mutual 2-nearest are the same person 33% of the time, the mutual
    # nearest 53% (train-split labels, diagnosis only); without noise val R1 42.8 with 2, 46.8 with 1 (flat->outline,
    # seed 0; docs/grouped.md "What holds the no-noise ceiling down")
    pseudo_positives: bool = True  # mutual neighbours in a group share the own pair's target mass (full mode's rule)
    positive_min_sim: float | None = None  # pseudo-positives also need at least this cosine between the two records'
    # refined caption views (None: no floor)
    clipping: str = "auto"  # "auto": book-keeping ghost clipping (one backward pass), "opacus": Opacus' ghost clipping


def sample_rate(cfg: GroupedConfig, records: int) -> float:
    """The Poisson rate q: public (the record count is treated as public, as in Opacus)."""
    if records < 1:
        raise ValueError("a site with no records cannot train")
    return min(cfg.max_rate, cfg.expected_batch / records, 1.0)


def steps_per_round(cfg: GroupedConfig, records: int) -> int:
    """DP-SGD steps per teacher round: ``cfg.steps``, or (None) ``max(min_steps, ceil(passes / q))``. Public: it
    reads only the record count, as the rate does."""
    if cfg.steps is not None:
        return cfg.steps
    return max(cfg.min_steps, math.ceil(cfg.passes / sample_rate(cfg, records) - 1e-9))


def with_steps(cfg: GroupedConfig, records: int) -> GroupedConfig:
    """The config with its step count fixed for a site of ``records`` records (what the run uses and logs)."""
    return replace(cfg, steps=steps_per_round(cfg, records))


def normaliser(cfg: GroupedConfig, records: int) -> float:
    """The public constant each step's noisy sum is divided by: the expected number of groups of target size."""
    return max(1.0, sample_rate(cfg, records) * records / cfg.group_size)


@dataclass(frozen=True)
class GroupedPlan:
    noise_multiplier: float  # z of every DP-SGD step
    prototype_noise: float
    sample_rate: float
    steps: int  # DP-SGD steps over all rounds
    releases: int  # prototype iterations over all rounds
    epsilon: float  # planned, <= the target
    delta: float
    history: list  # the planned accountant history


def plan_grouped(cfg: GroupedConfig, records: int, rounds: int, target_epsilon: float, delta: float,
                 accountant: str = "rdp") -> GroupedPlan:
    """Noise for a whole grouped run (every round's prototype releases and DP-SGD steps) within ``target_epsilon``."""
    cfg, q = with_steps(cfg, records), sample_rate(cfg, records)
    releases = rounds * cfg.prototype_iters if cfg.prototypes > 0 else 0
    z_p = cfg.prototype_noise
    if z_p is None:
        z_p = prototype_noise_for(cfg.prototype_budget_share * target_epsilon, delta, releases, accountant) if releases else 0.0
    plan = plan_record_level(target_epsilon, delta, rounds, cfg.steps, q, releases // rounds if releases else 0, z_p,
                             accountant)
    return GroupedPlan(plan.dp_sgd_noise_multiplier, z_p, q, rounds * cfg.steps, releases, plan.projected_epsilon,
                       delta, plan.planned_history)
