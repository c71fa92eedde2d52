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
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
    )
    state: dict = {}

    def update(done: int, total: int, info: dict | None = None) -> None:
        if "bar" not in state:
            state["bar"] = Progress(*columns, console=console, transient=False)
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
