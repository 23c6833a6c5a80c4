"""MariaDB failing under a running worker: its connection KILLed mid-transaction, a deadlock, a
lock-wait timeout, and the server unreachable for half a minute (blackholed by a TCP proxy --
the shared server itself is never stopped). Each time the whole unit of work is retried and
the plate ends exactly as without the fault."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from helpers.faults import (
    MARIADB_HOST,
    MARIADB_PORT,
    FaultWorld,
    WorkerPool,
    mariadb_admin,
    mariadb_url_for,
    wait_until,
)
from helpers.tcp_proxy import TcpProxy
from sqlalchemy import event
from sqlalchemy.engine import make_url

from chimp_worker.analysis import Analyser
from chimp_worker.ispyb.database import MYSQL_SOCKET_TIMEOUTS_S, make_engine

pytestmark = [pytest.mark.faults, pytest.mark.rabbitmq, pytest.mark.mariadb]


def database_name(world: FaultWorld) -> str:
    name = make_url(world.database_url).database
    assert name
    return name


@contextmanager
def held_result_row(world: FaultWorld, image_id: int) -> Iterator[Any]:
    """A transaction of the test's own holding the image's chimp_image_result row lock."""
    connection = mariadb_admin()
    connection.autocommit(False)
    cursor = connection.cursor()
    cursor.execute(f"USE `{database_name(world)}`")
    cursor.execute(
        "SELECT state FROM chimp_image_result WHERE blSampleImageId = %s FOR UPDATE", (image_id,)
    )
    assert cursor.fetchall() == (("pending",),), "the worker planned the image first"
    try:
        yield connection
    finally:
        connection.rollback()
        connection.close()


def lock_waiting_thread(world: FaultWorld, timeout_s: float = 30.0) -> int:
    """The server thread id of the worker connection waiting for a row lock in this database."""
    admin = mariadb_admin()
    try:
        found: list[int] = []

        def waiting() -> bool:
            cursor = admin.cursor()
            cursor.execute(
                "SELECT t.trx_mysql_thread_id FROM information_schema.INNODB_TRX t "
                "JOIN information_schema.PROCESSLIST p ON p.ID = t.trx_mysql_thread_id "
                "WHERE t.trx_state = 'LOCK WAIT' AND p.DB = %s",
                (database_name(world),),
            )
            found[:] = [row[0] for row in cursor.fetchall()]
            return len(found) == 1

        wait_until(waiting, timeout_s, "the worker to wait for the held row lock")
        return found[0]
    finally:
        admin.close()


def first_work_image(world: FaultWorld, worker: Any) -> int:
    """The image the worker writes first: the first of the batch it is analysing."""
    _, _, sources = world.hook_events.wait_for("analysing", worker=worker)
    first = sources.split(",")[0]
    return next(i.blSampleImageId for i in world.plate.latest.images if i.imageFullPath == first)


def retried_database_errors(worker: Any) -> list[str]:
    return [
        record["detail"]
        for record in worker.events("unit_retrying")
        if record.get("reason") == "database_unavailable"
    ]


def test_a_connection_killed_mid_transaction_is_rolled_back_and_the_unit_retried(
    world: FaultWorld, workers: WorkerPool, analyser: Analyser
) -> None:
    worker = workers.start(world.worker_env(), name="w1", hooks=world.hooks(analyse_pause_s=1))
    world.publish_inspection()
    image_id = first_work_image(world, worker)
    with held_result_row(world, image_id):
        thread_id = lock_waiting_thread(world)  # inside its write transaction, rows inserted
        admin = mariadb_admin()
        admin.cursor().execute(f"KILL CONNECTION {int(thread_id)}")
        admin.close()
        wait_until(lambda: retried_database_errors(worker), 20, "the worker to retry")
    world.wait_until_complete()
    assert worker.alive
    assert worker.stop() == 0
    world.check(analyser)  # nothing of the killed transaction survived (no orphan Position)
    assert any("2013" in d or "2006" in d for d in retried_database_errors(worker))


def test_a_deadlock_victim_is_retried_and_the_plate_ends_as_without_it(
    world: FaultWorld, workers: WorkerPool, analyser: Analyser
) -> None:
    name = database_name(world)
    setup = mariadb_admin()
    setup.cursor().execute(
        f"CREATE TABLE IF NOT EXISTS `{name}`.fault_ballast (id INT PRIMARY KEY) ENGINE=InnoDB"
    )
    setup.close()
    worker = workers.start(world.worker_env(), name="w1", hooks=world.hooks(analyse_pause_s=1))
    world.publish_inspection()
    image_id = first_work_image(world, worker)
    with held_result_row(world, image_id) as connection:
        cursor = connection.cursor()
        # InnoDB rolls back the lighter transaction: make the test's the heavier one.
        cursor.execute(f"DELETE FROM `{name}`.fault_ballast")
        cursor.executemany(
            f"INSERT INTO `{name}`.fault_ballast (id) VALUES (%s)", [(n,) for n in range(300)]
        )
        lock_waiting_thread(world)  # the worker holds BLSampleImage, wants chimp_image_result
        closing: list[BaseException] = []

        def close_the_cycle() -> None:
            try:
                connection.cursor().execute(
                    f"SELECT blSampleImageId FROM `{name}`.BLSampleImage "
                    "WHERE blSampleImageId = %s FOR UPDATE",
                    (image_id,),
                )
            except BaseException as error:
                closing.append(error)

        cycle = threading.Thread(target=close_the_cycle)
        cycle.start()
        cycle.join(30)
        assert not cycle.is_alive(), "the deadlock was not resolved"
        assert not closing, f"the test was the victim, not the worker: {closing}"
        wait_until(lambda: retried_database_errors(worker), 20, "the worker to retry")
    world.wait_until_complete()
    assert worker.stop() == 0
    world.check(analyser)
    assert any("1213" in detail for detail in retried_database_errors(worker))


def test_a_lock_wait_timeout_rolls_back_the_whole_unit_and_retries_it(
    world: FaultWorld, workers: WorkerPool, analyser: Analyser
) -> None:
    # 1205 rolls back only the statement: a worker that committed after catching it would
    # save half a result. Lock waits of one second make the timeout happen quickly.
    connect_args = json.dumps({"init_command": "SET SESSION innodb_lock_wait_timeout = 1"})
    worker = workers.start(
        world.worker_env(database_connect_args=connect_args),
        name="w1",
        hooks=world.hooks(analyse_pause_s=1),
    )
    world.publish_inspection()
    image_id = first_work_image(world, worker)
    with held_result_row(world, image_id):
        wait_until(lambda: len(retried_database_errors(worker)) >= 2, 30, "two lock timeouts")
    world.wait_until_complete()
    assert worker.stop() == 0
    world.check(analyser)
    assert all("1205" in detail for detail in retried_database_errors(worker))


def test_the_database_unreachable_for_30_s_is_waited_out_without_losing_the_message(
    world: FaultWorld, workers: WorkerPool, analyser: Analyser
) -> None:
    with TcpProxy(MARIADB_HOST, MARIADB_PORT) as proxy:
        via_proxy = make_url(world.database_url).set(host="127.0.0.1", port=proxy.port)
        timeouts = json.dumps({"connect_timeout": 3, "read_timeout": 5, "write_timeout": 5})
        worker = workers.start(
            world.worker_env(
                database_url=via_proxy.render_as_string(hide_password=False),
                database_connect_args=timeouts,
            ),
            name="w1",
            hooks=world.hooks(analyse_pause_s=1),
        )
        world.publish_inspection()
        first_work_image(world, worker)
        proxy.blackhole()
        outage_started = time.monotonic()
        wait_until(lambda: retried_database_errors(worker), 20, "the worker to notice")
        noticed_after = time.monotonic() - outage_started
        time.sleep(max(0.0, 30 - (time.monotonic() - outage_started)))
        assert world.settled_images() < len(world.image_ids), "the outage came mid-plate"
        proxy.restore()
        world.wait_until_complete(120)
        assert worker.alive
        assert worker.stop() == 0
    world.check(analyser)
    assert noticed_after < 20, "a silent server is noticed by timeouts, not waited on for ever"
    requeued = worker.events("message_requeued")
    assert all(r.get("reason") == "database_unavailable" for r in requeued)


def test_mariadb_connections_time_out_by_default_and_settings_override_it(
    faults_database: str,
) -> None:
    """The default that keeps a silent server from hanging a worker thread for ever."""
    engine = make_engine(mariadb_url_for(faults_database), {"read_timeout": 7})
    used: dict[str, Any] = {}

    @event.listens_for(engine, "do_connect")
    def capture(_dialect: Any, _record: Any, _args: Any, params: dict[str, Any]) -> None:
        used.update(params)

    with engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT 1").scalar() == 1
    engine.dispose()
    timeouts = {key: used[key] for key in MYSQL_SOCKET_TIMEOUTS_S}
    assert timeouts == {"connect_timeout": 10, "read_timeout": 7, "write_timeout": 60}
