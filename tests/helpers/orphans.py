"""Rows a facility's ISPyB can hold but the worker can never write against.

Old ISPyBs carry rows orphaned by clean-ups run with foreign-key checks off: an image whose
BLSample is gone. Every insert that names the sample then fails with MariaDB error 1452 (SQLite:
FOREIGN KEY constraint failed), for ever: the refusal the worker must take as one failed image.
"""

from __future__ import annotations

import sqlite3

from sqlalchemy.engine import make_url


def orphan_sample(url: str, sample_id: int) -> None:
    """Delete a BLSample behind its images' backs, as a clean-up without FK checks would."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        connection = sqlite3.connect(parsed.database or "")  # foreign keys are off by default
        try:
            connection.execute("DELETE FROM BLSample WHERE blSampleId = ?", (sample_id,))
            connection.commit()
        finally:
            connection.close()
        return
    import MySQLdb

    connection = MySQLdb.connect(
        host=parsed.host,
        port=parsed.port or 3306,
        user=parsed.username,
        passwd=parsed.password or "",
        db=parsed.database,
    )
    try:
        cursor = connection.cursor()
        cursor.execute("SET FOREIGN_KEY_CHECKS = 0")
        cursor.execute("DELETE FROM BLSample WHERE blSampleId = %s", (sample_id,))
        connection.commit()
    finally:
        connection.close()
