"""A retraining run's context, built once at the start of the flow and handed to every feedback
task: the params file parsed once, the project layout, the task's feedback queue and prediction
log opened once, and the source's class list read once (every annotation file of a VOC folder).

Before it (issue 24), each task took a params path and parsed params.yaml, opened the queue and,
twice a night, read the whole dataset again for its class list. The pipeline stages keep their
params path: it is what their cache keys (tasks/caching.py) and `dvc repro` read.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from multitag.config import Params, load_params
from multitag.feedback import retraining
from multitag.feedback.predictions import PredictionLog
from multitag.feedback.queue import FeedbackQueue
from multitag.layout import Layout


class RunContext:
    """One retraining run's params, layout, queue, prediction log and class list. A plain class,
    not a dataclass, so Prefect passes it to tasks as it is instead of walking its fields."""

    def __init__(self, params_path: str | Path, layout: Layout = Layout()):
        self.params_path = str(params_path)
        self.params: Params = load_params(params_path)
        self.layout = layout

    @cached_property
    def queue(self) -> FeedbackQueue:
        """The task's handle on the feedback queue (only its own corrections)."""
        return retraining.open_queue(self.params)

    @cached_property
    def prediction_log(self) -> PredictionLog | None:
        """The served versions' logged answers, in the queue's database; None when logging is off."""
        hours = self.params.serve.prediction_log_hours
        return PredictionLog(self.queue.database, hours * 3600) if hours > 0 else None

    @cached_property
    def classes(self) -> list[str]:
        """The source's class list, as validation will derive it this run (params' list, else the data's)."""
        from multitag.data.sources import read_source

        return read_source(self.params.data).classes

    @property
    def task(self) -> str:
        """The registered model this run retrains: whose corrections it sees."""
        return self.params.registry.model_name

    def __repr__(self) -> str:  # what Prefect shows of a task's argument
        return f"RunContext({self.params_path!r}, task={self.task!r})"
