"""The run's record on the server: per-round metrics and the run's privacy ledger.

`metrics.json`: one row per round: R1/mAP on the target val split (reporting
only), which sites were sampled, trained, refused (with their reason),
rejected (with the validation reason) or failed, bytes sent to and from each
site, each site's epsilon so far, and (record-level or no DP only) the norm of
each accepted update's change.

Nothing outside the DP release is published (docs/privacy.md, section 6):
under site-level DP a site's update is clipped but not yet noised when the
server sees it (the noise goes on the sum), so its norm is a per-site value
that no accountant covers. It is kept out of every file this log writes
(the rows, ledger.json and the checkpoint's copy), and so is the norm a
rejection reason would quote. Under record-level DP the update is already a
DP-SGD output, so its norm is post-processing and stays.

`ledger.json`: every ledger entry every site reported (all sites, all
rounds), every refusal/rejection/error event, and in site-level mode the
server's own per-site ledger of the central Gaussian mechanism.

Both files are rewritten atomically after every round, so an interrupted run
still leaves a consistent record of the rounds it finished. `state` and
`restore` carry the whole record through the server's checkpoint, so a
resumed run continues it (the rounds it re-runs are recorded once, as they
run again).
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict
from pathlib import Path

from common.atomic import atomic_write_json
from common.privacy.ledger import LedgerEntry, SiteLedger, Spend

_NORM_IN_REASON = re.compile(r"update norm [-+0-9.eEinfa]+")  # `validate_update`'s "update norm 3.2 exceeds ..."


class RunLog:
    def __init__(self, out_dir: Path | str, header: dict):
        self.out = Path(out_dir)
        self.header = header
        self.rounds: list[dict] = []
        self.row: dict = {}
        self.site_entries: dict[str, list[dict]] = {}
        self.events: list[dict] = []
        self.site_level: dict[str, SiteLedger] = {}
        self._t0 = time.perf_counter()

    @property
    def site_level_dp(self) -> bool:
        """Site-level DP: an update the server sees is not yet noised, so nothing measured on it is published."""
        return self.header.get("privacy", {}).get("mode") == "site"

    # -- during a round -----------------------------------------------------------------------
    def start_round(self, server_round: int) -> None:
        self._t0 = time.perf_counter()
        self.row = {"round": server_round, "sampled": [], "trained": [], "refused": {}, "rejected": {}, "errors": {},
                    "bytes_to_site": {}, "teacher_bytes_to_site": {}, "bytes_from_site": {}, "epsilon": {},
                    "notes": []}
        if not self.site_level_dp:
            self.row["update_norm"] = {}

    def note(self, server_round: int, text: str) -> None:
        """Something about the round that is not one site's outcome (e.g. sites that did not connect)."""
        if self.row.get("round") == server_round:
            self.row["notes"].append(text)

    def sent(self, site: str, nbytes: int, teacher: bool = False) -> None:
        """Bytes of arrays sent to a site: the student's trainable arrays, or (teacher=True) a teacher version."""
        key = "teacher_bytes_to_site" if teacher else "bytes_to_site"
        self.row[key][site] = self.row[key].get(site, 0) + int(nbytes)

    def sampled(self, sites: list[str]) -> None:
        self.row["sampled"] = sorted(sites)

    def received(self, site: str, nbytes: int) -> None:
        self.row["bytes_from_site"][site] = self.row["bytes_from_site"].get(site, 0) + int(nbytes)

    def event(self, server_round: int, site: str, kind: str, reason: str) -> None:
        """kind: refused | rejected | error."""
        key = {"refused": "refused", "rejected": "rejected", "error": "errors"}[kind]
        if self.site_level_dp:
            reason = _NORM_IN_REASON.sub("update norm (withheld: not a DP release)", reason)
        if self.row.get("round") == server_round:
            self.row[key][site] = reason
        self.events.append({"round": server_round, "site": site, "kind": kind, "reason": reason})

    def trained(self, site: str, update_norm: float) -> None:
        """An accepted update; its norm is kept only where it is post-processing of a DP release (or no DP)."""
        self.row["trained"].append(site)
        if not self.site_level_dp:
            self.row["update_norm"][site] = float(update_norm)

    def site_ledger(self, site: str, entries: list[LedgerEntry]) -> None:
        self.site_entries.setdefault(site, []).extend(asdict(e) for e in entries)
        if entries:
            self.row["epsilon"][site] = entries[-1].epsilon_so_far

    def server_site_level(self, server_round: int, sites: list[str], spend: Spend, took_part: set[str],
                          poisson: bool, delta: float, budget: float) -> None:
        """The central mechanism's spending per site (site-level DP), as the server accounts it.

        Poisson sampling: every site spends every round at rate q. No sampling
        (q = 1): a site spends in the rounds it was sampled in.
        """
        for s in sites:
            led = self.site_level.setdefault(s, SiteLedger(site=s, unit="site", delta=delta, budget=budget))
            counts = poisson or s in took_part
            led.record(server_round, [spend] if counts else [], "trained" if s in took_part else "skipped")
        self.row["server_epsilon"] = {s: self.site_level[s].epsilon() for s in sites}

    def end_round(self, metrics: dict, **extra) -> None:
        self.row.update(metrics)
        self.row.update(extra)
        self.row["wall_s"] = round(time.perf_counter() - self._t0, 3)
        self.rounds.append(self.row)
        self.row = {}
        self.write()

    # -- checkpoint ----------------------------------------------------------------------------
    def state(self) -> dict:
        return {"rounds": self.rounds, "site_entries": self.site_entries, "events": self.events,
                "site_level": {s: led.to_dict() for s, led in self.site_level.items()}}

    def restore(self, state: dict) -> None:
        self.rounds = [dict(r) for r in state.get("rounds", [])]
        self.site_entries = {s: list(e) for s, e in state.get("site_entries", {}).items()}
        self.events = list(state.get("events", []))
        self.site_level = {s: SiteLedger.from_dict(d) for s, d in state.get("site_level", {}).items()}

    def summary(self) -> dict:
        """Epsilon per site so far (the sites' own ledgers, and the server's under site-level DP)."""
        led = self.ledger()
        return {"epsilon": led["final_epsilon"], "server_epsilon": led["final_server_epsilon"],
                "rounds": [r.get("round") for r in self.rounds]}

    # -- files ---------------------------------------------------------------------------------
    def write(self) -> None:
        atomic_write_json(self.out / "metrics.json", {**self.header, "rounds": self.rounds})
        atomic_write_json(self.out / "ledger.json", self.ledger())

    def ledger(self) -> dict:
        privacy = self.header.get("privacy", {})
        return {"privacy": privacy, "sites": self.site_entries, "events": self.events,
                "server_site_level": {s: led.to_dict() for s, led in self.site_level.items()},
                "final_epsilon": {s: e[-1]["epsilon_so_far"] for s, e in self.site_entries.items() if e},
                "final_server_epsilon": {s: led.epsilon() for s, led in self.site_level.items()}}
