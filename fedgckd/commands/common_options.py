"""Options and error handling shared by the commands."""

from __future__ import annotations

import contextlib
from typing import Iterator

import typer
from rich.markup import escape

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
        # soft_wrap: a long path stays one piece that can be copied; escape: the message is text, not markup
        console.print(f"[bold red]error:[/] {escape(str(e))}", soft_wrap=True)
        raise typer.Exit(2) from None
