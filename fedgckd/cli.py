"""The `fedgckd` command line: one entry point above common/, client/, server/ and simulations/."""

from __future__ import annotations

import os

# Nothing is ever fetched from a model hub: towers come from installed packages
# or from a folder the user names.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import typer  # noqa: E402

from fedgckd.commands import adapt as adapt_cmd  # noqa: E402
from fedgckd.commands import audit as audit_cmd  # noqa: E402
from fedgckd.commands import certs as certs_cmd  # noqa: E402
from fedgckd.commands import data as data_cmd  # noqa: E402
from fedgckd.commands import demo as demo_cmd  # noqa: E402
from fedgckd.commands import server as server_cmd  # noqa: E402
from fedgckd.commands import simulate as simulate_cmd  # noqa: E402
from fedgckd.commands import site as site_cmd  # noqa: E402
from fedgckd.commands import train as train_cmd  # noqa: E402

app = typer.Typer(
    name="fedgckd",
    help="Federated, privacy-preserving cross-dataset adaptation for text-to-image person retrieval.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
app.add_typer(data_cmd.app, name="data")
train_cmd.register(app)
adapt_cmd.register(app)
demo_cmd.register(app)
simulate_cmd.register(app)
audit_cmd.register(app)
app.add_typer(server_cmd.app, name="server")
app.add_typer(site_cmd.app, name="site")
app.add_typer(certs_cmd.app, name="certs")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
