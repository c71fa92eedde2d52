"""A sequential, in-process federation engine: no Ray, no SuperLink, one Python process.

`InProcessGrid` is a Flower `Grid` that hands every message straight to a
`ClientApp` with that node's `Context` (node config, persistent state) and
returns its reply; an exception in the ClientApp becomes an error reply, as
Flower's engines report it. Nodes can be taken offline (a dropout: they are
not listed as connected, and a message to one gets an error reply) and
their Flower state can be wiped (a restart that keeps the site's disk).

`run_inprocess` runs the real ServerApp body (`server.app.run`) against the
real ClientApp (`client.app.build_app`) on it. It is what the fault tests use:
a two-round federation costs seconds instead of Ray's start-up, monkeypatching
reaches the sites, and the outcome is deterministic. It is also handy for
debugging a run step by step. Per-node node config stands in for
``flower-supernode --node-config`` (e.g. a site's own ``data-dir``).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from typing import Any, Callable

from flwr.app import Context, Error, Message, RecordDict
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

from common.federation.config import FedConfig

RUN_ID = 1


class InProcessGrid(Grid):
    def __init__(self, client_app, node_configs: list[Mapping[str, Any]], run_config: Mapping[str, Any] | None = None):
        if TaskIdentity._run_id is None:  # Flower's Message needs a task identity in this process
            TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = RUN_ID, 0, 1
        self.app = client_app
        self.contexts = {i + 1: Context(run_id=RUN_ID, node_id=i + 1, node_config=dict(nc), state=RecordDict(),
                                        run_config=dict(run_config or {}))
                         for i, nc in enumerate(node_configs)}
        self.offline: set[int] = set()
        self.sent: list[tuple[int, str]] = []  # (node, message type) in order
        self._ids = itertools.count(1)

    # -- faults the engine itself can cause ----------------------------------------------------
    def node_of(self, partition_id: int) -> int:
        return next(n for n, c in self.contexts.items() if int(c.node_config["partition-id"]) == partition_id)

    def set_offline(self, partition_id: int, offline: bool = True) -> None:
        (self.offline.add if offline else self.offline.discard)(self.node_of(partition_id))

    def restart(self, partition_id: int) -> None:
        """The node's process restarts: Flower state gone, disk kept."""
        ctx = self.contexts[self.node_of(partition_id)]
        self.contexts[ctx.node_id] = Context(run_id=ctx.run_id, node_id=ctx.node_id, node_config=ctx.node_config,
                                             state=RecordDict(), run_config=ctx.run_config)

    # -- Grid ----------------------------------------------------------------------------------
    def set_run(self, run) -> None:
        self._run = run

    @property
    def run(self):
        return getattr(self, "_run", None)

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        return Message(content=content, message_type=message_type, dst_node_id=dst_node_id, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return [n for n in self.contexts if n not in self.offline]

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        raise NotImplementedError("InProcessGrid answers in send_and_receive")

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        raise NotImplementedError("InProcessGrid answers in send_and_receive")

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return [self._deliver(m) for m in messages]

    def _deliver(self, msg: Message) -> Message:
        node = msg.metadata.dst_node_id
        self.sent.append((node, msg.metadata.message_type))
        if node in self.offline or node not in self.contexts:
            return Message(Error(code=ErrorCode.NODE_UNAVAILABLE, reason="node offline"), reply_to=msg)
        try:
            return self.app(message=msg, context=self.contexts[node])
        except Exception as ex:  # noqa: BLE001  (Flower turns a ClientApp exception into an error reply)
            return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION,
                                 reason=f"<class '{type(ex).__name__}'>:<'{ex}'>"), reply_to=msg)


def node_configs(cfg: FedConfig, extra: Mapping[int, Mapping[str, Any]] | None = None) -> list[dict]:
    """One node config per site: partition id and count, plus `extra[k]` for site k."""
    extra = extra or {}
    return [{"partition-id": k, "num-partitions": cfg.sites, **dict(extra.get(k, {}))} for k in range(cfg.sites)]


def run_inprocess(cfg: FedConfig, extra_node_config: Mapping[int, Mapping[str, Any]] | None = None,
                  on_round: Callable[[int, int, dict], None] | None = None,
                  grid_hook: Callable[[InProcessGrid], None] | None = None) -> tuple[dict, InProcessGrid]:
    """Run the federation in this process; returns (server.app.run's result, the grid)."""
    from client.app import build_app as build_client
    from server.app import run as run_server

    cfg.validate()
    overrides = cfg.to_run_config()
    grid = InProcessGrid(build_client(overrides), node_configs(cfg, extra_node_config))
    if grid_hook:
        grid_hook(grid)
    return run_server(grid, {}, overrides, on_round), grid
