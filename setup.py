"""Setuptools hook; all metadata lives in setup.cfg.

One thing needs code: the Alembic histories stay in the top-level ``migrations/`` folder of the
repository (where developers and ``alembic -c migrations/alembic.ini`` expect them), and a wheel
carries them inside the package as ``chimp_worker/migrations`` so that an installed worker can
run ``chimp-worker db upgrade`` from any directory. ``chimp_worker.ispyb.schema`` looks there
first and falls back to the source tree (editable installs).
"""

from __future__ import annotations

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
PACKAGED_AS = Path("chimp_worker") / "migrations"


def migration_files() -> list[Path]:
    """Every file of both histories (scripts, templates, the developers' alembic.ini)."""
    return sorted(
        path
        for path in MIGRATIONS.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    )


class BuildPyWithMigrations(build_py):
    """build_py that also copies migrations/ into the built package (not for editable)."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        for source in migration_files():
            target = Path(self.build_lib) / PACKAGED_AS / source.relative_to(MIGRATIONS)
            self.mkpath(str(target.parent))
            self.copy_file(str(source), str(target))

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outputs = super().get_outputs(include_bytecode)
        if getattr(self, "editable_mode", False):
            return outputs
        return outputs + [
            str(Path(self.build_lib) / PACKAGED_AS / source.relative_to(MIGRATIONS))
            for source in migration_files()
        ]


setup(cmdclass={"build_py": BuildPyWithMigrations})
