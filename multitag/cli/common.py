"""What every command group shares: where output goes, how a domain error ends a command, the
`--params` option, the workspace lock, and the feedback queue of the configured task."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.text import Text
from typer.core import TyperGroup

from multitag.config import load_params
from multitag.errors import MultitagError
from multitag.workspace import exclusive_run

if TYPE_CHECKING:
    pass


out = Console()  # what a command produces: tables, reports, JSON
console = Console(stderr=True)  # what it says about its progress and problems

P = ParamSpec("P")
R = TypeVar("R")


class Commands(TyperGroup):
    """Every command ends a domain error the same way: its message in red, exit code 1.
    Anything else is a bug and keeps its traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except MultitagError as err:
            console.print(Text(f"{type(err).__name__}: {err}", style="red"))
            raise typer.Exit(1) from None


ParamsOption = typer.Option(Path("params.yaml"), "--params", help="Parameters file.")


def exclusive(command: Callable[P, R]) -> Callable[P, R]:
    """The command holds the workspace while it runs: one pipeline run at a time (multitag.workspace)."""

    @functools.wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        with exclusive_run(f"multitag {command.__name__.replace('_', ' ')}"):
            return command(*args, **kwargs)

    return run


def queue_of(params_path: Path):
    """The queue of the task params.yaml names (its registered model): every feedback command sees that task's items."""
    from multitag.feedback.retraining import open_queue

    return open_queue(load_params(params_path))


def rate(value: float | None) -> str:
    """A share for a table: three decimals, or '-' when there was nothing to count."""
    return "-" if value is None else f"{value:.3f}"
