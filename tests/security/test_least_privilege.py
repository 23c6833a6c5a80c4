"""The worker runs with exactly the grants docs/facility.md lists: the GRANT statements are read
from that page itself, applied for a new user on a facility's full ISPyB, and a real worker
process takes a plate through with that user."""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import MySQLdb
import pytest
from helpers.faults import REPO, FaultWorld, WorkerPool, mariadb_admin, mariadb_url_for
from sqlalchemy.engine import make_url

from chimp_worker.analysis import BASELINE_SCHEMA, AnalysisOptions
from chimp_worker.baseline import BaselineAnalyser
from chimp_worker.config import Settings
from chimp_worker.errors import ConfigError
from chimp_worker.ispyb.database import check_database_access, make_engine

pytestmark = [pytest.mark.mariadb, pytest.mark.rabbitmq]

README_USER = "'chimp_worker'@'%'"
README_SCHEMA = "`ispyb`"
ACCESS_DENIED = {1142, 1143, 1044}  # table, column, database access denied


def readme_grants() -> list[str]:
    """The GRANT statements of docs/facility.md's least-privilege block, in order."""
    text = (REPO / "docs" / "facility.md").read_text()
    marker = text.index("runs the GRANT statements of this block")
    block = re.search(r"```sql\n(.*?)```", text[marker:], re.DOTALL)
    assert block, "docs/facility.md: no sql block after the test's marker"
    sql = "\n".join(line for line in block.group(1).splitlines() if not line.startswith("--"))
    statements = [" ".join(s.split()) for s in sql.split(";")]
    return [statement for statement in statements if statement.startswith("GRANT")]


@dataclass
class LeastPrivilegeUser:
    name: str
    password: str
    database: str

    @property
    def url(self) -> str:
        return mariadb_url_for(self.database, user=self.name, password=self.password)

    def connect(self) -> MySQLdb.Connection:
        parsed = make_url(self.url)
        return MySQLdb.connect(
            host=parsed.host,
            port=parsed.port,
            user=self.name,
            passwd=self.password,
            db=self.database,
        )


@pytest.fixture
def least_privilege(facility_url: str) -> Iterator[LeastPrivilegeUser]:
    database = make_url(facility_url).database
    assert database
    user = LeastPrivilegeUser(f"chimp_lp_{secrets.token_hex(4)}", secrets.token_hex(12), database)
    account = f"'{user.name}'@'127.0.0.1'"
    admin = mariadb_admin()
    try:
        cursor = admin.cursor()
        cursor.execute(f"CREATE USER {account} IDENTIFIED BY %s", (user.password,))
        for grant in readme_grants():
            cursor.execute(
                grant.replace(README_SCHEMA, f"`{database}`").replace(README_USER, account)
            )
        yield user
    finally:
        admin.cursor().execute(f"DROP USER IF EXISTS {account}")
        admin.close()


def test_the_readme_grants_only_table_privileges(least_privilege: LeastPrivilegeUser) -> None:
    grants = readme_grants()
    assert len(grants) == 24
    admin = mariadb_admin()
    try:
        cursor = admin.cursor()
        cursor.execute(f"SHOW GRANTS FOR '{least_privilege.name}'@'127.0.0.1'")
        shown = [row[0] for row in cursor.fetchall()]
    finally:
        admin.close()
    global_grants = [g for g in shown if " ON *.* " in g]
    assert len(global_grants) == 1
    assert global_grants[0].startswith("GRANT USAGE ON *.*"), "no global privilege"
    table_grants = [g for g in shown if g not in global_grants]
    database = f"`{least_privilege.database}`"
    assert len(table_grants) == 24
    assert all(f" ON {database}.`" in g for g in table_grants), "table by table, no db.*"
    assert not [g for g in table_grants if "ALL PRIVILEGES" in g and "`chimp_" not in g]


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE BLSampleImage SET imageFullPath = '/etc/passwd'",
        "DELETE FROM ContainerInspection",
        "INSERT INTO BLSampleImageAutoScoreClass (scoreClass) VALUES ('x')",
        "SELECT * FROM Proposal",
        "SELECT status FROM ContainerQueueSample",
        "DELETE FROM ContainerQueueSample",
        "CREATE TABLE chimp_extra (id INT)",
        "DROP TABLE BLSample",
    ],
)
def test_the_worker_user_cannot_touch_anything_else(
    least_privilege: LeastPrivilegeUser, statement: str
) -> None:
    connection = least_privilege.connect()
    try:
        with pytest.raises(MySQLdb.OperationalError) as error:
            connection.cursor().execute(statement)
        assert error.value.args[0] in ACCESS_DENIED, error.value
    finally:
        connection.close()


def test_a_worker_processes_a_plate_with_only_the_readme_grants(
    least_privilege: LeastPrivilegeUser,
    facility_url: str,
    amqp_url: str,
    queue_prefix: str,
    tmp_path: Path,
    workers: WorkerPool,
) -> None:
    world = FaultWorld.create(facility_url, tmp_path / "images", amqp_url, queue_prefix, wells=2)
    try:
        worker = workers.start(
            world.worker_env(database_url=least_privilege.url), name="least-privilege"
        )
        world.publish_inspection()
        world.wait_until_complete(60, worker)
        assert worker.stop() == 0
        assert not worker.events("message_failed_unexpectedly"), worker.tail()
        world.check(BaselineAnalyser(AnalysisOptions.from_settings(Settings(analyser="baseline"))))
    finally:
        world.close()


def test_without_reading_the_queue_the_worker_refuses_to_start_with_the_grant(
    least_privilege: LeastPrivilegeUser,
) -> None:
    """It could not tell a queued point from a free one: exit 2 naming the GRANT, not a
    worker that deletes queued points (ContainerQueueSample's key is ON DELETE CASCADE)."""
    account = f"'{least_privilege.name}'@'127.0.0.1'"
    admin = mariadb_admin()
    try:
        admin.cursor().execute(
            f"REVOKE SELECT (`blSubSampleId`) ON `{least_privilege.database}`."
            f"`ContainerQueueSample` FROM {account}"
        )
    finally:
        admin.close()
    engine = make_engine(least_privilege.url)
    try:
        with pytest.raises(ConfigError) as refused:
            check_database_access(engine, BASELINE_SCHEMA, analyser="baseline")
    finally:
        engine.dispose()
    message = str(refused.value)
    assert "may not read ContainerQueueSample" in message
    assert (
        f"GRANT SELECT (`blSubSampleId`) ON `{least_privilege.database}`.`ContainerQueueSample` "
        f"TO '{least_privilege.name}'@'%';"
    ) in message
