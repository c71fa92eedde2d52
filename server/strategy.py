"""The FedGCKD strategy: FedAvg with teacher broadcast, site sampling, update checks and honest weights.

Per round (`configure_train`):
0. wait (up to ``site-wait`` seconds) until all ``sites`` nodes are
   connected, then go on with those that are (a site that dropped out
   misses the round and is asked again the next one; the wait is logged);
1. sample sites: all of them (accounted with q = 1), or each site
   independently with probability k/N (Poisson, what the site-level
   accountant's amplification assumes);
2. send each sampled site the current teacher (``query.teacher``) unless it
   already holds that version; a site that fails (e.g. trunk fingerprint
   mismatch) is left out of the round and the failure is logged;
3. send the global student's trainable arrays (``train``).

`aggregate_train` sets aside errors and refusals (logged with their reason),
checks every update (`common.federation.validation`) and rejects bad ones
(logged), then aggregates the rest:
- privacy none: weighted by the sites' record counts (FedAvg);
- privacy record: equal weights (sites do not release their sizes);
- privacy site: broadcast + (sum of clipped deltas) / k with a FIXED k (the
  expected number of sampled sites), so that one site moves the sum by at
  most the clip norm and Flower's DP wrapper's noise (std sigma*S/k on the
  average) is the calibrated Gaussian mechanism on the sum.
With ``train-params=lowrank:R`` (record-level grouped mode) the train
message also carries the round's adapter bases ``A`` (a second array record,
``bases``, computed by `ServerTask.round_bases` from the broadcast student on
the public anchor bank), a reply holds only the B's (+ biases), each reply is
checked against zero B's and the broadcast biases (``|B A| = |B|``: A's rows are
orthonormal), and the equal-weight mean of the B's is folded into the plain
student, ``W + mean(B) A`` (`common.federation.adapters.fold`; exact, since
every site used the same A). The aggregate is plain heads again.
Then the server optimiser (``server-optimizer``: fedavg | fedavgm | fedadam,
`common.federation.server_optimizer`) takes one step on the pseudo-gradient
aggregate - broadcast. It reads only what the sites released (under
site-level DP: after the wrapper added the central noise, see `SiteLevelDP`),
so it is post-processing and costs no privacy. A round that aggregates
nothing takes no step. Under ``lowrank:R`` it steps on the FOLDED aggregate,
i.e. on the plain-weight pseudo-gradient ``mean(B) A`` (and the bias means):
A is recomputed each round from the new student, so B's of different rounds
are coordinates in different bases, and momentum or Adam moments kept on B's
would add up unrelated numbers; plain weights are the one coordinate system
that stays put (and the optimiser's state then has the broadcast's shapes,
as in the checkpoint). FedAdam's per-coordinate scaling may leave the rank-R
subspace; that is post-processing of released B's, so it costs nothing.

Resuming (`round_offset`): Flower's loop counts rounds from 1; a server
resumed after round R sets the offset to R, so sites, logs and ledgers see
the real round numbers R+1, R+2, ... The train config carries the run's
``run-key`` (kept in the checkpoint), by which sites key their per-run state.
"""

from __future__ import annotations

import logging
import random
import secrets
import time
from collections.abc import Iterable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import DifferentialPrivacyClientSideFixedClipping, FedAvg

from common.federation.adapters import BASES, fold, rank_of
from common.federation import update_codec
from common.federation.config import FedConfig
from common.federation.outbound import REFUSED
from common.federation.server_optimizer import ServerOptimizer
from common.federation.validation import Verdict, max_delta_norm, validate_update
from common.privacy.ledger import Spend
from common.privacy.ledger_metrics import from_metrics
from server.run_log import RunLog
from server.task import ServerTask

log = logging.getLogger("fedgckd.server")
QUERY_TEACHER = "query.teacher"


def nbytes(record: ArrayRecord) -> int:
    return int(sum(len(a.data) for a in record.values()))


