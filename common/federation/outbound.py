"""What may leave a site (docs/privacy.md, section 3): the schema every reply is checked against.

A reply may carry
- one array record: exactly the configured trainable student parameters
  (names and shapes of the broadcast), nothing else; under ``update-codec=int8``
  each one's update in int8 followed by its ``#scale`` row scales
  (`common.federation.update_codec.reply_shapes` gives the expected names);
- scalar metrics from a fixed list of keys (ints and floats);
- a status record: ``status`` ("trained" / "refused") and a short ``reason``.

Which metrics depend on the privacy mode. Under DP (``record``, ``site``)
only values that are public parameters of the analysis may leave besides
the noised update: the site's partition id, the status, the ledger entries
(noise multipliers, sample rates, steps, epsilons) and a constant weight of
1 (every site counts the same; the site's record count is not released).
Without DP (``none``) the site also reports its record count (FedAvg's
weight) and its mean training loss.

Never allowed: embeddings, captions, ids of records, per-record values,
graph edges, lists (beyond `MAX_LIST`), arrays inside metrics.
The client runs `check_reply` on every reply before it is sent (fail
closed), and the tests run it on every message they capture.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

TRAINED, REFUSED = 0, 1
STATUS_NAMES = {TRAINED: "trained", REFUSED: "refused"}
MAX_LIST = 0  # no list-valued metrics at all
MAX_REASON = 300  # characters of a refusal reason

BASE_KEYS = {"site", "status", "num-examples", "server-round"}
NO_DP_KEYS = {"loss", "records"}
QUERY_KEYS = {"site", "teacher-received"}
_LEDGER_SUMMARY = {"round", "n", "unit", "accountant", "delta", "budget", "epsilon"}
_LEDGER_ENTRY = {"mechanism", "status", "steps", "clip_norm", "sensitivity", "noise_multiplier", "sample_rate",
                 "epsilon_so_far", "timestamp"}
_LEDGER_RE = re.compile(r"^ledger\.(?:(\d{1,2})\.)?([a-z_]+)$")
STATUS_KEYS = {"status", "reason"}


class OutboundViolation(RuntimeError):
    """A reply would carry something that must not leave the site."""


def metric_allowed(key: str, privacy: str) -> bool:
    if key in BASE_KEYS or (privacy == "none" and key in NO_DP_KEYS):
        return True
    m = _LEDGER_RE.match(key)
    if m and privacy != "none":
        return m.group(2) in (_LEDGER_ENTRY if m.group(1) is not None else _LEDGER_SUMMARY)
    return False


def _scalar(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_reply(arrays: Mapping[str, tuple] | None, metrics: Mapping[str, object], status: Mapping[str, object] | None,
                expected: Mapping[str, tuple] | None, privacy: str, kind: str = "train") -> list[str]:
    """Violations (empty = may be sent).

    arrays:   name -> shape of the reply's arrays (None: no array record)
    metrics:  the reply's metrics
    status:   the reply's status record (None: none)
    expected: name -> shape of the trainable student parameters (train replies)
    kind:     "train" or "query" (a query reply carries metrics only)
    """
    bad: list[str] = []
    if kind == "query":
        if arrays:
            bad.append("a query reply carries arrays")
        bad += [f"metric {k!r} not allowed in a query reply" for k in metrics if k not in QUERY_KEYS]
    else:
        if arrays is None or expected is None:
            bad.append("a train reply needs exactly the trainable arrays")
        elif list(arrays) != list(expected):
            bad.append(f"array names {list(arrays)[:6]} differ from the trainable set {list(expected)[:6]}")
        else:
            bad += [f"array {k!r} has shape {tuple(arrays[k])}, expected {tuple(expected[k])}"
                    for k in expected if tuple(arrays[k]) != tuple(expected[k])]
        bad += [f"metric {k!r} may not leave a site under privacy={privacy}" for k in metrics
                if not metric_allowed(k, privacy)]
    for k, v in metrics.items():
        if isinstance(v, list) and len(v) > MAX_LIST:
            bad.append(f"metric {k!r} is a list of {len(v)} values")
        elif not isinstance(v, list) and not _scalar(v):
            bad.append(f"metric {k!r} is not an int or float scalar ({type(v).__name__})")
    if status is not None:
        bad += [f"status field {k!r} not allowed" for k in status if k not in STATUS_KEYS]
        if status.get("status") not in STATUS_NAMES.values():
            bad.append(f"status {status.get('status')!r} is not one of {sorted(STATUS_NAMES.values())}")
        reason = status.get("reason", "")
        if not isinstance(reason, str) or len(reason) > MAX_REASON:
            bad.append("status reason must be a short string")
    return bad


def ensure_allowed(*args, **kwargs) -> None:
    """`check_reply`, raising OutboundViolation (the site then sends nothing)."""
    bad = check_reply(*args, **kwargs)
    if bad:
        raise OutboundViolation("reply blocked, it would leak: " + "; ".join(bad))
