"""A site's own privacy settings, its persisted ledger, and whether it may train this round.

Whose setting wins (fail closed: nothing the server sends can raise a budget):
- The site's node config (``epsilon``, ``delta``, ``state-dir``, ...) is the
  site's own setting and always wins. A node-config budget above the one
  stored in the site's ledger is refused: raising a budget is a deliberate
  act on the ledger file, not a config change.
- Otherwise, once the site has a ledger, the ledger's budget, delta and
  accountant govern; the run config (which the server's operator writes) is
  ignored for them.
- Only a site with no ledger yet and no node-config budget takes the run
  config's ``epsilon``/``delta`` to start one (what a simulation needs, since
  simulated nodes have no node config of their own).

One ledger file per privacy unit (``ledger-record.json``, ``ledger-site.json``)
in the site's state dir: epsilons of different units do not compose.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from common.federation.config import FedConfig
# re-exported: a site's settings live in `site_settings` (light to import, no accountant)
from common.federation.site_settings import UNIT_OF, SiteSettings, resolve_settings  # noqa: F401
from common.privacy.accounting import AccountingError
from common.privacy.ledger import LedgerError, SiteLedger, Spend
from common.privacy.noise_calibration import plan_record_level


def open_ledger(settings: SiteSettings, cfg: FedConfig) -> SiteLedger | None:
    """The site's ledger for its privacy unit (None when privacy is none). Never resets history."""
    if settings.privacy == "none":
        return None
    path, unit = settings.ledger_path(), UNIT_OF[settings.privacy]
    if not path.exists():
        return SiteLedger(site=settings.site, unit=unit, delta=settings.delta or cfg.delta,
                          budget=settings.epsilon or cfg.epsilon, accountant=cfg.accountant)
    led = SiteLedger.load(path)
    if led.site != settings.site or led.unit != unit:
        raise LedgerError(f"{path} belongs to {led.site} ({led.unit}-level), not {settings.site} ({unit}-level)")
    if settings.delta is not None and settings.delta != led.delta:
        raise LedgerError(f"{path}: stored delta {led.delta} but the node config says {settings.delta}")
    if settings.epsilon is not None:
        if settings.epsilon > led.budget:
            raise LedgerError(f"{path}: node-config budget {settings.epsilon} exceeds the stored budget {led.budget}; "
                              "raising a budget is a deliberate act, edit the ledger explicitly")
        led.budget = settings.epsilon
    return led


@dataclass
class RoundPlan:
    spends: list[Spend] = field(default_factory=list)
    dp_sgd_noise: float = 0.0
    refuse: bool = False
    reason: str = ""
    projected_epsilon: float = 0.0


def plan_round(led: SiteLedger | None, cfg: FedConfig, server_round: int, server_config: Mapping[str, Any],
               last_round: int) -> RoundPlan:
    """What this round would spend, and whether the site refuses it.

    server_config: the train message's config; read only for the server's own
    mechanism under site-level DP (its noise multiplier and sampling rate),
    which the site records as claimed.
    last_round: the last round of this run the site accounted (0: none).
    """
    if led is None:
        return RoundPlan()
    run_key = str(server_config.get("run-key", ""))
    try:
        if led.unit == "record":
            spends, sigma = _record_spends(led, cfg, server_round)
        else:
            sigma = float(server_config.get("site-noise-multiplier", 0.0))
            q = float(server_config.get("site-sample-rate", 1.0))
            steps = 1 if q >= 1.0 else max(1, server_round - last_round)
            spends = [Spend("site-update-gaussian", sigma, q, steps, cfg.clip_norm)]
    except (AccountingError, ValueError) as ex:
        return RoundPlan(refuse=True, reason=led.refusal_reason(None, run_key, str(ex))[:280],
                         projected_epsilon=float("inf"))
    refuse, projected = led.would_exceed(spends)
    # the reason names spending of earlier runs over the same state folder when that is what exhausts the budget
    reason = led.refusal_reason(projected, run_key)[:280] if refuse else ""
    return RoundPlan(spends, sigma if led.unit == "record" else 0.0, refuse, reason, projected)


def _record_spends(led: SiteLedger, cfg: FedConfig, server_round: int) -> tuple[list[Spend], float]:
    return record_spends(cfg, led.budget, led.delta, led.accountant, led.history, server_round)


def record_spends(cfg: FedConfig, budget: float, delta: float, accountant: str, history, server_round: int
                  ) -> tuple[list[Spend], float]:
    """The round's record-level mechanisms (DP prototypes, DP-SGD) and the DP-SGD noise, for a site with `history`."""
    iters = cfg.prototype_releases_per_round  # per-record: one release per modality and iteration; grouped: one
    proto_noise = cfg.prototype_noise_multiplier() if iters else 0.0
    protos = [Spend("dp-kmeans-prototypes", proto_noise, 1.0, iters)] if iters else []
    if cfg.noise_multiplier > 0:
        sigma = cfg.noise_multiplier
    else:  # spread what is left of the budget over the rounds left
        remaining = max(1, cfg.rounds - server_round + 1)
        sigma = plan_record_level(budget, delta, remaining, cfg.local_steps, cfg.sample_rate,
                                  prototype_iters_per_round=iters, prototype_noise=proto_noise,
                                  accountant=accountant, prior_history=history).dp_sgd_noise_multiplier
    mechanism = "dp-sgd-grouped" if cfg.mode == "grouped" else "dp-sgd"  # group clipping: Delta = 2C
    return protos + [Spend(mechanism, sigma, cfg.sample_rate, cfg.local_steps, cfg.clip_norm)], sigma


def check_continuity(led: SiteLedger | None, entries_in_state: int) -> None:
    """Fail closed if the ledger on disk has fewer entries than the site's Flower state remembers.

    That means the file was rolled back, replaced or deleted during the run;
    continuing would under-count what was spent.
    """
    have = 0 if led is None else len(led.entries)
    if entries_in_state > have:
        raise LedgerError(f"the ledger on disk has {have} entries but this site's state recorded {entries_in_state}: "
                          "it was rolled back or replaced; refusing to train")
