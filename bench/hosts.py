"""The simulated hosts of ``bench/load.py``: each speaks the worker protocol over HTTP (the JSON
of ``worker_client.protocol``), holds its tasks for a simulated run time and reports the right
answers. All hosts run as coroutines of one asyncio process with one aiohttp session, so that
the load generator costs little beside the portal it measures (the bench prints its CPU).
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

MAX_REPORTS_PER_CALL = 32  # the portal's cap (serializers.MAX_RESULTS_PER_REQUEST)
MAX_TASKS_PER_CALL = 32  # the portal's cap (scheduler.MAX_TASKS_PER_REQUEST)


@dataclass(frozen=True)
class Options:
    hosts: int
    slots: tuple[int, int]
    task_seconds: float
    request_delay: float
    warmup: float
    duration: float
    connections: int
    seed: int


@dataclass
class Seeded:
    tokens: list[str]
    host_ids: list[int]
    slots: list[int]
    answers: dict[int, dict[str, Any]]  # the right output of each payload, by its seed
    dataset_sha256: str
    workunits: int
    campaigns: int


@dataclass
class Window:
    """What the hosts saw, counted by the completion time of each call inside the window."""

    start: float
    stop: float
    latencies: list[float] = field(default_factory=list)
    dispatched: int = 0
    reported: int = 0
    accepted: int = 0
    calls: int = 0
    no_work: int = 0
    aborted: int = 0
    downloads: int = 0
    errors: Counter[str] = field(default_factory=Counter)

    def inside(self, t: float) -> bool:
        return self.start <= t < self.stop


@dataclass
class Totals:
    """Over the whole run, warm-up included: what the checks need."""

    given: dict[int, int] = field(default_factory=dict)  # result id -> host id
    double_given: list[tuple[int, int, int]] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    dispatched: int = 0
    accepted: int = 0
    calls: int = 0


class SimHost:
    def __init__(self, index: int, host_id: int, token: str, slots: int, opts: Options,
                 rng: random.Random) -> None:
        self.index, self.host_id, self.slots = index, host_id, slots
        self.headers = {"Authorization": f"Token {token}"}
        self.buffer = min(2 * slots, MAX_TASKS_PER_CALL)
        self.opts = opts
        self.rng = rng
        self.free_at = [0.0] * slots  # when each core is next free (a heap)
        self.held: dict[int, tuple[float, float]] = {}  # result id -> (start, finish)
        self.seed_of: dict[int, int] = {}  # result id -> its payload's seed (its answer)
        self.done: list[int] = []
        self.acks: list[int] = []
        self.has_dataset = False

    def assign(self, result_ids: list[int], now: float) -> None:
        for result_id in result_ids:
            core_free = heapq.heappop(self.free_at)
            start = max(now, core_free)
            finish = start + self.opts.task_seconds * self.rng.uniform(0.5, 1.5)
            heapq.heappush(self.free_at, finish)
            self.held[result_id] = (start, finish)

    def collect(self, now: float) -> None:
        finished = [rid for rid, (_, finish) in self.held.items() if finish <= now]
        for result_id in finished:
            del self.held[result_id]
        self.done.extend(finished)

    def body(self, now: float, answers: dict[int, str], sha256: str
             ) -> tuple[str, list[int], int]:
        """The request's JSON, written by hand around the answers' text (each encoded once)."""
        reports = self.done[:MAX_REPORTS_PER_CALL]
        free = max(0, self.buffer - len(self.held))
        results = ",".join(
            f'{{"result_id":{rid},"status":"success","output":{answers[self.seed_of[rid]]},'
            f'"cpu_time":{self.opts.task_seconds:.3f},"wall_time":{self.opts.task_seconds:.3f}}}'
            for rid in reports)
        progress = ",".join(
            f'{{"result_id":{rid},"fraction_done":{min(1.0, (now - s) / (f - s)):.4f}}}'
            for rid, (s, f) in sorted(self.held.items()) if s <= now)
        body = (f'{{"protocol":1,"results":[{results}],"acks":{json.dumps(self.acks)},'
                f'"in_progress":{json.dumps(sorted(self.held))},"progress":[{progress}],'
                f'"free_slots":{free},"work_seconds":{free * self.opts.task_seconds:.1f},'
                f'"datasets":{json.dumps([sha256] if self.has_dataset else [])}}}')
        return body, reports, free


async def run_host(host: SimHost, session: Any, server: str, answers: dict[int, str], sha256: str,
                   t0: float, window: Window, totals: Totals) -> None:
    import aiohttp

    url = server + "api/v1/scheduler/"
    clock = time.monotonic
    rng = host.rng
    next_call = t0 + rng.uniform(0, host.opts.request_delay)  # hosts start spread out
    failures = 0
    while next_call < window.stop:
        await asyncio.sleep(max(0.0, next_call - clock()))
        now = clock()
        host.collect(now)
        body, reports, free = host.body(now, answers, sha256)
        if not reports and not host.acks and free <= 0:
            next_call = min(finish for _, finish in host.held.values())  # nothing to say yet
            continue
        sent_acks = host.acks
        started = clock()
        try:
            async with session.post(url, data=body, headers=host.headers) as response:
                raw = await response.read()
                status = response.status
        except (TimeoutError, aiohttp.ClientError) as exc:
            kind = type(exc).__name__
            ended = clock()
            totals.errors[kind] += 1
            if window.inside(ended):
                window.errors[kind] += 1
            failures += 1
            next_call = ended + min(60.0, 2.0 ** failures) * rng.uniform(0.5, 1.0)
            continue
        ended = clock()
        counted = window.inside(ended)
        totals.calls += 1
        if counted:
            window.calls += 1
            window.latencies.append(ended - started)
        if status != 200:
            kind = f"HTTP {status}"
            totals.errors[kind] += 1
            if counted:
                window.errors[kind] += 1
            failures += 1
            next_call = ended + min(60.0, 2.0 ** failures) * rng.uniform(0.5, 1.0)
            continue
        failures = 0
        reply = json.loads(raw)
        accepted = set(reply["accepted"])
        host.done = [rid for rid in host.done if rid not in accepted]
        problems: Counter[str] = Counter()
        rejected = {entry["result_id"] for entry in reply["rejected"]}
        for entry in reply["rejected"]:
            problems[f"rejected report ({entry['reason']})"] += 1
        host.done = [rid for rid in host.done if rid not in rejected]
        unanswered = set(reports) - accepted - rejected
        if unanswered:
            problems["report neither accepted nor rejected"] += len(unanswered)
        for result_id in reply["abort"]:
            host.held.pop(result_id, None)
        for result_id in accepted | rejected:
            host.seed_of.pop(result_id, None)
        tasks = [task["result_id"] for task in reply["tasks"]]
        for task in reply["tasks"]:
            host.seed_of[task["result_id"]] = task["payload"]["seed"]
        for result_id in tasks:
            previous = totals.given.setdefault(result_id, host.host_id)
            if previous != host.host_id or result_id in host.held:
                totals.double_given.append((result_id, previous, host.host_id))
                problems["task given twice"] += 1
        host.assign(tasks, ended)
        host.acks = [a for a in host.acks if a not in set(sent_acks)] + tasks
        totals.dispatched += len(tasks)
        totals.accepted += len(accepted)
        totals.errors.update(problems)
        if counted:
            window.dispatched += len(tasks)
            window.reported += len(reports)
            window.accepted += len(accepted)
            window.aborted += len(reply["abort"])
            window.no_work += not tasks and reply["reason"] == "no_work"
            window.errors.update(problems)
        if tasks and not host.has_dataset:
            await _download(host, session, reply["tasks"][0], window, totals)
        delay = max(0.0, float(reply["request_delay"]))
        next_call = ended + delay
        if not tasks and free > 0 and host.held:
            next_call = max(next_call, min(f for _, f in host.held.values()))


async def _download(host: SimHost, session: Any, task: dict[str, Any], window: Window,
                    totals: Totals) -> None:
    import aiohttp

    try:
        async with session.get(task["dataset_url"], headers=host.headers) as response:
            raw = await response.read()
            ok = response.status == 200
    except (TimeoutError, aiohttp.ClientError) as exc:
        totals.errors[f"download {type(exc).__name__}"] += 1
        return
    if not ok or hashlib.sha256(raw).hexdigest() != task["dataset_sha256"]:
        totals.errors["download failed or corrupt"] += 1
        if window.inside(time.monotonic()):
            window.errors["download failed or corrupt"] += 1
        return
    host.has_dataset = True
    window.downloads += 1


async def run_hosts(seeded: Seeded, opts: Options, server: str, on_window: Any
                    ) -> tuple[Window, Totals]:
    """All hosts in this process; ``on_window(edge)`` is awaited at the window's two edges."""
    import aiohttp

    rng = random.Random(opts.seed)
    hosts = [SimHost(i, host_id, token, slots, opts, random.Random(rng.random()))
             for i, (host_id, token, slots) in enumerate(zip(
                 seeded.host_ids, seeded.tokens, seeded.slots, strict=True))]
    answers = {seed: json.dumps(output, separators=(",", ":"))
               for seed, output in seeded.answers.items()}
    t0 = time.monotonic()
    window = Window(start=t0 + opts.warmup, stop=t0 + opts.warmup + opts.duration)
    totals = Totals()
    connector = aiohttp.TCPConnector(limit=opts.connections)
    timeout = aiohttp.ClientTimeout(total=120, sock_connect=10)  # queueing for the pool is no error
    from worker_client import __version__
    from worker_client.protocol import user_agent

    async with aiohttp.ClientSession(
            connector=connector, timeout=timeout,
            headers={"User-Agent": user_agent(__version__),
                     "Content-Type": "application/json"}) as session:

        async def edges() -> None:
            await asyncio.sleep(max(0.0, window.start - time.monotonic()))
            await on_window("start")
            await asyncio.sleep(max(0.0, window.stop - time.monotonic()))
            await on_window("stop")

        await asyncio.gather(edges(), *(run_host(h, session, server, answers,
                                                 seeded.dataset_sha256, t0, window, totals)
                                        for h in hosts))
    return window, totals
