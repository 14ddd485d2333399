"""Machine facts and a quietness check for benchmarks run on a shared CPU box.

``machine_facts()`` records what a timing depends on (cores, CPU model, torch threads, library
versions, git commit). ``CpuWatch`` tells how busy the machine was with *other* work during a
measurement: the CPU time the kernel counted on our cores (``/proc/stat``) minus the CPU time
of this process and the children it has waited for, divided by the wall time. Unlike the load
average (which counts the benchmark's own processes too), that figure is zero on a quiet machine.
"""

from __future__ import annotations

import datetime
import os
import platform
import resource
import subprocess
import time
from pathlib import Path

LOAD_WARNING = 1.0  # 1-minute load average at start (half of 2 cores; it lags a minute) above which timings are suspect
FOREIGN_WARNING = 0.1  # cores used by other processes, on average, above which timings are not trusted


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_commit(repo: Path) -> str:
    try:
        def git(*words: str) -> str:
            return subprocess.run(["git", "-C", str(repo), *words], capture_output=True, text=True, timeout=5).stdout.strip()

        sha, dirty = git("rev-parse", "--short", "HEAD"), git("status", "--porcelain", "--untracked-files=no")
        return f"{sha}{'+dirty' if dirty else ''}" if sha else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine_facts(repo: Path) -> dict:
    import torch

    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("open_clip", "lightning", "onnxruntime", "sklearn", "peft"):
        try:
            versions[name] = __import__(name).__version__
        except Exception:  # a missing optional package is just not listed
            pass
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "host": platform.node(),
        "nproc": cores(),
        "cpu_model": cpu_model(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "versions": versions,
        "git_commit": git_commit(repo),
    }


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _busy_seconds() -> float:
    """CPU-busy seconds on the cores this process may use, as counted by the kernel."""
    mine = {f"cpu{i}" for i in os.sched_getaffinity(0)}
    ticks = 0
    for line in Path("/proc/stat").read_text().splitlines():
        name, *fields = line.split()
        if name in mine:
            user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
            ticks += user + nice + system + irq + softirq + steal
    return ticks / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(u.ru_utime + u.ru_stime for u in usage)


class CpuWatch:
    """Average cores used by other processes between ``start()`` and ``stop()``.

    Only exact once the children started in between have been waited for (their CPU time is
    then in ``RUSAGE_CHILDREN``); ``subprocess.run`` does that.
    """

    def start(self) -> "CpuWatch":
        self.t0, self.busy0, self.own0, self.load_start = time.monotonic(), _busy_seconds(), _own_cpu_seconds(), load_average()
        return self

    def stop(self) -> dict:
        wall = max(time.monotonic() - self.t0, 1e-9)
        busy, own = _busy_seconds() - self.busy0, _own_cpu_seconds() - self.own0
        return {
            "wall_s": round(wall, 1),
            "load_start": self.load_start,
            "load_end": load_average(),
            "own_cores": round(own / wall, 2),
            "other_cores": round(max(0.0, busy - own) / wall, 2),
        }


def quietness_warnings(watch: dict) -> list[str]:
    """Human-readable reasons not to trust the timings of a run summarised by ``CpuWatch.stop``.

    The decisive figure is the CPU that *other* processes used during the run. The load average
    only hints: it lags about a minute behind and, at the end, counts the benchmark itself.
    """
    out = []
    if watch["load_start"] > LOAD_WARNING:
        out.append(f"load average at start {watch['load_start']:.2f} > {LOAD_WARNING}: other work may have been running")
    if watch["other_cores"] > FOREIGN_WARNING:
        out.append(f"other processes used {watch['other_cores']:.2f} of {cores()} cores on average during the run")
    return out


def command_line(script_file: str, argv: list[str] | None) -> str:
    """The command that reproduces this run, as the user would type it from the working directory."""
    import shlex
    import sys

    script = os.path.relpath(script_file, Path.cwd())
    words = [script if not script.startswith("..") else str(Path(script_file).resolve()), *(argv if argv is not None else sys.argv[1:])]
    return "python " + " ".join(shlex.quote(w) for w in words)
