"""Formatting helpers shared by the RESULTS.md section builders (bench/report_models.py, report_system.py).

A section builder takes (data, all results) and returns (verdicts, markdown body). ``data`` is the
group's own JSON as its benchmark wrote it; ``results`` is the whole collection, for the few
figures that relate two groups. A verdict is a dict with figure, target, measured, status
(MET / MISSED / "no target") and, for a miss, a note saying where the time or memory goes.
"""

from __future__ import annotations

MB = 2**20
MET, MISSED, INFO, NOT_MEASURED, NOT_RUN = "MET", "MISSED", "no target", "NOT MEASURED", "NOT RUN"


def verdict(figure: str, target: str, measured: str, status: str, note: str = "") -> dict:
    return {"figure": figure, "target": target, "measured": measured, "status": status, "note": note}


def met(ok: bool) -> str:
    return MET if ok else MISSED


def rng(s: dict, fmt: str = "{:.2f}", unit: str = "") -> str:
    """'median (min to max)' of a spread dict; ``unit`` follows the median."""
    return f"{fmt.format(s['median'])}{unit} ({fmt.format(s['min'])} to {fmt.format(s['max'])})"


def table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def group_data(results: dict, key: str) -> dict | None:
    bench = results.get("benches", {}).get(key, {})
    return bench.get("data") if bench.get("status") in ("ok", "reused") else None


