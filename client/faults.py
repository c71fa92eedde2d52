"""Test-only fault injection at a site: dropouts, crashes, restarts and bad updates.

Off unless the environment variable ``FEDGCKD_FAULTS`` is set (it reaches
simulated sites through Ray's workers and deployed sites through the
SuperNode's ClientApp processes). Its value is JSON,
``{"site-K": {"ROUND": "KIND", ...}, ...}``; a kind applies to that site in
that server round. Nothing here can make a site train beyond its budget,
skip its ledger or send anything but (possibly broken) trainable arrays:
faults only remove work or break the update the server has to check.

Kinds:
- ``drop``: the site is unreachable for the round: its teacher query and its
  train message fail before anything is read or spent (no ledger entry);
- ``crash``: training dies after the ledger's write-ahead entry and before
  any DP step: the ledger keeps the *planned* spending with status
  "crashed" (an upper bound on what ran: nothing did);
- ``crash-late``: training dies after every step ran and before the reply is
  sent: the "crashed" entry is exactly what ran;
- ``restart``: the site restarts before the train message: its Flower state
  (``context.state``) is lost, its disk (ledger, teacher cache) is kept;
- ``nan`` / ``wrong-shape`` / ``oversized``: the reply's update is replaced
  *after* the site's own outbound check (a buggy or malicious site); the
  server must reject it with a reason and go on.
"""

from __future__ import annotations

import json
import os

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message

ENV = "FEDGCKD_FAULTS"
KINDS = ("drop", "crash", "crash-late", "restart", "nan", "wrong-shape", "oversized")
CORRUPTIONS = ("nan", "wrong-shape", "oversized")


class InjectedFault(RuntimeError):
    """A crash the test asked for."""


class SiteUnreachable(ConnectionError):
    """A dropout the test asked for."""


def plan() -> dict[str, dict[int, str]]:
    raw = os.environ.get(ENV, "")
    if not raw:
        return {}
    data = json.loads(raw)
    out = {str(site): {int(r): str(k) for r, k in rounds.items()} for site, rounds in data.items()}
    bad = [k for rounds in out.values() for k in rounds.values() if k not in KINDS]
    if bad:
        raise ValueError(f"{ENV}: unknown fault kinds {bad}; known: {', '.join(KINDS)}")
    return out


def lookup(msg: Message, context: Context) -> str | None:
    """The fault this site has in this message's round, if any."""
    faults = plan()
    if not faults:
        return None
    site = f"site-{int(context.node_config.get('partition-id', -1))}"
    configs = msg.content.config_records
    conf = next(iter(configs.values())) if configs else {}
    server_round = int(conf.get("server-round", -1)) if conf else -1
    return faults.get(site, {}).get(server_round)


def inject(msg: Message, context: Context, call_next) -> Message:
    """A ClientApp mod (put it first, outermost): dropouts and restarts before the site runs, corrupted
    updates after everything else (the clipping mod included). Does nothing unless FEDGCKD_FAULTS is set."""
    fault = lookup(msg, context)
    if fault is None:
        return call_next(msg, context)
    before(fault, context, query=msg.metadata.message_type != "train")
    return corrupt(fault, call_next(msg, context))


def before(fault: str | None, context: Context, query: bool = False) -> None:
    """Faults that strike before the site does anything."""
    if fault == "drop":
        raise SiteUnreachable("injected fault: the site is unreachable this round")
    if fault == "restart" and not query:
        for name in list(context.state.config_records):  # the Flower state is gone, the disk is kept
            del context.state[name]


def strike(msg: Message, context: Context, point: str) -> None:
    """Crash here if asked. `point`: "before-training" (after the write-ahead entry) or "after-training"."""
    fault = lookup(msg, context)
    if (fault, point) in (("crash", "before-training"), ("crash-late", "after-training")):
        raise InjectedFault(f"injected fault: the site crashed {point.replace('-', ' ')}")


def corrupt(fault: str | None, reply: Message) -> Message:
    """Replace the reply's update (in place) for the bad-update kinds; other replies pass unchanged."""
    if fault not in CORRUPTIONS or reply.has_error() or "arrays" not in reply.content.array_records:
        return reply
    arrays = {k: v.numpy() for k, v in reply.content["arrays"].items()}
    first = next(iter(arrays))
    if fault == "nan":
        arrays[first] = np.full_like(arrays[first], np.nan)
    elif fault == "wrong-shape":
        arrays[first] = np.zeros(tuple(arrays[first].shape) + (2,), dtype=arrays[first].dtype)
    else:
        arrays = {k: (v + 1e3).astype(v.dtype) for k, v in arrays.items()}
    reply.content["arrays"] = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})
    return reply
