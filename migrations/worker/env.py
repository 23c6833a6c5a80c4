"""Alembic environment of the worker's own ``chimp_*`` tables: the only history a real ISPyB gets.

See chimp_worker/ispyb/schema.py.
"""

from chimp_worker.ispyb.schema import run_alembic_environment

run_alembic_environment("worker")
