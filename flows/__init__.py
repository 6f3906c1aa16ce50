"""Prefect flows: short stories of a run, built from the tasks in `tasks/`."""
