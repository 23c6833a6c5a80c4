"""The worker runs with exactly the grants docs/reliability.md lists: the GRANT statements are read
from that page itself, applied to a fresh database for a new user, and a real worker process takes
a plate through with that user."""

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

from chimp_worker.baseline import BaselineAnalyser
from chimp_worker.config import Settings
from chimp_worker.ispyb.schema import create_all

pytestmark = [pytest.mark.mariadb, pytest.mark.rabbitmq]

README_USER = "'chimp_worker'@'%'"
README_SCHEMA = "`ispyb`"
ACCESS_DENIED = {1142, 1143, 1044}  # table, column, database access denied


def readme_grants() -> list[str]:
    """The GRANT statements of docs/reliability.md's least-privilege block, in order."""
    text = (REPO / "docs" / "reliability.md").read_text()
    block = re.search(r"```sql\n(.*?)```", text, re.DOTALL)
    assert block, "docs/reliability.md: no sql block"
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
def least_privilege(mariadb_url: str) -> Iterator[LeastPrivilegeUser]:
    database = make_url(mariadb_url).database
    assert database
    create_all(mariadb_url)
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
    assert len(grants) == 17
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
    assert len(table_grants) == 17
    assert all(f" ON {database}.`" in g for g in table_grants), "table by table, no db.*"
    assert not [g for g in table_grants if "ALL PRIVILEGES" in g and "`chimp_" not in g]


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE BLSampleImage SET imageFullPath = '/etc/passwd'",
        "DELETE FROM ContainerInspection",
        "INSERT INTO BLSampleImageAutoScoreClass (scoreClass) VALUES ('x')",
        "SELECT * FROM Proposal",
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
    mariadb_url: str,
    amqp_url: str,
    queue_prefix: str,
    tmp_path: Path,
    workers: WorkerPool,
) -> None:
    world = FaultWorld.create(mariadb_url, tmp_path / "images", amqp_url, queue_prefix, wells=2)
    try:
        worker = workers.start(
            world.worker_env(database_url=least_privilege.url), name="least-privilege"
        )
        world.publish_inspection()
        world.wait_until_complete(60, worker)
        assert worker.stop() == 0
        assert not worker.events("message_failed_unexpectedly"), worker.tail()
        world.check(BaselineAnalyser(Settings(analyser="baseline")))
    finally:
        world.close()
