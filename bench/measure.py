"""Measuring one benchmark configuration in its own process, and the machine around it.

``bench/engine.py --one CASE`` runs :func:`measure_one` in a fresh interpreter: import, load
data, warm up (JIT), ``gc.collect()``, reset the peak-RSS counter, then 1 to 7 timed
repetitions. The parent (:func:`run_case`) also records the load average and how much CPU other
processes used meanwhile, since on a shared 2-core machine that decides whether a figure holds.
"""

from __future__ import annotations

import gc
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import peers  # bench/, beside this module

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SCRIPT = HERE / "engine.py"
FULL_BARS = 1_000_000
WARMUP_BARS = 3_000
MAX_REPS = 7
NOISY_CORES = 0.25  # other processes' CPU above which a measurement is retried
RETRY_MAX_TIMED_S = 30.0  # ... if its timed part was this short (long ones are kept as they are)


@dataclass(frozen=True)
class Case:
    """One configuration, measured in its own process."""

    peer: str
    bars: int
    grid: str  # "100" or "1000"
    threads: int = 1
    chunks: int | None = None  # vectorbt: time only the first `chunks` chunks, extrapolate


@dataclass
class Measurement:
    case: Case
    label: str
    combos: int
    measured_combos: int = 0
    seconds: float = float("nan")  # for the whole grid (extrapolated where `note` says so)
    times: list[float] = field(default_factory=list)  # measured, for `measured_combos`
    warmup_s: float = float("nan")
    import_s: float = float("nan")
    rss_before_mb: float = float("nan")
    peak_mb: float = float("nan")
    peak_reset: bool = True
    load_before: str = ""
    foreign_cpu: float = float("nan")  # other processes' CPU during the case, in cores
    attempts: int = 1
    note: str = ""
    skipped: str = ""
    combo_index: list[int] = field(default_factory=list)
    n_trades: list[int] = field(default_factory=list)
    final_equity: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        """Candle-evaluations per second over the whole grid."""
        return self.case.bars * self.combos / self.seconds if self.seconds > 0 else float("nan")