class FedGCKD(FedAvg):
    def __init__(self, task: ServerTask, run_log: RunLog, cfg: FedConfig, site_noise: float = 0.0,
                 site_rate: float = 1.0, timeout: float = 3600):
        super().__init__(fraction_train=1.0, min_train_nodes=1, min_available_nodes=cfg.sites)
        # No federated evaluation: the server scores each round on target val itself. Set after construction,
        # because FedAvg warns "fraction_evaluate is set to 0.0" on every run when it is passed in.
        self.fraction_evaluate, self.min_evaluate_nodes = 0.0, 0
        self.task, self.log, self.cfg = task, run_log, cfg
        self.site_noise, self.site_rate, self.timeout = site_noise, site_rate, timeout
        # Which sites a round samples must be unpredictable for the amplification by sampling to hold.
        self.rng = np.random.default_rng(secrets.randbits(128))
        self.node_site: dict[int, str] = {}
        self.node_version: dict[int, str] = {}
        self.broadcast: dict[str, np.ndarray] = {}
        self.low_rank = rank_of(cfg.train_params)  # lowrank:R's R, else None
        self.bases: dict[str, np.ndarray] = {}  # lowrank:R: this round's A, sent with the student and folded with
        self.low_rank_reference: dict[str, np.ndarray] = {}  # lowrank:R: zero B's and the broadcast biases
        self.took_part: set[str] = set()
        self.round_offset = 0  # rounds completed before this process started (resume)
        self.run_key = ""
        self.server_opt = ServerOptimizer(cfg.server_opt_settings())  # its state is in the server checkpoint
        self.step_after_noise = False  # SiteLevelDP sets it: the optimiser must then read the noised aggregate

    @property
    def reference(self) -> dict[str, np.ndarray]:
        """What a reply is checked against: the broadcast, or under lowrank:R zero B's and the broadcast biases."""
        return self.low_rank_reference if self.bases else self.broadcast

    def real_round(self, flower_round: int) -> int:
        return flower_round + self.round_offset

    def site_of(self, node: int) -> str:
        return self.node_site.get(node, f"node-{node}")

    # -- configure -------------------------------------------------------------------------
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        server_round = self.real_round(server_round)
        self.log.start_round(server_round)
        nodes = self._connected(grid, server_round)
        if self.cfg.site_sampling == "poisson":
            q = self.cfg.sampled_per_round / self.cfg.sites
            nodes = [n for n in nodes if self.rng.random() < q]
        nodes = self._send_teacher(grid, nodes, server_round)
        self.broadcast = {k: v.numpy() for k, v in arrays.items()}
        if self.low_rank is not None:
            self.low_rank_reference = self.task.reply_reference(self.broadcast)
            self.bases = self.task.round_bases(self.broadcast)
        self.took_part = set()
        config["server-round"] = server_round
        config["teacher-version"] = self.task.teacher_version
        config["run-key"] = self.run_key
        if self.cfg.privacy == "site":
            config["site-noise-multiplier"] = float(self.site_noise)
            config["site-sample-rate"] = float(self.site_rate)
        self.log.sampled([self.site_of(n) for n in nodes])
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        if self.bases:  # public (read only the anchor bank and the broadcast student); counted in the bytes sent
            record[BASES] = ArrayRecord({k: Array(v) for k, v in self.bases.items()})
        for n in nodes:
            self.log.sent(self.site_of(n), nbytes(arrays) + (nbytes(record[BASES]) if self.bases else 0))
        return self._construct_messages(record, nodes, MessageType.TRAIN)

    def _connected(self, grid: Grid, server_round: int) -> list[int]:
        """The connected nodes, once all `sites` are or `site-wait` seconds have passed (and at least one is)."""
        end = time.monotonic() + self.cfg.site_wait
        while True:
            nodes = sorted(grid.get_node_ids())
            if len(nodes) >= self.cfg.sites or (nodes and time.monotonic() >= end):
                break
            time.sleep(min(1.0, max(0.05, self.cfg.site_wait / 50)))
        if len(nodes) < self.cfg.sites:
            missing = sorted(set(self.node_site.values()) - {self.node_site[n] for n in nodes if n in self.node_site})
            reason = (f"{len(nodes)} of {self.cfg.sites} sites connected after {self.cfg.site_wait:g}s; going on "
                      f"without {', '.join(missing) or 'the others'}")
            self.log.note(server_round, reason)
            log.warning("round %d: %s", server_round, reason)
        elif len(nodes) > self.cfg.sites:  # more nodes than sites: as Flower's sample_nodes, pick `sites` of them
            nodes = sorted(random.sample(nodes, self.cfg.sites))
        return nodes

    def _send_teacher(self, grid: Grid, nodes: list[int], server_round: int) -> list[int]:
        arrays, tcfg = self.task.teacher_payload()
        version = tcfg["teacher-version"]
        need = [n for n in nodes if self.node_version.get(n) != version]
        if need:
            record = RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
                                 "config": ConfigRecord({**tcfg, "server-round": server_round})})
            size = nbytes(record["arrays"])
            msgs = [Message(content=record, message_type=QUERY_TEACHER, dst_node_id=n) for n in need]
            for reply in grid.send_and_receive(msgs, timeout=self.timeout):
                node = reply.metadata.src_node_id
                if reply.has_error():
                    self.log.event(server_round, self.site_of(node), "error", f"teacher query: {reply.error.reason}"[:500])
                    log.warning("site %s failed the teacher query: %s", self.site_of(node), reply.error.reason)
                    continue
                metrics = next(iter(reply.content.metric_records.values()))
                self.node_site[node] = f"site-{int(metrics['site'])}"
                self.node_version[node] = version
                self.log.sent(self.site_of(node), size, teacher=True)
        return [n for n in nodes if self.node_version.get(n) == version]

    # -- aggregate -------------------------------------------------------------------------
    def note_errors(self, server_round: int, replies: list[Message]) -> None:
        for r in replies:
            site = self.site_of(r.metadata.src_node_id)
            self.log.event(server_round, site, "error", str(r.error.reason)[:500])
            log.warning("round %d: %s failed: %s", server_round, site, str(r.error.reason)[-500:])

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        server_round = self.real_round(server_round)
        replies = list(replies)
        self.note_errors(server_round, [r for r in replies if r.has_error()])
        bound = max_delta_norm(self.cfg.privacy, self.cfg.clip_norm, self.cfg.max_update_norm, self.broadcast)
        accepted: list[tuple[dict[str, np.ndarray], float]] = []
        refused = rejected = 0
        for msg in (r for r in replies if not r.has_error()):
            site = self.site_of(msg.metadata.src_node_id)
            content = msg.content
            for rec in content.array_records.values():
                self.log.received(site, nbytes(rec))
            metrics = dict(next(iter(content.metric_records.values()), {})) if content.metric_records else {}
            if "ledger.n" in metrics:
                try:
                    self.log.site_ledger(site, from_metrics(metrics, site, self.run_key))
                except Exception as ex:  # a malformed ledger report is itself a reason to reject
                    self.log.event(server_round, site, "rejected", f"malformed ledger metrics: {ex}")
                    rejected += 1
                    continue
            if metrics.get("status") == REFUSED:
                status = content.config_records.get("status")
                reason = str(status["reason"]) if status is not None and "reason" in status else "refused"
                self.log.event(server_round, site, "refused", reason)
                log.info("round %d: %s refused: %s", server_round, site, reason)
                refused += 1
                continue
            if len(content.array_records) != 1:
                self.log.event(server_round, site, "rejected", f"{len(content.array_records)} array records, expected 1")
                rejected += 1
                continue
            update = {k: v.numpy() for k, v in next(iter(content.array_records.values())).items()}
            try:
                update = update_codec.decode(update, self.reference, self.cfg.update_codec)
                verdict = validate_update(update, self.reference, bound)
            except ValueError as ex:  # a malformed codec reply: rejected like any other bad update
                verdict = Verdict(False, f"update-codec={self.cfg.update_codec}: {ex}"[:500])
            if not verdict.ok:
                self.log.event(server_round, site, "rejected", verdict.reason)
                log.warning("round %d: rejected the update of %s: %s", server_round, site, verdict.reason)
                rejected += 1
                continue
            weight = float(metrics.get("num-examples", 1)) if self.cfg.privacy == "none" else 1.0
            accepted.append((update, weight))
            self.took_part.add(site)
            self.log.trained(site, verdict.delta_norm)
        self._account_site_level(server_round)
        summary = MetricRecord({"accepted": len(accepted), "refused": refused, "rejected": rejected,
                                "errors": sum(r.has_error() for r in replies)})
        if not accepted or not weight_ok(accepted):
            return None, summary
        aggregate = ArrayRecord({k: Array(v) for k, v in self._combine(accepted).items()})
        return (aggregate if self.step_after_noise else self.server_step(aggregate)), summary

    def server_step(self, aggregate: ArrayRecord | None) -> ArrayRecord | None:
        """The server optimiser's step from the broadcast to the released aggregate (None: no step, state kept)."""
        if aggregate is None:
            return None
        new = self.server_opt.step(self.broadcast, {k: v.numpy() for k, v in aggregate.items()})
        if self.server_opt.is_identity:  # plain FedAvg: the aggregate itself, bit for bit
            return aggregate
        return ArrayRecord({k: Array(v) for k, v in new.items()})

    def _combine(self, accepted: list[tuple[dict[str, np.ndarray], float]]) -> dict[str, np.ndarray]:
        base = {k: np.asarray(v, dtype=np.float64) for k, v in self.broadcast.items()}
        if self.cfg.privacy == "site":  # fixed denominator: sensitivity S on the sum, whoever took part
            k = self.cfg.sampled_per_round
            return {n: (base[n] + sum(u[n] - base[n] for u, _ in accepted) / k).astype(np.float32) for n in base}
        total = sum(w for _, w in accepted)
        if self.bases:  # lowrank:R: the mean of the B's (+ biases), folded into the plain student with this round's A
            mean = {n: sum(w * u[n].astype(np.float64) for u, w in accepted) / total for n in self.reference}
            return fold(self.broadcast, self.bases, mean)
        return {n: (sum(w * u[n].astype(np.float64) for u, w in accepted) / total).astype(np.float32) for n in base}

    def _account_site_level(self, server_round: int) -> None:
        if self.cfg.privacy != "site":
            return
        sites = [f"site-{i}" for i in range(self.cfg.sites)]
        spend = Spend("site-update-gaussian", self.site_noise, self.site_rate, 1, self.cfg.clip_norm)
        self.log.server_site_level(server_round, sites, spend, self.took_part, self.cfg.site_sampling == "poisson",
                                   self.cfg.delta, self.cfg.epsilon)


def weight_ok(accepted) -> bool:
    return sum(w for _, w in accepted) > 0


class SiteLevelDP(DifferentialPrivacyClientSideFixedClipping):
    """Flower's client-side fixed-clipping DP wrapper around `FedGCKD`.

    Error replies are logged and set aside before the wrapper sees them: the
    wrapper would otherwise skip the whole round's aggregation for one failed
    site. Leaving a site out only removes its (bounded) term from the sum.

    The server optimiser steps here, on the wrapper's output: the aggregate
    with the central Gaussian noise added (never the raw sum, which is not
    a DP release).
    """

    def __init__(self, strategy: FedGCKD, *args, **kwargs):
        super().__init__(strategy, *args, **kwargs)
        strategy.step_after_noise = True

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        replies = list(replies)
        self.strategy.note_errors(self.strategy.real_round(server_round), [r for r in replies if r.has_error()])
        noised, metrics = super().aggregate_train(server_round, [r for r in replies if not r.has_error()])
        return self.strategy.server_step(noised or None), metrics
