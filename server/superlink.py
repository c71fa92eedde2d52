"""The operator's side of a deployment: the Flower SuperLink's command line and the CLI's connection file.

`fedgckd server start` runs ``flower-superlink`` (STACK.md section 7) with
- TLS: ``--ssl-ca-certfile ca.crt --ssl-certfile server.pem --ssl-keyfile server.key``;
- node authentication: ``--enable-supernode-auth`` (only registered SuperNode
  keys may join; register with `fedgckd server register`, i.e. ``flwr
  supernode register KEY.pub``). Flower refuses it together with ``--insecure``;
- one HTTP port for the Fleet, Control and Runtime APIs (``--host/--port``);
- its state in ``STATE/link/state.db`` and ``FLWR_HOME=STATE/link``;
- no per-run ``uv sync`` of app dependencies
  (``--disable-runtime-dependency-installation``).
Plain HTTP (``--insecure``, no node authentication) only when asked for.

It also writes ``STATE/cli/config.toml``, the ``flwr`` CLI's connection
(federation ``fedgckd``: address, and root certificates or ``insecure``), that
`fedgckd server register` / `server run` use with ``FLWR_HOME=STATE/cli``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from common.atomic import atomic_write_bytes, read_json
from common.deploy.procs import bin_path

FEDERATION = "fedgckd"  # the connection name in STATE/cli/config.toml


@dataclass
class LinkSettings:
    state: Path  # the operator's folder: link/ (SuperLink home + database), cli/ (flwr CLI home), runs/
    host: str = "127.0.0.1"
    port: int = 9092
    ca_cert: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    insecure: bool = False
    node_auth: bool = True

    def __post_init__(self):
        self.state = Path(self.state).expanduser().resolve()
        for name in ("ca_cert", "cert", "key"):
            v = getattr(self, name)
            if v is not None:
                setattr(self, name, Path(v).expanduser().resolve())
        if self.insecure:
            if self.node_auth:
                raise ValueError("node authentication needs TLS: pass --no-node-auth with --insecure "
                                 "(Flower refuses --enable-supernode-auth together with --insecure)")
        else:
            missing = [n for n in ("ca_cert", "cert", "key") if getattr(self, n) is None]
            if missing:
                raise ValueError(f"TLS needs the CA certificate, the server certificate and its key (missing: "
                                 f"{', '.join(missing)}); make test ones with `fedgckd certs make`, or pass --insecure "
                                 "explicitly to run without TLS")
            absent = [str(getattr(self, n)) for n in ("ca_cert", "cert", "key") if not getattr(self, n).is_file()]
            if absent:
                raise FileNotFoundError(f"not found: {', '.join(absent)}")

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def link_home(self) -> Path:
        return self.state / "link"

    @property
    def cli_home(self) -> Path:
        return self.state / "cli"


def with_certs_dir(certs: Path | str | None) -> dict:
    """ca.crt, server.pem, server.key of a folder made by `fedgckd certs make` (absent: {})."""
    if certs is None:
        return {}
    certs = Path(certs)
    return {"ca_cert": certs / "ca.crt", "cert": certs / "server.pem", "key": certs / "server.key"}


def superlink_argv(s: LinkSettings) -> list[str]:
    argv = [bin_path("flower-superlink"), "--host", s.host, "--port", str(s.port),
            "--database", str(s.link_home / "state.db"), "--disable-runtime-dependency-installation"]
    if s.insecure:
        argv.append("--insecure")
    else:
        argv += ["--ssl-ca-certfile", str(s.ca_cert), "--ssl-certfile", str(s.cert), "--ssl-keyfile", str(s.key)]
    if s.node_auth:
        argv.append("--enable-supernode-auth")
    return argv


def cli_config_toml(s: LinkSettings) -> str:
    lines = ["[superlink]", f'default = "{FEDERATION}"', "", f"[superlink.{FEDERATION}]",
             f"address = {json.dumps(s.address)}"]
    lines.append("insecure = true" if s.insecure else f"root-certificates = {json.dumps(str(s.ca_cert))}")
    return "\n".join(lines) + "\n"


def prepare(s: LinkSettings) -> list[str]:
    """Create the operator's folders and the CLI connection file; returns the SuperLink's argv."""
    s.link_home.mkdir(parents=True, exist_ok=True)
    s.cli_home.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(s.cli_home / "config.toml", cli_config_toml(s).encode())
    info = {"address": s.address, "insecure": s.insecure, "node_auth": s.node_auth,
            "root_certificates": None if s.ca_cert is None else str(s.ca_cert)}
    atomic_write_bytes(s.state / "server.json", (json.dumps(info, indent=2) + "\n").encode())
    return superlink_argv(s)


def read_server_info(state: Path | str) -> dict:
    """What `prepare` recorded about the SuperLink (address, TLS); raises if `fedgckd server start` never ran here."""
    path = Path(state).expanduser().resolve() / "server.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `fedgckd server start --state {state} ...` first")
    return read_json(path)
