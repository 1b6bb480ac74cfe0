"""Every error the worker client raises on purpose, as one tree.

The CLI catches :class:`WorkerError` and prints ``str(error)``: each message is one line a
volunteer can act on (what went wrong and what to do). Anything else that escapes is a bug and
shows its traceback.

::

    WorkerError
    ├── ConfigError            the local configuration is missing or unusable
    │   └── NotAttachedError   ``run`` before ``attach``
    ├── ServerUnavailable      the portal could not be reached or kept failing (after retries)
    ├── ProtocolError          the portal's reply is not what protocol.py describes
    ├── ServerRefused          the portal answered with its error shape (``code``, ``message``)
    │   ├── AuthError          bad account key or host token (401/403)
    │   └── ClientTooOld       this client version is refused: upgrade
    ├── DataError              a data set failed its checks (size, sha256) after retries
    ├── StorageError           the worker's own files cannot be written (disk full, read-only)
    ├── Interrupted            a stop was asked for while waiting (a download, a lock)
    └── TaskError              a task this client's engine cannot run (reported as an error)
"""

from __future__ import annotations


class WorkerError(Exception):
    """Base of the tree; ``str()`` is one actionable line."""


class ConfigError(WorkerError):
    """The configuration file or directory is missing, unreadable or malformed."""


class NotAttachedError(ConfigError):
    """No host token yet: the host has not been attached to a portal account."""


class ServerUnavailable(WorkerError):
    """Connection refused, timed out, or 5xx/429 answers after every retry."""


class ProtocolError(WorkerError):
    """The reply was not JSON, or lacked fields the protocol promises."""


class ServerRefused(WorkerError):
    """The portal refused the request and said why in its error shape.

    ``code`` is the portal's machine-readable code (e.g. ``validation_error``), ``status``
    the HTTP status, ``message`` the portal's sentence for a person.
    """

    def __init__(self, message: str, *, code: str = "error", status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status


class AuthError(ServerRefused):
    """The account key or host token was not accepted."""


class ClientTooOld(ServerRefused):
    """The portal no longer accepts this client version."""


class DataError(WorkerError):
    """A data set could not be downloaded intact (sha256 or size mismatch, unreadable file)."""


class TaskError(WorkerError):
    """A task's payload cannot be run by this client's engine (reported to the portal)."""


class Interrupted(WorkerError):
    """The worker was asked to stop while it waited on a download or a lock."""


class StorageError(WorkerError):
    """The worker cannot write its files (disk full, read-only or not permitted). Files already
    on disk are whole: every write is atomic, so the next ``run`` goes on from them."""


def storage_error(exc: OSError, directory: object) -> StorageError:
    """One actionable line for a failed write."""
    import errno

    why = {errno.ENOSPC: "the disk is full", errno.EROFS: "the file system is read-only",
           errno.EACCES: "permission denied", errno.EPERM: "permission denied"}.get(
        exc.errno or 0, exc.strerror or str(exc))
    if getattr(errno, "EDQUOT", None) == exc.errno:
        why = "the disk quota is exceeded"
    return StorageError(f"cannot write to {directory}: {why}; free some space (or fix the "
                        "permissions) and run again — the tasks and results already saved "
                        "there are kept")
