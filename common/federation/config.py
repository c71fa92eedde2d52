"""The federation's run configuration: one dataclass, kebab-case keys on the wire.

`FedConfig` is the single source of the defaults. pyproject.toml's
``[tool.flwr.app.config]`` lists the same keys with the same values (a test
checks it), because `flwr run` reads them from there, while Flower's
`run_simulation` passes an empty run config and the apps fall back to these
defaults. Keys are kebab-case (``noise-multiplier``); attributes are
snake_case (``noise_multiplier``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields
from typing import Any, Mapping

from common.federation.server_optimizer import AUTO_LR, KINDS as SERVER_OPTIMIZERS, ServerOptSettings
from common.federation.update_codec import CODECS

PRIVACY_MODES = ("none", "record", "site")
LOSS_MODES = ("full", "per-record", "grouped")
PARTITIONS = ("by-identity", "dirichlet", "by-style")
TRAIN_PARAM_PRESETS = ("last", "all", "norms+biases")


class ConfigError(ValueError):
    """A run configuration that must not run (unknown key, bad value, unsafe combination)."""


@dataclass
class FedConfig:
    # --- what to run on (no defaults make sense; `flwr run` users pass them with -c) ---
    data_dir: str = ""  # folder holding one subfolder per domain
    target: str = ""  # target domain; its train split is dealt out to the sites
    teacher: str = ""  # source-pretrained checkpoint folder (server side only)
    source: str = ""  # "" = the source domain recorded in the teacher checkpoint (anchor bank)
    backbone: str = ""  # "" = the backbone recorded in the teacher checkpoint
    cache_dir: str = ""  # frozen-trunk feature cache; "" = $FEDGCKD_CACHE or ~/.cache/fedgckd
    out_dir: str = "runs/federated"  # server outputs: model, metrics.json, ledger.json
    state_dir: str = "runs/federated/sites"  # site state (ledger, teacher cache), one subfolder per site
    # --- federation shape ---
    sites: int = 3  # simulated sites (partitions); small so a laptop runs it
    sites_per_round: int = 0  # 0 = every site every round (accounted with q=1); k < sites = Poisson sampling at rate k/sites
    rounds: int = 3  # server rounds; a handful suffice for small heads started from a good teacher
    seed: int = 0  # partition, anchor bank, data order; never DP noise or the sampling of sites (those use OS randomness)
    # --- method ---
    mode: str = "per-record"  # per-record: each record's loss reads only itself and public data (the record-DP form)
    local_steps: int = 20  # steps per site per round; 5 epochs of a site at DP-SGD rate 0.25, ~7 of a 180-record site at batch 64
    lr: float = 0.0  # 0 = the optimiser's own default: SGD 0.1 under DP-SGD, AdamW 1e-3 otherwise
    batch_size: int = 64  # records per step when not under DP-SGD (as in one-machine adaptation)
    teacher_momentum: float = 0.8  # EMA per round; ~0.99 per step over 20 local steps, as in one-machine CMKD
    anchors: int = 1024  # source anchors per modality; public, sent once per teacher version
    prototypes: int = 8  # DP k-means prototypes per modality (per-record mode); few, so each has members
    prototype_iters: int = 1  # noisy Lloyd iterations per round; each one is a Gaussian release
    group_size: int = 8  # grouped mode: target mean group size, which sets the public number of sub-bins per
    # prototype cell (expected records per step / (prototypes x group-size)); small groups give more clipped signal
    # per step, a few members give in-group negatives (docs/privacy.md section 4, group clipping)
    prototype_noise: float = 0.0  # their noise multiplier; 0 = automatic: the run's releases cost prototype-budget-share
    # of epsilon (a fixed noise, e.g. 10, cost 1.9 of an epsilon-1 budget over 10 rounds, leaving nothing to train)
    prototype_budget_share: float = 0.25  # share of epsilon the prototype releases may cost (automatic noise); Opacus'
    # RDP orders (up to 63) cannot certify much below ~0.2 at delta 1e-5, so a tenth of epsilon 1 would not do
    train_params: str = "last"  # "last" (last Linear of each head), "all", "norms+biases", comma-separated name
    # prefixes, or "lowrank:R" / "lowrank:R+biases" (record-level grouped mode: rank-R adapters in a public subspace,
    # only the B's travel back; common/federation/adapters.py)
    update_codec: str = "float32"  # how a site's reply travels: float32, or int8 (the update from the broadcast with
    # one scale per row, stochastic rounding: a quarter of the bytes, unbiased; common/federation/update_codec.py).
    # float32 by default: exact, and `last` (1.05 MB) is already within 2% of the full model; int8 is for `all`
    partition: str = "dirichlet"  # non-IID by default
    alpha: float = 0.5  # Dirichlet concentration; 0.5 is the usual "clearly non-IID" setting
    # --- privacy ---
    privacy: str = "record"  # none | record (DP-SGD per site) | site (clipped updates + central noise)
    epsilon: float = 8.0  # per-site budget over the whole run; a common middle ground for DP-SGD
    delta: float = 1e-5  # below 1/records of a typical site
    noise_multiplier: float = 0.0  # > 0 overrides the noise derived from epsilon
    clip_norm: float = 1.0  # per-record gradient bound (record) or per-site update bound (site)
    sample_rate: float = 0.25  # Poisson rate of DP-SGD at each site; at a fixed epsilon larger batches give a better
    # signal-to-noise ratio (noise std of the mean gradient ~ sigma/(q N), and sigma grows slower than q)
    accountant: str = "rdp"  # Opacus RDP is primary (docs/privacy.md, section 7)
    # --- server optimiser on the aggregated update (post-processing of what the sites released: no privacy cost) ---
    server_optimizer: str = "fedavg"  # fedavg | fedavgm | fedadam (common/federation/server_optimizer.py); fedavg at
    # server-lr 1 is plain FedAvg, bit for bit, so the default changes nothing
    server_lr: float = 0.0  # 0 = automatic: 1 for fedavg/fedavgm (the plain average's own step), 1e-2 for fedadam
    # (it moves each coordinate by about lr per round; 1e-2 is the sites' own per-coordinate update size)
    server_momentum: float = 0.9  # fedavgm: Hsu et al. 2019's usual value; the steady-state step is lr/(1-momentum)
    # times the mean update, and the noise of a round's aggregate averages over ~1/(1-momentum) rounds
    server_beta1: float = 0.9  # fedadam first moment: Reddi et al. 2021 and Flower's FedAdam default
    server_beta2: float = 0.99  # fedadam second moment: Reddi et al. 2021 and Flower's FedAdam default
    server_tau: float = 1e-3  # fedadam adaptivity floor: Reddi et al. 2021's choice for most tasks (Flower's default);
    # coordinates that move much less than tau per round get a plain momentum step of lr/tau instead of Adam's ~lr
    # --- server-side checks ---
    max_update_norm: float = 0.0  # 0 = automatic (site: clip-norm; otherwise 2 x norm of the broadcast); record-level
    # sites scale their update to this bound before sending (DP noise alone can exceed it)
    server_eval: bool = True  # R1/mAP on the target val split each round (reporting only; never selects)
    # --- operations (a resumed run may change these) ---
    site_wait: float = 600.0  # seconds a round waits for all sites to connect, then goes on with those that did
    resume: bool = False  # server: continue from out-dir/checkpoint.safetensors (after its last completed round)

    # ---- conversion ----------------------------------------------------------------------
    @staticmethod
    def key(name: str) -> str:
        return name.replace("_", "-")

    def to_run_config(self) -> dict[str, Any]:
        return {self.key(f.name): getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any] | None = None, **overrides) -> "FedConfig":
        """Defaults, then `run_config` (kebab-case), then `overrides` (kebab- or snake_case)."""
        by_key = {cls.key(f.name): f for f in fields(cls)}
        values: dict[str, Any] = {}
        for source in (run_config or {}, overrides):
            for k, v in source.items():
                f = by_key.get(cls.key(str(k)))
                if f is None:
                    raise ConfigError(f"unknown run-config key {k!r}; known keys: {', '.join(sorted(by_key))}")
                values[f.name] = _coerce(f, v)
        return cls(**values)

    def replace(self, **changes) -> "FedConfig":
        return dataclasses.replace(self, **changes)

    # ---- derived -------------------------------------------------------------------------
    @property
    def loss_mode(self) -> str:
        """The mode name the training code uses ("full" / "per_record" / "grouped")."""
        return self.mode.replace("-", "_")

    @property
    def prototype_releases_per_round(self) -> int:
        """Gaussian releases of DP prototypes per round: per-record mode clusters both modalities, grouped mode the
        records' caption views only, full mode releases none."""
        if self.prototypes == 0 or self.prototype_iters == 0 or self.mode == "full":
            return 0
        return self.prototype_iters * (1 if self.mode == "grouped" else 2)

    @property
    def sampled_per_round(self) -> int:
        return self.sites if self.sites_per_round in (0, self.sites) else self.sites_per_round

    @property
    def site_sampling(self) -> str:
        """'none' (every site, q=1) or 'poisson' (each site independently at rate k/sites)."""
        return "none" if self.sampled_per_round == self.sites else "poisson"

    def server_opt_settings(self) -> ServerOptSettings:
        """The server optimiser's settings, server-lr 0 resolved to the optimiser's automatic value."""
        lr = self.server_lr if self.server_lr > 0 else AUTO_LR[self.server_optimizer]
        return ServerOptSettings(self.server_optimizer, lr, self.server_momentum, self.server_beta1,
                                 self.server_beta2, self.server_tau)

    def prototype_noise_multiplier(self) -> float:
        """Noise of each DP prototype release: prototype-noise if > 0, else the noise at which the whole run's
        releases (rounds x `prototype_releases_per_round`) cost prototype-budget-share of epsilon alone."""
        if self.prototype_noise > 0 or self.prototypes == 0 or self.prototype_iters == 0:
            return self.prototype_noise
        from common.privacy.accounting import AccountingError
        from common.privacy.noise_calibration import prototype_noise_for

        share = self.prototype_budget_share * self.epsilon
        try:
            return prototype_noise_for(share, self.delta, self.rounds * max(1, self.prototype_releases_per_round),
                                       self.accountant)
        except AccountingError as ex:
            raise ConfigError(f"cannot give the DP prototypes epsilon {share:.3g} ({self.prototype_budget_share} of "
                              f"{self.epsilon}) at delta {self.delta:g}: {ex}. Raise prototype-budget-share, set "
                              "prototype-noise explicitly, or set prototypes=0") from None

    # ---- checks ----------------------------------------------------------------------------
    def validate(self) -> "FedConfig":
        """Raise ConfigError on a bad value or an unsafe combination; returns self."""
        self.mode = self.mode.replace("_", "-")
        _one_of("privacy", self.privacy, PRIVACY_MODES)
        _one_of("mode", self.mode, LOSS_MODES)
        _one_of("partition", self.partition, PARTITIONS)
        _one_of("accountant", self.accountant, ("rdp", "prv"))
        _one_of("server-optimizer", self.server_optimizer, SERVER_OPTIMIZERS)
        if self.privacy == "record" and self.mode not in ("per-record", "grouped"):
            raise ConfigError(
                "privacy=record needs mode=per-record or mode=grouped: in full mode a record's loss reads other "
                "private records (graph edges, in-batch negatives, queue), so the DP-SGD guarantee would not hold; "
                "use mode=grouped (the graph inside small groups, group clipping), or privacy=site for the full graph")
        self._check_low_rank()
        _one_of("update-codec", self.update_codec, CODECS)
        if self.update_codec != "float32" and self.privacy == "site":
            raise ConfigError(f"update-codec={self.update_codec} with privacy=site: the server's site-level clipping "
                              "needs the float update itself; use update-codec=float32")
        checks = [
            ("sites", self.sites >= 1), ("rounds", self.rounds >= 1), ("local-steps", self.local_steps >= 1),
            ("sites-per-round", 0 <= self.sites_per_round <= self.sites),
            ("epsilon", self.epsilon > 0 and math.isfinite(self.epsilon)), ("delta", 0 < self.delta < 1),
            ("noise-multiplier", self.noise_multiplier >= 0 and math.isfinite(self.noise_multiplier)),
            ("clip-norm", self.clip_norm > 0), ("sample-rate", 0 < self.sample_rate <= 1),
            ("teacher-momentum", 0 <= self.teacher_momentum <= 1), ("anchors", self.anchors >= 1),
            ("prototypes", self.prototypes >= 0), ("prototype-iters", self.prototype_iters >= 0),
            ("group-size", self.group_size >= 1),
            ("prototype-noise", self.prototype_noise >= 0 and math.isfinite(self.prototype_noise)),
            ("prototype-budget-share", 0 < self.prototype_budget_share < 1),
            ("alpha", self.alpha > 0), ("lr", self.lr >= 0), ("batch-size", self.batch_size >= 1),
            ("max-update-norm", self.max_update_norm >= 0), ("train-params", bool(self.train_params.strip())),
            ("site-wait", self.site_wait >= 0 and math.isfinite(self.site_wait)),
            ("server-lr", self.server_lr >= 0 and math.isfinite(self.server_lr)),
            ("server-momentum", 0 <= self.server_momentum < 1), ("server-beta1", 0 <= self.server_beta1 < 1),
            ("server-beta2", 0 <= self.server_beta2 < 1),
            ("server-tau", self.server_tau > 0 and math.isfinite(self.server_tau)),
        ]
        bad = [name for name, ok in checks if not ok]
        if bad:
            shown = ", ".join(f"{n}={getattr(self, n.replace('-', '_'))!r}" for n in bad)
            raise ConfigError(f"invalid run config: {shown}")
        return self

    def _check_low_rank(self) -> None:
        """train-params lowrank:R[+biases]: a well-formed spec, record-level grouped mode only, R <= anchors."""
        if not self.train_params.strip().startswith("lowrank"):
            return
        from common.models.low_rank import parse_spec  # lazy: a teacher query needs no torch

        try:
            rank, _ = parse_spec(self.train_params)
        except ValueError as ex:
            raise ConfigError(f"run-config key 'train-params': {ex}") from None
        if self.privacy != "record" or self.mode != "grouped":
            raise ConfigError(f"train-params={self.train_params!r} runs only with privacy=record and mode=grouped "
                              f"(got privacy={self.privacy}, mode={self.mode}): only the grouped record-level site "
                              "trains low-rank adapters (common/federation/adapters.py)")
        if rank > self.anchors:
            raise ConfigError(f"train-params={self.train_params!r}: rank {rank} exceeds anchors={self.anchors}, the "
                              "public rows its bases are computed from")

    def require(self, *names: str) -> None:
        """Raise ConfigError naming every listed key that is empty."""
        missing = [self.key(n) for n in names if not getattr(self, n.replace("-", "_"))]
        if missing:
            raise ConfigError(f"run config is missing {', '.join(missing)} (pass e.g. -c \"{missing[0]}='...'\")")


def _one_of(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")


def _coerce(f: dataclasses.Field, v: Any) -> Any:
    kind = f.type if isinstance(f.type, str) else f.type.__name__
    try:
        if kind == "bool":
            if isinstance(v, str):
                if v.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(v)
                return v.lower() in ("true", "1")
            return bool(v)
        if isinstance(v, bool):
            raise ValueError("a boolean is not a number")
        if kind == "int":
            if float(v) != int(float(v)):
                raise ValueError("not an integer")
            return int(float(v))
        if kind == "float":
            return float(v)
        return str(v)
    except (TypeError, ValueError) as ex:
        raise ConfigError(f"run-config key {FedConfig.key(f.name)!r}: cannot read {v!r} as {kind} ({ex})") from None
