"""When a Prefect task is tried again: only after a failure that a second try can fix.

A stage that failed because its inputs, params or code are wrong fails the same way every time:
validation refused the data, an input is missing, the verdict is stale, or a stage's subprocess
exited with an error (a training whose weights file does not exist). Retried twice, such a
failure cost a failed nightly two more trainings' starts, 10 s of waiting and the same error
logged three times. An I/O error may pass on the next try: a network share, a locked database,
an unreachable registry or tracking server.
"""

from __future__ import annotations

import subprocess

from prefect.client.schemas.objects import TaskRun
from prefect.states import State

from multitag.errors import MultitagError, RegistryUnavailableError


def worth_retrying(task: object, task_run: TaskRun, state: State) -> bool:
    """Prefect's retry_condition_fn: retry unless the task failed on the work itself."""
    error = state.data
    if isinstance(error, RegistryUnavailableError):  # the one domain error that is about reaching a store
        return True
    return not isinstance(error, MultitagError | subprocess.CalledProcessError)


RETRIED = {"retries": 2, "retry_delay_seconds": 5, "retry_condition_fn": worth_retrying}
