"""fedgckd ClientApp: one site.

Messages it answers:
- ``query.teacher``: the teacher heads and anchor embeddings of a new teacher
  version (once per version; cached in the site's state dir);
- ``train``: the global student's trainable arrays; replies with the trained
  arrays (clipped under site-level DP) and scalar metrics, or a refusal.

Test-only fault injection (`client.faults`) is off unless the environment
variable ``FEDGCKD_FAULTS`` is set.

Under site-level DP the server's wrapper puts ``clipping_norm`` in the train
config and Flower's `fixedclipping_mod` clips the update (the site also clips
by itself, so a missing key cannot make it send an unclipped update).
"""

from __future__ import annotations

import os
from typing import Any, Mapping

for _k, _v in {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
               "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "RAY_USAGE_STATS_ENABLED": "0",
               "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}.items():
    os.environ.setdefault(_k, _v)

import numpy as np  # noqa: E402
from flwr.app import Context, Message  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402
from flwr.clientapp.mod import fixedclipping_mod  # noqa: E402

from client import faults, task  # noqa: E402

CLIPPING_NORM = "clipping_norm"  # the key Flower's DP wrapper sends


def clip_when_asked(msg: Message, context: Context, call_next) -> Message:
    """Flower's fixedclipping_mod, applied only when the server's DP wrapper asked for it.

    A refusal (or an update equal to the broadcast) goes back as it is: there
    is nothing to clip, and Flower 1.42's mod divides by the update's norm
    (ZeroDivisionError on a zero update).
    """
    configs = msg.content.config_records
    if not (len(configs) == 1 and CLIPPING_NORM in next(iter(configs.values()))):
        return call_next(msg, context)
    reply = call_next(msg, context)
    if reply.has_error() or _unchanged(msg, reply):
        return reply
    return fixedclipping_mod(msg, context, lambda _m, _c: reply)


def _unchanged(msg: Message, reply: Message) -> bool:
    sent, back = msg.content.array_records, reply.content.array_records
    if len(sent) != 1 or len(back) != 1:
        return False
    a, b = next(iter(sent.values())), next(iter(back.values()))
    return list(a) == list(b) and all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)


def build_app(overrides: Mapping[str, Any] | None = None) -> ClientApp:
    """A ClientApp; `overrides` (run-config keys) stand in for the run config `run_simulation` leaves empty."""
    app = ClientApp()
    fixed = dict(overrides or {})

    # faults.inject: test-only fault injection, a no-op unless FEDGCKD_FAULTS is set
    @app.query("teacher", mods=[faults.inject])
    def teacher(msg: Message, context: Context) -> Message:
        return task.handle_query(msg, context, fixed)

    @app.train(mods=[faults.inject, clip_when_asked])
    def train(msg: Message, context: Context) -> Message:
        return task.handle_train(msg, context, fixed)

    return app


app = build_app()
