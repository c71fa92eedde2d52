"""A site's side of a deployment: the Flower SuperNode's command line.

`fedgckd site start` runs one ``flower-supernode`` per
site (STACK.md section 7):
- ``--superlink HOST:PORT`` and TLS with ``--root-certificates ca.crt`` (the
  operator's CA); plain HTTP (``--insecure``) only when asked for;
- ``--auth-supernode-private-key KEY``: the site's EC key in OpenSSH format,
  whose public half the operator registered (an unregistered key is refused:
  the SuperNode exits, "Exit Code: 305", and the SuperLink logs "No SuperNode
  found with the given public key");
- ``--node-config``: the site's own settings, which the ClientApp reads
  (`common.federation.site_settings`): ``partition-id``, ``num-partitions``,
  ``data-dir``, ``state-dir`` (ledger, teacher cache), ``cache-dir``, and
  optionally the site's own ``epsilon``/``delta``/``privacy`` (they win over
  anything the server sends: a site's budget is its own);
- its own ``--port`` for the node's runtime API (one per node on a host);
- ``FLWR_HOME=STATE/flwr`` (installed app bundles), in the site's state folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from common.deploy.certs import check_node_key
from common.deploy.procs import bin_path


@dataclass
class NodeSettings:
    superlink: str  # HOST:PORT of the SuperLink
    partition_id: int
    num_partitions: int
    data: Path
    state: Path
    port: int = 9094
    root_cert: Path | None = None
    key: Path | None = None  # OpenSSH EC private key (node authentication)
    insecure: bool = False
    cache: Path | None = None
    epsilon: float | None = None
    delta: float | None = None
    privacy: str | None = None
    backbone: str | None = None

    def __post_init__(self):
        for name in ("data", "state", "root_cert", "key", "cache"):
            v = getattr(self, name)
            if v is not None:
                setattr(self, name, Path(v).expanduser().resolve())
        if ":" not in self.superlink:
            raise ValueError(f"--superlink must be HOST:PORT, got {self.superlink!r}")
        if not 0 <= self.partition_id < self.num_partitions:
            raise ValueError(f"partition id {self.partition_id} is outside 0..{self.num_partitions - 1}")
        if self.insecure:
            if self.root_cert is not None or self.key is not None:
                raise ValueError("--insecure cannot be combined with --root-cert or --key (TLS and node "
                                 "authentication need each other); drop --insecure")
        elif self.root_cert is None:
            raise ValueError("TLS needs the operator's CA certificate (--root-cert ca.crt); pass --insecure "
                             "explicitly to connect without TLS")
        elif not self.root_cert.is_file():
            raise FileNotFoundError(f"{self.root_cert} not found")
        if self.key is not None:
            check_node_key(self.key)
        if not self.data.is_dir():
            raise FileNotFoundError(f"data folder {self.data} not found")

    @property
    def flwr_home(self) -> Path:
        return self.state / "flwr"


def _toml_str(v: str) -> str:
    """A value for flwr's node-config parser: a quoted TOML string without spaces breaking the pair."""
    if "'" not in v:
        return f"'{v}'"
    if '"' not in v:
        return json.dumps(v)
    raise ValueError(f"{v!r}: a path with both quote characters cannot travel in --node-config")


def node_config(s: NodeSettings) -> str:
    items: dict[str, object] = {"partition-id": s.partition_id, "num-partitions": s.num_partitions,
                                "data-dir": str(s.data), "state-dir": str(s.state)}
    if s.cache is not None:
        items["cache-dir"] = str(s.cache)
    for key in ("epsilon", "delta"):
        if getattr(s, key) is not None:
            items[key] = float(getattr(s, key))
    for key in ("privacy", "backbone"):
        if getattr(s, key):
            items[key] = str(getattr(s, key))
    return " ".join(f"{k}={_toml_str(v) if isinstance(v, str) else repr(v)}" for k, v in items.items())


def supernode_argv(s: NodeSettings) -> list[str]:
    argv = [bin_path("flower-supernode"), "--superlink", s.superlink, "--port", str(s.port),
            "--node-config", node_config(s)]
    if s.insecure:
        argv.append("--insecure")
    else:
        argv += ["--root-certificates", str(s.root_cert)]
    if s.key is not None:
        argv += ["--auth-supernode-private-key", str(s.key)]
    return argv


def prepare(s: NodeSettings) -> list[str]:
    s.state.mkdir(parents=True, exist_ok=True)
    s.flwr_home.mkdir(parents=True, exist_ok=True)
    return supernode_argv(s)
