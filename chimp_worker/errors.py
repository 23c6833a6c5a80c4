"""One error hierarchy for the whole worker.

The consumer decides what to do with a message from the branch alone:
``TransientError`` -> retry, then requeue; ``PermanentError`` -> dead-letter with the reason.
Foreign errors (pika, SQLAlchemy, Pillow, requests) are translated where they enter.
Every error carries a short machine-readable ``reason`` (used in dead-letter headers, the
worker's failure rows and metrics labels), a human message that names the cause and the fix,
and the ``exit_status`` a command ends with when the error reaches the command line
(``chimp_worker.exits``: 1 runtime failure, 2 configuration or usage).
"""

from __future__ import annotations


class ChimpError(Exception):
    """Root of every error chimp-worker raises on purpose."""

    reason: str = "error"
    exit_status: int = 1  # a runtime failure; configuration and usage errors say 2
    # The command line prints only the first line of the message (cause and fix) unless the
    # lines after it are what the user must act on, e.g. SQL to hand to ISPyB's administrators.
    print_whole_message: bool = False

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason

    @property
    def message(self) -> str:
        return str(self)


class TransientError(ChimpError):
    """Worth retrying: the same input may succeed later (database outage, lock, timeout)."""

    reason = "transient"


class PermanentError(ChimpError):
    """Retrying cannot help: the input itself is wrong."""

    reason = "permanent"


# --- configuration -------------------------------------------------------------------------


class ConfigError(PermanentError):
    """A setting is missing or has the wrong form; names the setting and what was expected."""

    reason = "bad_config"
    exit_status = 2


class OptionalDependencyError(ConfigError):
    """A command needs a package of an extra that is not installed (``chimp-worker[evaluate]``)."""

    reason = "missing_extra"


# --- messages ------------------------------------------------------------------------------


class EventError(PermanentError):
    """A message body that is not a valid event (not JSON, wrong types, unknown version)."""

    reason = "malformed_event"


class UnknownInspectionError(PermanentError):
    """The event names a ContainerInspection that does not exist (after bounded retries)."""

    reason = "unknown_inspection"


class InspectionNotVisibleError(TransientError):
    """The inspection's rows are not visible yet (the imager may not have committed)."""

    reason = "inspection_not_visible"


# --- broker --------------------------------------------------------------------------------


class BrokerUnavailableError(TransientError):
    """RabbitMQ cannot be reached, closed the connection, or refused (nacked) a publish."""

    reason = "broker_unavailable"


class BrokerAccessError(ConfigError):
    """RabbitMQ refused the login, the virtual host, or a permission: no retry can fix it."""

    reason = "broker_access"


class UnroutableMessageError(PermanentError):
    """A ``mandatory`` publish reached no queue: the exchange has no matching binding."""

    reason = "unroutable"


class TopologyMismatchError(ConfigError):
    """A queue exists with other arguments than this worker declares (broker error 406)."""

    reason = "topology_mismatch"


class AnalysisError(PermanentError):
    """The analyser raised for one image alone (after the batch was retried image by image)."""

    reason = "analysis_failed"


class AnalysisTimeoutError(AnalysisError):
    """The analyser gave no result for one image within its deadline (``image_deadline_s``)."""

    reason = "analysis_timeout"


# --- database ------------------------------------------------------------------------------


class DatabaseUnavailableError(TransientError):
    """Lost connection, deadlock, lock-wait timeout: retry the whole unit of work."""

    reason = "database_unavailable"


class DatabaseAccessError(ConfigError):
    """Wrong credentials, a missing grant, an unknown database or SQLite file: fix the settings."""

    reason = "database_access"


class MissingGrantError(DatabaseAccessError):
    """The worker may not read a table it must consult; the GRANT statements follow."""

    reason = "database_grant_missing"
    print_whole_message = True


class DatabaseError(ChimpError):
    """A database error no retry is known to fix (a revoked grant, a missing column, a trigger
    refusing a write, a bug): neither the input's fault nor an outage. The message is
    requeued and the delivery limit decides; the message names the server's error code and
    text, never the SQL statement or its parameters."""

    reason = "database_error"


class UnknownImageError(PermanentError):
    """A result or failure for a BLSampleImage row that does not exist."""

    reason = "unknown_image"


class MissingScoreClassError(PermanentError):
    """The auto-score schema or one of its classes is not in ISPyB (run ``db upgrade``)."""

    reason = "missing_score_class"
    exit_status = 2


class ScoreSchemaError(ConfigError):
    """The auto-score schema the analyser writes under is missing, incomplete or disabled in
    ISPyB; the message carries the SQL to hand to the ISPyB administrators."""

    reason = "score_schema"
    print_whole_message = True  # the INSERT statements follow the first line


class DatabaseRefusedError(PermanentError):
    """The database refused one image's write (a foreign key, a unique key, a constraint):
    the same write can never succeed, so that image fails with this reason and the rest go on.

    Reasons: ``db_refused_foreign_key`` (MariaDB 1451/1452), ``db_refused_duplicate`` (1062),
    ``db_refused_constraint`` (NOT NULL, CHECK), ``db_refused_data`` (out of range, too long),
    ``db_refused`` for any other refusal.
    """

    reason = "db_refused"


class DatabaseSchemaError(ConfigError):
    """The schema is missing or old (run ``db upgrade``), or cannot be created or upgraded as
    asked (e.g. core tables inside a real ISPyB)."""

    reason = "database_schema"


# --- staff queries -------------------------------------------------------------------------


class NotFoundError(PermanentError):
    """A plate barcode, inspection or image named on the command line is not in the database."""

    reason = "not_found"


# --- images --------------------------------------------------------------------------------


class ImageError(PermanentError):
    """An image that cannot be used; recorded as a failed image, the plate goes on."""

    reason = "image_error"


class ImageMissingError(ImageError):
    reason = "image_missing"


class ImageCorruptError(ImageError):
    reason = "image_corrupt"


class ImageTruncatedError(ImageError):
    reason = "image_truncated"


class ImageTooLargeError(ImageError):
    reason = "image_too_large"


class ImageUnsupportedError(ImageError):
    reason = "image_unsupported"


class ImageTimeoutError(ImageError):
    reason = "image_timeout"


class ImageOutsideRootsError(ImageError):
    reason = "image_outside_roots"


class ImageNotAFileError(ImageError):
    """A FIFO, socket, device or directory where an image file should be: never opened (a FIFO
    would block the reader for ever, a device could be read without end)."""

    reason = "image_not_a_file"


class ImageSymlinkLoopError(ImageError):
    reason = "image_symlink_loop"


class ImagePathTooLongError(ImageError):
    reason = "image_path_too_long"


class ImagePermissionError(ImageError):
    reason = "image_permission_denied"


class ImageFetchError(ImageError):
    """HTTP fetch failed for a reason that is neither 404 nor a timeout (after retries)."""

    reason = "image_fetch_failed"


# --- models --------------------------------------------------------------------------------


class ModelFileError(PermanentError):
    """A model file that is missing, truncated, of the wrong kind or the wrong shape."""

    reason = "bad_model_file"
    exit_status = 2


# --- evaluation and training ---------------------------------------------------------------


class DatasetError(PermanentError):
    """A labelled data set (CSV, COCO JSON, label map) that cannot be used as given; names the
    file, the row or image, and what was expected."""

    reason = "bad_dataset"
    exit_status = 2


# --- staff views -------------------------------------------------------------------------------


class PicturesUnreadableError(PermanentError):
    """A report was asked for with pictures, and some could not be read (named in the message);
    ``--no-pictures`` asks for a report without them instead."""

    reason = "pictures_unreadable"
