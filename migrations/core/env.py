"""Alembic environment of the ISPyB core subset: development, test and embedded databases only.

Never applied to a real ISPyB (``chimp-worker db upgrade`` refuses).
See chimp_worker/ispyb/schema.py.
"""

from chimp_worker.ispyb.schema import run_alembic_environment

run_alembic_environment("core")
