"""Map a function over items on all cores with a progress bar, results in input order."""

from __future__ import annotations

import multiprocessing as mp
import signal
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from typing import TypeVar

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

T = TypeVar("T")
R = TypeVar("R")


def progress_bar() -> Progress:
    """The one progress bar style of every long step."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())


def _default_signals() -> None:
    """Workers forked from a Prefect task inherit its SIGTERM handler; give them the default."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextmanager
def _pool(workers: int):
    """A fork pool whose workers finish their queue and exit (close + join, not terminate)."""
    pool = mp.get_context("fork").Pool(workers, initializer=_default_signals)
    try:
        yield pool
        pool.close()
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()


def chunks(items: Sequence[T], size: int) -> list[Sequence[T]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def map_with_progress(func: Callable[[T], R], items: Sequence[T], workers: int, description: str, chunksize: int = 16) -> list[R]:
    """`[func(x) for x in items]` across `workers` processes (fork), showing progress.

    Falls back to a plain loop for one worker or few items, where a pool costs more than it saves.
    """
    results: list[R] = []
    with progress_bar() as progress:
        task = progress.add_task(description, total=len(items))
        if workers <= 1 or len(items) < 2 * chunksize:
            for item in items:
                results.append(func(item))
                progress.advance(task)
            return results
        with _pool(workers) as pool:
            for result in pool.imap(func, items, chunksize=chunksize):
                results.append(result)
                progress.advance(task)
    return results


def run_chunks(func: Callable[[Sequence[T]], int], batches: Iterable[Sequence[T]], total: int, workers: int, description: str) -> None:
    """Run `func` on each batch across processes; `func` returns how many items it handled."""
    batches = list(batches)
    with progress_bar() as progress:
        task = progress.add_task(description, total=total)
        if workers <= 1 or len(batches) == 1:
            for batch in batches:
                progress.advance(task, func(batch))
            return
        with _pool(workers) as pool:
            for done in pool.imap_unordered(func, batches):
                progress.advance(task, done)
