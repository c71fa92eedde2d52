"""fedgckd ClientApp: one site.

Messages it answers:
- ``query.teacher``: the teacher heads and anchor embeddings of a new teacher
  version (once per version; cached in the site's state dir);
- ``train``: the global student's trainable arrays; replies with the trained
  arrays (clipped under site-level DP) and scalar metrics, or a refusal.

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

from flwr.app import Context, Message  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402
from flwr.clientapp.mod import fixedclipping_mod  # noqa: E402

from client import task  # noqa: E402

CLIPPING_NORM = "clipping_norm"  # the key Flower's DP wrapper sends


def clip_when_asked(msg: Message, context: Context, call_next) -> Message:
    """Flower's fixedclipping_mod, applied only when the server's DP wrapper asked for it."""
    configs = msg.content.config_records
    if len(configs) == 1 and CLIPPING_NORM in next(iter(configs.values())):
        return fixedclipping_mod(msg, context, call_next)
    return call_next(msg, context)


def build_app(overrides: Mapping[str, Any] | None = None) -> ClientApp:
    """A ClientApp; `overrides` (run-config keys) stand in for the run config `run_simulation` leaves empty."""
    app = ClientApp()
    fixed = dict(overrides or {})

    @app.query("teacher")
    def teacher(msg: Message, context: Context) -> Message:
        return task.handle_query(msg, context, fixed)

    @app.train(mods=[clip_when_asked])
    def train(msg: Message, context: Context) -> Message:
        return task.handle_train(msg, context, fixed)

    return app


app = build_app()
