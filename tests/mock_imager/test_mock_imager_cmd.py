"""``chimp-worker mock-imager``: a plate in the configured database, events on RabbitMQ."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers.rabbit import RabbitProbe
from sqlalchemy import func, select

from chimp_worker.broker import BrokerOptions
from chimp_worker.cli import cli
from chimp_worker.config import Settings
from chimp_worker.events import InspectionCompleted, decode_event
from chimp_worker.ispyb import tables as t
from chimp_worker.ispyb.database import DatabaseOptions, make_engine
from chimp_worker.mock_imager.imager import PlateRequest, run_mock_imager


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def test_the_command_images_a_plate_on_a_schedule(ispyb_sqlite_url: str, tmp_path: Path) -> None:
    code, output = invoke(
        "--database-url", ispyb_sqlite_url,
        "mock-imager", "--barcode", "CQX-7", "--wells", "1", "--size", "253x203",
        "--schedule", "2", "--fault", "2=truncated", "--image-root", str(tmp_path),
    )  # fmt: skip
    assert code == 0, output
    assert "inspection 1 Completed: 2 images" in output
    assert "inspection 2 Completed: 2 images" in output
    assert "plate CQX-7: Container 1 (CrystalQuickX, vmxi), 2 drops, inspections 1, 2" in output
    assert f"CHIMP_IMAGE_ROOTS='[\"{tmp_path.resolve()}\"]'" in output
    truncated = tmp_path / "mx23456-1" / "imaging" / "1" / "2" / "4.jpg"
    whole = tmp_path / "mx23456-1" / "imaging" / "1" / "2" / "3.jpg"
    assert 0 < truncated.stat().st_size < whole.stat().st_size
    with make_engine(ispyb_sqlite_url).connect() as connection:
        states = connection.scalars(select(t.ContainerInspection.state)).all()
        assert states == ["Completed", "Completed"]


def test_the_command_refuses_bad_options_and_a_database_without_tables(
    sqlite_url: str, tmp_path: Path
) -> None:
    code, output = invoke("mock-imager", "--size", "10x10")
    assert code == 2
    assert "expected WIDTHxHEIGHT of at least 32x32" in output
    code, output = invoke("mock-imager", "--fault", "3=melted")
    assert code == 2
    assert "LOCATION=FAULT" in output
    sqlite3.connect(sqlite_url.removeprefix("sqlite:///")).close()  # a file without tables
    runner = CliRunner()
    result = runner.invoke(
        cli, ["--database-url", sqlite_url, "mock-imager", "--image-root", str(tmp_path)]
    )
    assert result.exit_code == 2, "a database without the schema is a configuration error"
    assert "run `chimp-worker db upgrade --target all` first" in result.output


@pytest.mark.rabbitmq
def test_published_events_name_each_completed_inspection(
    ispyb_sqlite_url: str, tmp_path: Path, amqp_url: str, queue_prefix: str
) -> None:
    settings = Settings(
        database_url=ispyb_sqlite_url,
        amqp_url=amqp_url,
        events_queue=f"{queue_prefix}.events",
        work_queue=f"{queue_prefix}.work",
        results_exchange=f"{queue_prefix}.results",
        results_queue=f"{queue_prefix}.results-ready",
    )
    probe = RabbitProbe(amqp_url)
    try:
        seen: list[tuple[int, str | None]] = []
        plate = run_mock_imager(
            DatabaseOptions.from_settings(settings),
            PlateRequest(
                barcode="CQX-EVT",
                image_root=tmp_path,
                wells=1,
                inspections=2,
                image_size=(253, 203),
            ),
            broker=BrokerOptions.from_settings(settings),
            on_inspection=lambda inspection, message_id: seen.append(
                (inspection.containerInspectionId, message_id)
            ),
        )
        assert probe.wait_for_count(settings.events_queue, 2) == 2
        events = [decode_event(message.body) for message in probe.take_all(settings.events_queue)]
        assert events == [
            InspectionCompleted(containerInspectionId=inspection_id, barcode="CQX-EVT")
            for inspection_id in plate.containerInspectionIds
        ]
        assert [inspection_id for inspection_id, _ in seen] == list(plate.containerInspectionIds)
        assert all(message_id for _, message_id in seen)
        with make_engine(ispyb_sqlite_url).connect() as connection:
            assert connection.scalar(select(func.count()).select_from(t.BLSampleImage)) == 4
    finally:
        probe.delete(settings)
        probe.close()
