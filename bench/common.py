"""Small helpers shared by the benchmarks: interleaved timing, spreads, and peak-RSS reading.

Every benchmark runs in its own fresh interpreter (``bench/run_all.py`` starts each as a
subprocess, and the memory benchmarks start one more child per measurement), so a process's
``VmHWM`` is its own peak. ``ru_maxrss`` is not used: on Linux it carries the forking parent's
RSS across exec, so a large parent inflates a child's "peak".
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def _status(field: str, pid: int | str = "self") -> int:
    path = Path(f"/proc/{pid}/status")
    for line in path.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in {path}")


def rss_now() -> int:
    """This process's resident bytes now (VmRSS)."""
    return _status("VmRSS")


def rss_peak(pid: int | str = "self") -> int:
    """A process's resident high-water mark in bytes (VmHWM), since start or the last reset.

    Per address space, unlike ru_maxrss, which Linux carries from a parent across fork and exec."""
    return _status("VmHWM", pid)


def rss_anon(pid: int | str = "self") -> int:
    """A process's own (anonymous) resident bytes now (RssAnon): what the kernel cannot drop,
    unlike the pages of a memory-mapped file, which VmRSS and VmHWM also count."""
    return _status("RssAnon", pid)


def reset_peak(pid: int | str = "self") -> None:
    """Reset a process's VmHWM to its current RSS, so that earlier peaks (imports, set-up) are not
    counted (another process's: same user)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def spread(values: list[float]) -> dict:
    """Median, quartiles (inclusive method) and range of repeated measurements."""
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else values * 3
    return {"median": statistics.median(values), "q1": q1, "q3": q3, "min": min(values), "max": max(values),
            "n": len(values)}


def interleaved(runs: dict[str, Callable[[], object]], repeats: int,
                clock: Callable[[], float] = time.perf_counter) -> tuple[dict[str, list[float]], dict[str, object]]:
    """Time every callable ``repeats`` times, taking turns (the order rotates each repeat).

    On a shared machine the load drifts; running the implementations in turn spreads that drift
    over all of them instead of penalising whichever ran in a busy spell, and the rotation removes
    any advantage of going first. Returns (seconds per label, each label's first output).
    """
    labels = list(runs)
    times: dict[str, list[float]] = {label: [] for label in labels}
    first: dict[str, object] = {}
    for r in range(repeats):
        shift = r % len(labels)
        for label in labels[shift:] + labels[:shift]:
            start = clock()
            out = runs[label]()
            times[label].append(clock() - start)
            first.setdefault(label, out)
    return times, first


def ratios(times: dict[str, list[float]], num: str, den: str) -> list[float]:
    """Per-repeat ratios num/den (e.g. peer seconds over ours = how much faster we are)."""
    return [a / b for a, b in zip(times[num], times[den])]


def write_json(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))
    return path
