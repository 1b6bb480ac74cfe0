"""The wire format between the worker client and the portal (``/api/v1/``), stdlib only.

Both sides import this module: the client builds requests and reads replies with it, the portal
answers with the same field names. JSON over HTTPS; every call but ``attach`` carries the host
token as ``Authorization: Token <token>``.

    POST /api/v1/attach/      {"account_key", "host": HostInfo}      -> {"host_id", "token"}
    POST /api/v1/host/        HostInfo                               -> {"host_id"}
    GET  /api/v1/host/                                               -> HostStatus (credit, …)
    DELETE /api/v1/host/                                             -> detach: token revoked
    POST /api/v1/scheduler/   SchedulerRequest                       -> SchedulerReply
    GET  /api/v1/datasets/<sha256>/                                  -> the binary candle file

A task is data: an island epoch for the client's own engine (space, settings, seed, start
population, bar range). Nothing the server sends is ever executed as code.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

PROTOCOL_VERSION = 1
# Limits of one scheduler request (the portal refuses more).
MAX_WORK_SECONDS = 28 * 86_400  # work asked for
MAX_RESULTS_PER_REQUEST = 32  # results reported
MAX_FREE_SLOTS = 256  # tasks asked for
MAX_IDS_PER_LIST = 1000  # ids in ``acks`` and ``in_progress``
CLIENT_NAME = "strategy-worker"
TASK_KIND = "island_epoch"

# Machine-readable reasons a scheduler reply carries when it sends no task.
REASON_NO_WORK = "no_work"
REASON_QUOTA = "quota_reached"
REASON_CLIENT_TOO_OLD = "client_too_old"
REASON_HOST_RETIRED = "host_retired"
REASON_TOO_SLOW = "deadline_infeasible"
REASON_NOT_ASKED = "not_requested"


@dataclass
class HostInfo:
    name: str
    os: str
    arch: str
    python_version: str
    numba_version: str
    cpu_count: int
    memory_mb: int
    client_version: str
    speed: float = 0.0  # measured candle-evaluations per second, 0 if not yet measured


@dataclass
class ReportedResult:
    """A finished task. ``output`` is the engine's ``EpochResult.to_dict()`` on success."""

    result_id: int
    status: str  # "success" or "error"
    output: dict[str, Any] | None = None
    error: str = ""
    cpu_time: float = 0.0
    wall_time: float = 0.0


@dataclass
class TaskProgress:
    """How far a task in progress has come: the heartbeat of a long task."""

    result_id: int
    fraction_done: float  # 0..1


@dataclass
class SchedulerRequest:
    """One round trip: report finished work, confirm received tasks, ask for more."""

    protocol: int = PROTOCOL_VERSION
    results: list[ReportedResult] = field(default_factory=list)
    acks: list[int] = field(default_factory=list)  # task ids received since the last call
    # Task ids held here, queued or running. A finished one is never listed: its result is
    # reported in ``results`` (listed as in progress, a task whose work unit is decided would
    # be released as not needed before its result arrives).
    in_progress: list[int] = field(default_factory=list)
    # True only when ``in_progress`` and ``results`` together name every task this host holds
    # (no result waits for a later call, the list is not cut): then the portal re-sends the
    # tasks it sent here that neither names (a reply lost on the network, a worker killed before
    # it saved them), or gives them up at once if their deadline cannot be met (BOINC's
    # ``resend_lost_results``).
    in_progress_complete: bool = False
    progress: list[TaskProgress] = field(default_factory=list)  # of tasks that have started
    free_slots: int = 0
    work_seconds: float = 0.0  # how much work to send, for this host's measured speed
    # For each slot (task process) of this host, the seconds of work it holds queued there,
    # running tasks included: when that slot could start a new task, as the host plans to run
    # its tasks (BOINC's ``estimated_delay``, per slot). The portal sends a task only if it
    # finishes before its deadline on the slot free first, behind that queue. Empty: not
    # said (the portal then checks each task's runtime alone). At most MAX_FREE_SLOTS values,
    # each at most MAX_WORK_SECONDS.
    slot_queue_seconds: list[float] = field(default_factory=list)
    datasets: list[str] = field(default_factory=list)  # sha256 of data sets held

    def to_dict(self) -> dict[str, Any]:
        raw = asdict(self)
        # Left out at their defaults: what a portal from before these fields accepts.
        if not self.in_progress_complete:
            del raw["in_progress_complete"]
        if not self.slot_queue_seconds:
            del raw["slot_queue_seconds"]
        return raw


@dataclass
class Task:
    result_id: int
    name: str
    payload: dict[str, Any]  # the island epoch: see apps.workunits.payloads on the portal
    dataset_sha256: str
    dataset_url: str
    dataset_size: int
    deadline: str  # ISO 8601, UTC
    credit: float  # granted if the result is validated
    cost: int  # candle-evaluations, an upper bound

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Task:
        return cls(**{k: raw[k] for k in cls.__dataclass_fields__})


@dataclass
class SchedulerReply:
    tasks: list[Task]
    accepted: list[int]  # reported result ids the server has stored: delete them locally
    rejected: list[dict[str, Any]]  # [{"result_id", "reason"}]: never report these again
    abort: list[int]  # tasks in progress here that are no longer needed
    request_delay: float  # seconds to wait before the next call
    reason: str | None  # why no task was sent (REASON_*), None when tasks were sent
    message: str  # for the volunteer

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> SchedulerReply:
        return cls(tasks=[Task.from_dict(t) for t in raw["tasks"]], accepted=raw["accepted"],
                   rejected=raw["rejected"], abort=raw.get("abort", []),
                   request_delay=float(raw["request_delay"]), reason=raw.get("reason"),
                   message=raw.get("message", ""))


def parse_deadline(text: object) -> datetime | None:
    """``Task.deadline`` as an aware UTC datetime; None if unreadable."""
    try:
        when = datetime.fromisoformat(str(text))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def user_agent(client_version: str) -> str:
    return f"{CLIENT_NAME}/{client_version} (protocol {PROTOCOL_VERSION})"


# The island-epoch payload (``Task.payload``), built by the portal for each work unit:
#   {"kind": "island_epoch", "engine": <int, ENGINE_FORMAT>, "dataset_sha256": str,
#    "start": int, "stop": int,            # bar range [start, stop) of the data set: in-sample
#    "seed": int, "generations": int,
#    "space": SearchSpace.to_dict(), "settings": GASettings.to_dict(),
#    "start_population": [Genome.to_dict(), ...]}
# The client runs ``run_epoch(data.slice(start, stop), space, settings, seed, population,
# generations)`` and reports ``EpochResult.to_dict()`` as the output.
ENGINE_FORMAT = 2  # 2: the epoch result carries its trials' Sharpe sums (``trials``)