def status_kb(key: str) -> float:
    match = re.search(rf"^{key}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    return float(match.group(1)) if match else float("nan")


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux: write 5 to clear_refs); False if not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_mb(reset: bool) -> float:
    """VmHWM if it was reset, else ru_maxrss (which counts since the process started)."""
    if reset:
        return status_kb("VmHWM") / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def busy_cpu_seconds() -> float:
    """CPU time spent by the whole machine (all processes, all cores) since boot."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wait_for_quiet(max_wait_s: float, threshold: float = 0.25) -> float:
    """Wait until other processes use under ``threshold`` cores over 2 s (at most ``max_wait_s``).

    Returns the seconds waited. On a shared 2-core machine one foreign test run halves a
    2-thread figure; waiting is cheaper than measuring again.
    """
    started = time.perf_counter()
    while True:
        busy, t0 = busy_cpu_seconds(), time.perf_counter()
        time.sleep(2.0)
        if (busy_cpu_seconds() - busy) / (time.perf_counter() - t0) < threshold:
            break
        if time.perf_counter() - started > max_wait_s:
            break
    return time.perf_counter() - started


def _reps_for(first_s: float, budget_s: float) -> int:
    """How many repetitions in all, the first included: up to 7, within the budget, odd."""
    more = int(budget_s / max(first_s, 1e-9))
    reps = max(1, min(MAX_REPS, 1 + more))
    return reps if reps % 2 else reps - 1


def measure_one(case: Case, budget_s: float) -> Measurement:
    """Run in the child process: everything for one configuration."""
    started = time.perf_counter()
    from worker_client.engine.data import synthetic_ohlcv

    peer = peers.PEERS[case.peer]
    pairs = peers.grid(case.grid)
    result = Measurement(case, peer.label, combos=len(pairs))
    # The 30k set is the prefix of the 1M series (the generator's draws depend on its length).
    data = synthetic_ohlcv(FULL_BARS).slice(0, case.bars)
    index = list(range(len(pairs)))
    if peer.subset is not None:
        index = peers.spread(pairs, peer.subset)
        result.note = f"extrapolated from {len(index)} combos ×{len(pairs) / len(index):.0f}"
    elif case.chunks is not None:
        index = index[: case.chunks * peers.VECTORBT_CHUNK]
        if len(index) < len(pairs):
            result.note = (f"extrapolated from {case.chunks} chunk(s) of "
                           f"{peers.VECTORBT_CHUNK} ×{len(pairs) / len(index):.0f}")
    if case.peer == "vectorbt" and len(pairs) > peers.VECTORBT_CHUNK:
        chunking = f"chunks of {peers.VECTORBT_CHUNK} with gc.collect()"
        result.note = f"{result.note}; {chunking}" if result.note else chunking
    timed_pairs = [pairs[i] for i in index]
    threads = case.threads if peer.multithreaded else 1
    try:
        warm = peer.prepare(data.slice(0, WARMUP_BARS), [pairs[0], pairs[-1]], threads)
    except peers.EngineUnavailable as exc:
        result.skipped = f"not available yet ({exc})"
        return result
    result.import_s = time.perf_counter() - started
    t0 = time.perf_counter()
    warm()
    result.warmup_s = time.perf_counter() - t0
    run = peer.prepare(data, timed_pairs, threads)
    del warm
    gc.collect()
    result.peak_reset = reset_peak_rss()
    result.rss_before_mb = status_kb("VmRSS") / 1024
    summary = None
    while True:
        t0 = time.perf_counter()
        summary = run()
        result.times.append(time.perf_counter() - t0)
        if len(result.times) >= _reps_for(result.times[0], budget_s):
            break
    result.peak_mb = peak_mb(result.peak_reset)
    result.measured_combos = len(index)
    result.seconds = statistics.median(result.times) * len(pairs) / len(index)
    result.combo_index = index
    result.n_trades = [int(x) for x in summary.n_trades]
    result.final_equity = [float(x) for x in summary.final_equity]
    return result


def run_case(case: Case, budget_s: float, env: dict[str, str]) -> Measurement:
    """Measure ``case`` in a fresh interpreter running this script with ``--one``."""
    load = load_average()
    wall, busy, ours = time.perf_counter(), busy_cpu_seconds(), children_cpu_seconds()
    command = [sys.executable, str(SCRIPT), "--one", json.dumps(asdict(case)),
               "--budget", str(budget_s)]
    completed = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT,
                               check=False)
    lines = completed.stdout.strip().splitlines()
    if completed.returncode != 0 or not lines:
        tail = "\n".join(completed.stderr.strip().splitlines()[-15:])
        result = Measurement(case, case.peer, combos=0)
        result.skipped = f"failed (exit {completed.returncode}): {tail}"
    else:
        raw = json.loads(lines[-1])
        raw["case"] = case
        result = Measurement(**raw)
    result.load_before = load
    # Cores' worth of CPU that other processes used while this case ran (import and warm-up
    # included): the noise the load average only hints at.
    foreign = (busy_cpu_seconds() - busy) - (children_cpu_seconds() - ours)
    result.foreign_cpu = max(0.0, foreign / (time.perf_counter() - wall))
    return result


def measure_case(case: Case, budget_s: float, env: dict[str, str], *, wait_quiet_s: float,
                 retries: int) -> Measurement:
    """Measure ``case``; while other processes disturb a short one, try again and keep the
    attempt they disturbed least."""
    attempts: list[Measurement] = []
    while len(attempts) <= retries:
        if wait_quiet_s > 0:
            wait_for_quiet(wait_quiet_s)
        m = run_case(case, budget_s, env)
        attempts.append(m)
        if m.skipped or m.foreign_cpu <= NOISY_CORES or sum(m.times) > RETRY_MAX_TIMED_S:
            break
        print(f"(other processes: {m.foreign_cpu:.2f} cores, again) … ", end="", flush=True)
    measured = [m for m in attempts if not m.skipped] or attempts
    best = min(measured, key=lambda m: m.foreign_cpu)
    best.attempts = len(attempts)
    return best


def child_main(spec: str, budget_s: float) -> None:
    case = Case(**json.loads(spec))
    result = asdict(measure_one(case, budget_s))
    del result["case"]
    print(json.dumps(result))
