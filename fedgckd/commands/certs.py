"""`fedgckd certs ...`: a local test CA, the SuperLink's certificate and SuperNode keys."""

from __future__ import annotations

from pathlib import Path

import typer

from fedgckd.commands.common_options import user_errors
from fedgckd.progress import console

app = typer.Typer(help="Test certificates (TLS) and SuperNode authentication keys for a deployment.",
                  no_args_is_help=True)


@app.command()
def make(
    out: Path = typer.Option(..., "--out", help="Folder for ca.crt, ca.key, server.pem, server.key and keys/."),
    sites: int = typer.Option(0, "--sites", help="Also make this many SuperNode keys: keys/site-K and keys/site-K.pub."),
    ip: list[str] = typer.Option(None, "--ip", help="IP address the SuperLink is reached at (repeatable; default 127.0.0.1 and ::1)."),
    dns: list[str] = typer.Option(None, "--dns", help="Host name the SuperLink is reached at (repeatable; default localhost)."),
    days: int = typer.Option(365, "--days", help="Validity of the CA and the server certificate."),
) -> None:
    """A self-signed test CA and a SuperLink certificate it signs (subjectAltName: the --ip and --dns given)."""
    from common.deploy.certs import DEFAULT_DNS, DEFAULT_IPS, make_node_key, make_server_pki

    with user_errors():
        pki = make_server_pki(out, tuple(ip or DEFAULT_IPS), tuple(dns or DEFAULT_DNS), days)
        keys = [make_node_key(out / "keys" / f"site-{k}", comment=f"site-{k}") for k in range(sites)]
    console.print(f"CA {pki.ca_cert} (give to every site and to the CLI), server certificate {pki.cert}, key {pki.key}")
    for k in keys:
        console.print(f"node key {k.private} (stays at the site), public {k.public} (register it: "
                      "fedgckd server register)")
    console.print("[yellow]a test CA: keep ca.key private; for a real federation use your organisation's CA[/]")


@app.command("node-key")
def node_key(
    out: Path = typer.Option(..., "--out", help="Private key file; the public key goes to OUT.pub."),
    comment: str = typer.Option("", "--comment", help="Comment at the end of the public key (e.g. the site's name)."),
) -> None:
    """An EC P-384 key pair in OpenSSH format for SuperNode authentication (Flower rejects ed25519)."""
    from common.deploy.certs import make_node_key

    with user_errors():
        k = make_node_key(out, comment)
    console.print(f"wrote {k.private} and {k.public}")
