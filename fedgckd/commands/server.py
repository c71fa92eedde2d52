"""`fedgckd server ...`: the operator's side of a deployment (SuperLink, node registration, runs)."""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

import typer

from fedgckd.commands.common_options import user_errors
from fedgckd.progress import console

app = typer.Typer(help="Run the federation server (a Flower SuperLink), register sites, submit runs.",
                  no_args_is_help=True)
SERVER_PATHS = ("data-dir", "teacher", "cache-dir", "out-dir")  # run-config paths the server reads or writes
StateOpt = typer.Option(..., "--state", help="The operator's folder (SuperLink state, CLI connection, staged app, run configs).")


@app.command()
def start(
    state: Path = StateOpt,
    certs: Path = typer.Option(None, "--certs", help="Folder made by `fedgckd certs make` (ca.crt, server.pem, server.key)."),
    ca_cert: Path = typer.Option(None, "--ca-cert", help="CA certificate (instead of --certs)."),
    cert: Path = typer.Option(None, "--cert", help="The SuperLink's certificate (instead of --certs)."),
    key: Path = typer.Option(None, "--key", help="The SuperLink's private key (instead of --certs)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (Fleet, Control and Runtime APIs share one port)."),
    port: int = typer.Option(9092, "--port", help="Port to listen on."),
    insecure: bool = typer.Option(False, "--insecure", help="Plain HTTP, no TLS and no node authentication (tests on one machine only)."),
    node_auth: bool = typer.Option(True, "--node-auth/--no-node-auth", help="Only registered SuperNode keys may join (needs TLS)."),
    show: bool = typer.Option(False, "--print", help="Print the command and exit instead of running it."),
) -> None:
    """Start the SuperLink (runs in the foreground; stop it with Ctrl-C or SIGTERM)."""
    from common.deploy.procs import flwr_env
    from server.superlink import LinkSettings, prepare, with_certs_dir

    with user_errors():
        files = with_certs_dir(certs)
        files.update({k: v for k, v in (("ca_cert", ca_cert), ("cert", cert), ("key", key)) if v is not None})
        s = LinkSettings(state, host, port, insecure=insecure, node_auth=node_auth and not insecure, **files)
        argv = prepare(s)
    env = flwr_env(s.link_home)
    if show:
        console.print(f"FLWR_HOME={shlex.quote(str(s.link_home))} {shlex.join(argv)}", soft_wrap=True)
        return
    if insecure:
        console.print("[yellow]warning: no TLS and no node authentication (--insecure)[/]")
    os.chdir(s.link_home)
    os.execvpe(argv[0], argv, env)


@app.command()
def register(
    keys: list[Path] = typer.Argument(..., help="Public keys (KEY.pub, OpenSSH EC) of the sites allowed to join."),
    state: Path = StateOpt,
) -> None:
    """Register SuperNode public keys with the running SuperLink (`flwr supernode register`)."""
    from server.submit import RunFailed, register_node
    from server.superlink import read_server_info

    with user_errors():
        read_server_info(state)
        for k in keys:
            if not k.is_file():
                raise FileNotFoundError(f"{k} not found")
        try:
            ids = {str(k): register_node(state.resolve() / "cli", k) for k in keys}
        except RunFailed as ex:
            console.print(f"[bold red]error:[/] {ex}")
            raise typer.Exit(1) from None
    for k, node in ids.items():
        console.print(f"registered {k}: node id {node}")


@app.command()
def run(
    state: Path = StateOpt,
    config: list[Path] = typer.Option(None, "--config", help="TOML file(s) of run-config keys (e.g. simulations/configs/*.toml)."),
    pairs: list[str] = typer.Option(None, "-c", "--run-config", help="KEY=VALUE pairs as for `flwr run -c` (repeatable; wins over --config)."),
    timeout: float = typer.Option(3600, "--timeout", help="Seconds to wait for the run to finish; then it is stopped and counts as failed."),
    app_dir: Path = typer.Option(None, "--app", help="The fedgckd checkout to bundle (default: where this fedgckd is installed from)."),
    json_out: Path = typer.Option(None, "--json", help="Also write the final status as JSON here."),
) -> None:
    """Submit a federated run and wait; the exit code follows the run's status (finished:completed = 0)."""
    from server.submit import RunFailed, fetch_log, merge_run_config, submit_and_wait
    from server.superlink import read_server_info

    with user_errors():
        read_server_info(state)
        rc = merge_run_config(pairs or [], config or [])
        for key in SERVER_PATHS:  # the ServerApp runs in the SuperLink's folder: paths relative to here would break
            if isinstance(rc.get(key), str) and rc[key] and not Path(rc[key]).is_absolute():
                rc[key] = str(Path(rc[key]).resolve())
        try:
            st = submit_and_wait(state, rc, timeout, app_dir,
                                 on_status=lambda s: console.print(f"run {s.run_id}: {s.status} {s.details}".rstrip()))
        except RunFailed as ex:
            console.print(f"[bold red]error:[/] {ex}")
            raise typer.Exit(1) from None
    result = {"run-id": st.run_id, "status": st.status, "details": st.details}
    if json_out:
        from common.atomic import atomic_write_json

        atomic_write_json(json_out, result)
    console.print(json.dumps(result), soft_wrap=True)
    if not st.ok:
        tail = fetch_log(state.resolve() / "cli", st.run_id)[-4000:]
        console.print(f"[bold red]run {st.run_id} did not complete: {st.status}[/]\n{tail}", soft_wrap=True)
        raise typer.Exit(1)


@app.command()
def status(
    run_id: int = typer.Argument(..., help="The run's id (printed by `fedgckd server run`)."),
    state: Path = StateOpt,
) -> None:
    """A run's status as the SuperLink reports it (exit 0: finished:completed, 1: failed or stopped, 3: not finished)."""
    from server.submit import RunFailed, run_status

    with user_errors():
        try:
            st = run_status(state.resolve() / "cli", run_id)
        except RunFailed as ex:
            console.print(f"[bold red]error:[/] {ex}")
            raise typer.Exit(1) from None
    console.print(json.dumps({"run-id": st.run_id, "status": st.status, "details": st.details}), soft_wrap=True)
    if not st.ok:
        raise typer.Exit(1 if st.finished else 3)
