"""Options and error handling shared by the commands."""

from __future__ import annotations

import contextlib
from typing import Iterator

import typer

from common.data.records import DataError
from fedgckd.progress import console

BACKBONE_HELP = "Backbone: minilm-effnet (default for results), tiny (small random towers, tests/demo), or clip:PATH."
CACHE_HELP = "Folder for cached frozen-trunk features (default: $FEDGCKD_CACHE or ~/.cache/fedgckd)."

CacheOpt = typer.Option(None, "--cache", help=CACHE_HELP)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn expected bad-input errors into a one-line message and exit code 2."""
    try:
        yield
    except (DataError, FileNotFoundError, ValueError) as e:
        console.print(f"[bold red]error:[/] {e}")
        raise typer.Exit(2) from None
