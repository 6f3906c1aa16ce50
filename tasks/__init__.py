"""Prefect tasks: thin, typed wrappers over multitag.stages that pass paths and hashes."""
