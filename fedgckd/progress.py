"""Rich progress bars as plain callbacks, so that `common/` stays UI-free.

A bar appears at its first update, not before: a step that fails before it
starts (a missing folder, a junk file) prints its error alone, never an empty
``0/?`` bar. A bar that ends early says why, after the last count it reached:
``stopped: error (below)`` or ``stopped: interrupted``.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

from rich.console import Console
from rich.table import Column
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True)


def _info_text(info: dict | None) -> str:
    if not info:
        return ""
    return " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in info.items())


def stop_reason(ex: BaseException) -> str:
    """What a bar says when the step under it raised `ex`."""
    if isinstance(ex, KeyboardInterrupt):
        return "stopped: interrupted"
    code = getattr(ex, "exit_code", None)  # typer.Exit / click.exceptions.Exit
    if code == 0:
        return "stopped"
    return "stopped: error (below)"


@contextlib.contextmanager
def progress_bar(description: str) -> Iterator[Callable[..., None]]:
    """Yields `update(done, total, info=None)`; `info` (a dict) is shown after the bar."""
    whole = lambda width=0: Column(min_width=width, no_wrap=True)  # noqa: E731  (never cut counts or times)
    columns = (
        TextColumn("[bold]{task.description}", table_column=whole()),
        BarColumn(bar_width=None, table_column=Column(ratio=1, min_width=5)),
        MofNCompleteColumn(table_column=whole()),
        TimeElapsedColumn(table_column=whole(7)),
        TimeRemainingColumn(table_column=whole(7)),
        TextColumn("{task.fields[info]}", table_column=Column(ratio=2, no_wrap=True, overflow="ellipsis")),
    )
    state: dict = {}

    def update(done: int, total: int, info: dict | None = None) -> None:
        if "bar" not in state:
            state["bar"] = Progress(*columns, console=console, transient=False, expand=True)
            state["bar"].start()
            state["task"] = state["bar"].add_task(description, total=None, info="")
        state["bar"].update(state["task"], completed=done, total=total, info=_info_text(info))

    try:
        yield update
    except BaseException as ex:
        if "bar" in state:
            state["bar"].update(state["task"], info=stop_reason(ex))
        raise
    finally:
        if "bar" in state:
            state["bar"].stop()
