"""`fedgckd site start`: run one site's Flower SuperNode against the operator's SuperLink."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import typer

from fedgckd.commands.common_options import CACHE_HELP, user_errors
from fedgckd.progress import console

app = typer.Typer(help="Run a site (a Flower SuperNode) in a deployed federation.", no_args_is_help=True)


@app.command()
def start(
    superlink: str = typer.Option(..., "--superlink", help="HOST:PORT of the operator's SuperLink."),
    data: Path = typer.Option(..., "--data", help="This site's data folder (one subfolder per domain)."),
    state: Path = typer.Option(..., "--state", help="This site's own folder: privacy ledger, teacher cache, Flower home."),
    partition_id: int = typer.Option(..., "--partition-id", help="Which share of the data this site holds (0-based)."),
    num_partitions: int = typer.Option(..., "--num-partitions", help="How many sites the federation has."),
    root_cert: Path = typer.Option(None, "--root-cert", help="The operator's CA certificate (ca.crt) for TLS."),
    key: Path = typer.Option(None, "--key", help="This site's OpenSSH EC private key (node authentication; the operator registered its .pub)."),
    insecure: bool = typer.Option(False, "--insecure", help="Connect without TLS (only for a SuperLink started with --insecure)."),
    port: int = typer.Option(9094, "--port", help="Port of this node's runtime API (give each node on a host its own)."),
    cache: Path = typer.Option(None, "--cache", help=CACHE_HELP),
    epsilon: float = typer.Option(None, "--epsilon", help="This site's own privacy budget (wins over the server's run config; never raised by it)."),
    delta: float = typer.Option(None, "--delta", help="This site's own delta."),
    privacy: str = typer.Option(None, "--privacy", help="Require this privacy mode (record, site or none); other runs are refused."),
    backbone: str = typer.Option(None, "--backbone", help="Backbone installed at this site (default: as the server names it)."),
    show: bool = typer.Option(False, "--print", help="Print the command and exit instead of running it."),
) -> None:
    """Start this site's SuperNode (runs in the foreground; stop it with Ctrl-C or SIGTERM)."""
    from client.supernode import NodeSettings, prepare
    from common.deploy.procs import flwr_env

    with user_errors():
        s = NodeSettings(superlink, partition_id, num_partitions, data, state, port, root_cert, key, insecure, cache,
                         epsilon, delta, privacy, backbone)
        argv = prepare(s)
    env = flwr_env(s.flwr_home)
    if show:
        console.print(f"FLWR_HOME={shlex.quote(str(s.flwr_home))} {shlex.join(argv)}", soft_wrap=True)
        return
    if s.insecure:
        console.print("[yellow]warning: no TLS and no node authentication (--insecure)[/]")
    os.chdir(s.state)
    os.execvpe(argv[0], argv, env)
