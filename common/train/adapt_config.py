"""What a GCKD adaptation run does: `AdaptConfig` (every default with the reason it was chosen) and
`resolved`, which fills in the defaults that depend on the loss mode, as the run uses and logs them."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from common.graph.gmp import GMPConfig
from common.losses.cmkd import CMKDConfig
from common.train.grouped_config import GroupedConfig


@dataclass
class AdaptConfig:
    mode: str = "full"  # "full", "per_record" or "grouped" (docs/privacy.md section 4)
    epochs: int = 20  # fixed schedule: no selection on target data
    batch_size: int = 64  # records per step
    lr: float = 1e-3  # as in pretraining; 3e-4 left every variant under-trained on the dev pair
    weight_decay: float = 1e-4
    momentum: float | None = None  # EMA of the teacher per step; 1.0 freezes it (gmp_only). None: 0.99 in full mode,
    # 1.0 in per-record mode (there the teacher gives caption views and public keys; an image head that follows the
    # student lets the public keys drift with it: dev pair val R1 25.3 -> 28.1 frozen, 27.3 -> 29.0 on a second seed)
    use_gmp: bool = True
    refresh_steps: int | None = None  # recompute the teacher's refined target embeddings (and full mode's graph
    # batches) every this many steps. None: about once a pass over the site (`refresh_every`: 25 steps of 64 records
    # at 1,800 records, the cadence every variant was tuned with, and proportionally more at larger sites; at 18,000
    # records a refresh every 25 steps was 86% of a 3.6-hour run, once a pass takes 24 minutes: test R1 91.9,
    # docs/grouped.md "Speed"). Grouped mode re-embeds its public anchors every 25 steps when None
    group_size: int = 3  # full mode: a batch is seeds plus each seed's nearest records in the refined graph,
    # so that a person's other views are candidates and the teacher's soft targets can give them mass. 3 = a
    # seed and its 2 nearest: about the images per person of CUHK-PEDES (3.3) and of the generated benchmark (3);
    # on the dev pair's val split 3 beat 4 (50.2 vs 45.1 R1 with text groups)
    group_by: str = "text"  # full mode: neighbours (batch groups, pseudo-positives) by the record's mean refined
    # caption ("text"), the refined "image", or both side by side ("image+text"). On the dev pair's train split
    # (labels used for this diagnostic only) a record's nearest record by caption is the same person 94% of the
    # time, by refined image 81%; text groups gave the best val R1 (dev pair 50.2 vs 47.9 image+text, 45.1 image)
    queue_size: int = 0  # refined target features kept as extra candidates (full mode); off: it did not help on the dev pair
    seed: int = 0
    gmp: GMPConfig = field(default_factory=GMPConfig)
    cmkd: CMKDConfig | None = None  # None: CMKDConfig() in full mode; in per-record mode the same with kd_weight 0.5
    # (half one-hot on the own pair, half the teacher's soft spread over the public keys). Val R1, seeds 0 / 1, two
    # teacher rounds, kd_weight 1.0 -> 0.5: flat->outline 45.8 -> 46.5, 46.7 -> 46.8; flat->shaded 21.2 -> 24.0, 23.0 -> 26.2
    text_phase: float = 0.75  # per_record mode: share of the schedule, at its end, in which the image head is fixed and
    # the text head learns to land on its record's image embedding (`common.losses.caption_to_image`); the image phase
    # plateaus within 5 epochs. Val splits of both pairs (no test split), R1 flat->outline / flat->shaded: text head
    # kept 28-30 / 5-7; share 0.5: 37.3 / 13.1; 0.75: 39.3 / 16.2; 0.85: 37.3 / 14.9; both heads at once: 32.8 / 10.2
    text_negatives: int = 64  # per_record text phase: public source images nearest each record's own image (by the
    # fixed image head) as negatives of its captions, beside the regression onto the own image; 0 turns them off.
    # Val R1, seeds 0 / 1, without -> with (64, weight 0.1): flat->outline 42.2 -> 45.8, 40.3 -> 46.7; flat->shaded
    # 22.4 -> 21.2, 23.1 -> 23.0 (weight 1.0: 45.6 / 20.6; 16 negatives: 46.2 / 22.1)
    text_negative_weight: float = 0.1
    whiten: float | None = None  # shrinkage of the DP whitening folded into both heads at the end
    # (`common.privacy.site_whitening`); None: 1.0 in per-record mode, 0 (off) in full mode. A per-record loss never
    # spreads a site's records apart, whitening does. Val R1, seeds 0 / 1, noise 5, shrinkage 0.3 / 1 / 3 / 10:
    # flat->outline 46.2 -> 49.8 / 52.0 / 50.6 / 48.4, 45.8 -> 47.3 / 48.5 / 48.3 / 46.7; flat->shaded 28.8 -> 30.8 /
    # 32.2 / 32.4 / 32.0, 26.9 -> 30.6 / 30.7 / 30.4 / 28.3. On normalised embeddings (no noise) it cost full GCKD
    # 3 R1 at shrinkage 1 (flat->outline 54.8 -> 51.8, flat->shaded 37.2 -> 34.3), and pair fine-tuning 4.5 / 2.9
    whiten_noise: float = 5.0  # noise multiplier of each of its releases: at 2 the val R1 were the same within 1
    prototypes: int = 64  # per_record mode: DP k-means prototypes per modality
    prototype_iters: int = 3  # noisy Lloyd iterations (each one is accounted)
    prototype_noise: float = 2.0  # noise multiplier of each prototype release
    teacher_rounds: int | None = None  # run the schedule this many times, each round's student the next round's
    # teacher. None: 2 in full mode, 4 in per-record mode. Val splits, R1 one round -> two, seeds 0 / 1 (before weight
    # averaging): per-record flat->outline 39.2 -> 40.9 / 37.4 -> 41.5, flat->shaded 16.2 -> 21.3 / 16.4 -> 19.8; full
    # flat->outline 50.2 -> 49.8 / 49.8 -> 52.7, flat->shaded 34.4 -> 37.8 / 31.2 -> 33.3. The gain is the new teacher,
    # not the longer training: one per-record round of 40 epochs gave 38.8 / 14.2. Per-record with averaging, public
    # text negatives and kd_weight 0.5, R1 mean of seeds 0 and 1 for 2 / 3 / 4 / 5 / 6 rounds: flat->outline 46.7 /
    # 45.9 / 44.7 / 44.5 / 43.7, flat->shaded 25.1 / 26.4 / 29.0 / 29.2 / 28.6; 4 has the best sum (5 the same, slower)
    grouped: GroupedConfig = field(default_factory=GroupedConfig)  # grouped mode: sampling, keys, group clipping
    average: float | None = 0.99  # the result is an exponential moving average of the student's weights with this
    # momentum per step (Polyak averaging; mean-teacher methods such as MMT keep their averaged network), and each
    # round after the first starts from it and takes it as teacher; None keeps the last student. With full mode's
    # default teacher momentum (0.99) the average is the momentum teacher itself. It is post-processing of the
    # student's iterates, so it costs no privacy. Val splits, full GCKD, last student -> average: flat->outline
    # seeds 0/1/2 49.8 -> 53.6, 52.7 -> 53.5, 49.1 -> 53.7 (chained into round 2: 54.8 and 53.9 for seeds 0/1);
    # flat->shaded 37.8 -> 37.9, 33.3 -> 35.8, 37.7 -> 39.2. Averaging helps the naive baseline as much
    # (`PairFinetuneConfig.ema`), so the ablation reports that baseline too


REFRESH_STEPS = 25  # the refresh cadence at REFRESH_RECORDS records, and the fewest steps between refreshes
REFRESH_RECORDS = 1_800  # the site size at which 25 steps of 64 records are about one pass


def refresh_every(records: int) -> int:
    """Steps between refreshes when ``refresh_steps`` is None: about once a pass, ``max(25, round(25 N / 1800))``.
    Public: it reads only the record count."""
    return max(REFRESH_STEPS, round(REFRESH_STEPS * records / REFRESH_RECORDS))


def resolved(cfg: AdaptConfig, records: int | None = None) -> AdaptConfig:
    """The config with its mode-dependent defaults (None) filled in, as the run uses and logs it; the refresh cadence
    of full and per-record mode needs the site's record count (``records``) and stays None without it."""
    if cfg.mode not in ("full", "per_record", "grouped"):
        raise ValueError(f"mode must be 'full', 'per_record' or 'grouped', got {cfg.mode!r}")
    per_record = cfg.mode == "per_record"
    refresh = cfg.refresh_steps
    if refresh is None and cfg.mode == "grouped":
        refresh = REFRESH_STEPS
    elif refresh is None and records is not None:
        refresh = refresh_every(records)
    return replace(
        cfg,
        refresh_steps=refresh,
        momentum=cfg.momentum if cfg.momentum is not None else (1.0 if per_record else 0.99),
        teacher_rounds=cfg.teacher_rounds if cfg.teacher_rounds is not None else (4 if per_record else 2),
        cmkd=cfg.cmkd if cfg.cmkd is not None else (CMKDConfig(kd_weight=0.5) if per_record else CMKDConfig()),
        whiten=cfg.whiten if cfg.whiten is not None else (1.0 if per_record else 0.0),
    )
