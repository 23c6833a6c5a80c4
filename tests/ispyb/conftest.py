"""Fixtures: a session factory on a fresh seeded database (both backends) and a small plate."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from helpers.ispyb_rows import Plate, add_plate
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from chimp_worker.ispyb.database import make_engine, make_session_factory


@pytest.fixture
def engine(ispyb_url: str) -> Iterator[Engine]:
    engine = make_engine(ispyb_url)
    yield engine
    engine.dispose()


@pytest.fixture
def factory(engine: Engine) -> sessionmaker[Session]:
    return make_session_factory(engine)


@pytest.fixture
def plate(factory: sessionmaker[Session]) -> Plate:
    return add_plate(factory)
