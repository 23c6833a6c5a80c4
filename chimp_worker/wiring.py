"""Building the worker's parts from ``Settings``, in one place.

The parts themselves (``Pipeline``, the analysers, image sources, the database) take plain
arguments and know nothing of the settings; the daemon and the commands (``run``, ``replay``,
``analyse``, ``demo``, ``evaluate``, ``bench``...) call these functions instead of repeating
which setting goes where. Heavy imports (torch, SQLAlchemy, HTTP) happen inside, when a part
is built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from chimp_worker.log import get_logger

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from sqlalchemy.orm import Session, sessionmaker

    from chimp_worker.analysis import Analyser
    from chimp_worker.config import Settings
    from chimp_worker.hits.policy import HitPolicy
    from chimp_worker.images import ImageSource
    from chimp_worker.models import ChimpAnalyser
    from chimp_worker.pipeline import Pipeline

__all__ = [
    "make_analyser",
    "make_chimp_analyser",
    "make_database",
    "make_hit_policy",
    "make_image_source",
    "make_pipeline",
]

log = get_logger(__name__)


def make_chimp_analyser(settings: Settings) -> ChimpAnalyser:
    """The CHiMP models of the configured files (``detector_kinds.configured_model_files``),
    on the configured device and threads; imports torch."""
    from chimp_worker.models import ChimpAnalyser

    return ChimpAnalyser.from_settings(settings)


def make_analyser(settings: Settings) -> Analyser:
    """CHiMP models when model files are configured (or asked for), else the weight-free
    baseline; torch is imported only for CHiMP."""
    if settings.effective_analyser == "chimp":
        return make_chimp_analyser(settings)
    from chimp_worker.analysis import AnalysisOptions
    from chimp_worker.baseline import BaselineAnalyser

    analyser = BaselineAnalyser(AnalysisOptions.from_settings(settings))
    log.warning(
        "baseline_analyser_running",
        analyser=analyser.name,
        schema=analyser.schema_name,
        why="analyser=baseline" if settings.analyser == "baseline" else "no model files set",
        queueable_targets=settings.baseline_writes_targets,
        fix="set CHIMP_CLASSIFIER_PATH and CHIMP_DETECTOR_PATHS (or CHIMP_VMXI_DETECTOR_PATH / "
        "CHIMP_XCHEM_DETECTOR_PATH) for the CHiMP models",
    )
    return analyser


def make_image_source(settings: Settings) -> ImageSource:
    """Files under ``image_roots``, or HTTP(S) with ``image_url_template``."""
    from chimp_worker.images import ImageOptions
    from chimp_worker.images import make_image_source as build

    return build(ImageOptions.from_settings(settings))


def make_database(settings: Settings) -> tuple[Engine, sessionmaker[Session]]:
    """The engine of ``database_url`` and a session factory on it; the caller disposes of
    the engine."""
    from chimp_worker.ispyb.database import DatabaseOptions, engine_for, make_session_factory

    engine = engine_for(DatabaseOptions.from_settings(settings))
    return engine, make_session_factory(engine)


def make_hit_policy(settings: Settings) -> HitPolicy:
    """The hit rule and its thresholds (``hit_thresholds_file`` or the built-in ones)."""
    from chimp_worker.hits.policy import load_policy

    return load_policy(settings.hit_rule, settings.hit_thresholds_file)


def make_pipeline(
    settings: Settings,
    *,
    analyser: Analyser | None = None,
    image_source: ImageSource | None = None,
) -> Pipeline:
    """Database, image source, analyser and hit policy from settings; pass parts to replace
    them. The pipeline owns the engine (``Pipeline.close``)."""
    from chimp_worker.pipeline import Pipeline

    policy = make_hit_policy(settings)
    engine, session_factory = make_database(settings)
    return Pipeline(
        session_factory,
        image_source if image_source is not None else make_image_source(settings),
        analyser if analyser is not None else make_analyser(settings),
        batch_size=settings.batch_size,
        engine=engine,
        baseline_writes_targets=settings.baseline_writes_targets,
        image_deadline_s=settings.image_deadline_s,
        hit_policy=policy,
    )
