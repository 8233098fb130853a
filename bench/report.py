"""Turn the collected benchmark results into bench/RESULTS.md: one section per figure group.

``results`` is what ``bench/run_all.py`` writes to bench/results/results.json:
``{"meta": {...}, "benches": {group: {"status": "ok"|"reused"|"failed"|"not run", "data": <the
bench's own JSON>, "error": str, "seconds": float, "command": str}}}``. Every group in
:data:`GROUPS` must have an entry (a bench that failed still has one, and its section says
NOT MEASURED); a missing entry is a wiring error and raises KeyError.

Each section states, per figure, the target (from the stage issues), the measured value and
MET / MISSED (or "no target" / NOT MEASURED / NOT RUN); a miss says where the time or memory goes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench.report_fmt import MET, MISSED, NOT_MEASURED, NOT_RUN
from bench.report_models import dit_section, refiner_section, text_section, vae_section
from bench.report_system import (
    blockswap_section,
    compile_cfg_section,
    gpu_section,
    native_cache_section,
    pipeline_section,
    planner_section,
    step_cache_section,
)


@dataclass
class Verdict:
    figure: str
    target: str
    measured: str
    status: str
    note: str = ""  # for a miss: where the time or memory goes


@dataclass
class Section:
    key: str
    title: str
    verdicts: list[Verdict] = field(default_factory=list)
    body: str = ""


# (results key, section title, builder(data, results) -> (verdicts, markdown body))
GROUPS: list[tuple[str, str, Callable]] = [
    ("dit_step", "DiT step at real width: ours vs diffusers vs ComfyUI", dit_section),
    ("refiner", "Token-refiner precompute", refiner_section),
    ("vae_decode", "VAE tiled decode: memory, time, seams", vae_section),
    ("text_memory", "Text encoders: LLM load and split-tool memory", text_section),
    ("blockswap", "Block swap: CPU overhead of the machinery", blockswap_section),
    ("planner", "Memory planner: predicted vs measured, 13B vs published", planner_section),
    ("pipeline", "Whole pipeline: tiny demo through the API vs in-process", pipeline_section),
    ("step_cache", "Step caches: time per video vs no cache", step_cache_section),
    ("compile_cfg", "Compiled blocks and batched true CFG: one step", compile_cfg_section),
    ("native_cache", "Whole video with step caches: ours vs ComfyUI's KSampler + EasyCache", native_cache_section),
    ("gpu", "GPU mode: block-swap counts and attention backends", gpu_section),
]


def build_sections(results: dict) -> list[Section]:
    sections = []
    for key, title, builder in GROUPS:
        bench = results["benches"][key]  # KeyError: run_all did not record this group at all
        status = bench.get("status")
        if status in ("ok", "reused") and bench.get("data") is not None:
            verdicts, body = builder(bench["data"], results)
            verdicts = [Verdict(**v) for v in verdicts]
            if status == "reused":
                body = f"*Reused from `{bench.get('source', 'bench/results')}`, not re-run in this report's run.*\n\n" + body
        elif status == "not run":
            verdicts = [Verdict(title, "-", "-", NOT_RUN, bench.get("error", ""))]
            body = f"{bench.get('error', 'not run')}\n"
        else:
            reason = (bench.get("error") or "no result").strip().splitlines()[-1:] or ["no result"]
            verdicts = [Verdict(title, "-", "-", NOT_MEASURED, f"the benchmark failed: {reason[0]}")]
            body = f"The benchmark failed ({reason[0]}); see the log `{bench.get('log', '-')}`.\n"
        sections.append(Section(key, title, verdicts, body))
    return sections


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def verdict_table(verdicts: list[Verdict], with_group: list[str] | None = None,
                  previous: list[str] | None = None) -> str:
    """Markdown table of verdicts; optionally a group column first and a previous-run column last."""
    head = (["group"] if with_group else []) + ["figure", "target", "measured", "verdict"]
    head += ["previous run"] if previous else []
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, v in enumerate(verdicts):
        status = f"**{v.status}**" if v.status in (MET, MISSED) else v.status
        cells = ([with_group[i]] if with_group else []) + [v.figure, v.target, v.measured, status]
        cells += [previous[i]] if previous else []
        rows.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(rows) + "\n"


def _previous_cells(results: dict, sections: list[Section]) -> list[str] | None:
    """Each verdict's status and value in the previous committed run, when run_all kept them."""
    prev = results.get("previous")
    if not prev or not prev.get("verdicts"):
        return None
    old = {(v["group"], v["figure"]): v for v in prev["verdicts"]}
    cells = []
    for s in sections:
        for v in s.verdicts:
            p = old.get((s.key, v.figure))
            cells.append("-" if p is None else f"{p['status']}: {p['measured'][:40]}")
    return cells


def _anchor(title: str) -> str:
    keep = "".join(ch for ch in title.lower() if ch.isalnum() or ch in " -")
    return keep.replace(" ", "-")


def render(results: dict, sections: list[Section], plots: dict[str, str] | None = None) -> str:
    plots = plots or {}
    meta = results.get("meta", {})
    out = ["# Benchmark results\n",
           f"Made by `{meta.get('command', 'make bench')}` on {meta.get('date', '?')} at commit "
           f"`{meta.get('commit', '?')}`; machine: {meta.get('machine', '?')}. "
           f"{meta.get('note', '')}\n",
           "Timings are ratios against a peer measured in the same run, the implementations taking turns; "
           "medians with the range (min-max) over the repeats. Memory is the peak RSS (`VmHWM`) of a fresh "
           "process per measurement. Raw numbers: [`bench/results/results.json`](results/results.json).\n",
           f"**GPU:** {_gpu_line(results)}\n",
           "## Summary\n"]
    all_verdicts, groups = [], []
    for s in sections:
        all_verdicts += s.verdicts
        groups += [f"[{s.title.split(':')[0]}](#{_anchor(s.title)})"] * len(s.verdicts)
    previous = _previous_cells(results, sections)
    if previous:
        prev = results["previous"]
        out.append(f"The last column is the previous committed run ({prev.get('date', '?')}, commit "
                   f"`{prev.get('commit', '?')}`), to show how much a verdict moves between runs on this machine.\n")
    out.append(verdict_table(all_verdicts, groups, previous))
    misses = [v for v in all_verdicts if v.status == MISSED]
    if misses:
        out.append("\n**Missed targets, and where the time or memory goes:**\n")
        seen: dict[str, str] = {}
        for v in misses:
            note = f"the same as for {seen[v.note]}." if v.note in seen else v.note
            seen.setdefault(v.note, v.figure)
            out.append(f"- **{v.figure}** ({v.measured}; target {v.target}): {note}")
        out.append("")
    unmeasured = [v for v in all_verdicts if v.status == NOT_MEASURED]
    if unmeasured:
        out.append("\n**Not measured in this run:**\n")
        out += [f"- **{v.figure}**: {v.note}" for v in unmeasured]
        out.append("")
    for s in sections:
        out.append(f"\n## {s.title}\n")
        if s.key in plots:
            out.append(f"![{s.title}]({plots[s.key]})\n")
        out.append(verdict_table(s.verdicts))
        out.append(s.body)
    out.append(_runs_table(results))
    return "\n".join(out).rstrip() + "\n"


def _gpu_line(results: dict) -> str:
    gpu = results["benches"].get("gpu", {})
    if gpu.get("status") == "ok":
        return f"run on {gpu['data'].get('device', 'a CUDA device')} (see the GPU section)."
    return "not run (no CUDA device)." if gpu.get("status") == "not run" else f"{gpu.get('status', 'not run')}."


def _runs_table(results: dict) -> str:
    rows = ["\n## How each benchmark ran\n", "| group | status | wall time | command |", "|---|---|---|---|"]
    for key, _, _ in GROUPS:
        b = results["benches"][key]
        secs = b.get("seconds")
        wall = f"{secs:.0f} s" if isinstance(secs, (int, float)) else "-"
        rows.append(f"| {key} | {b.get('status')} | {wall} | `{_cell(b.get('command', '-'))}` |")
    rows.append("\nMemory-only benchmarks (text_memory, planner) run side by side; every timed one runs alone.")
    total = results.get("meta", {}).get("total_seconds")
    if total is not None:
        rows.append(f"\nTotal wall time of the benchmarks: {total / 60:.1f} min.")
    return "\n".join(rows) + "\n"


def evaluate(results: dict) -> list[dict]:
    """Every verdict, as plain dicts (stored in results.json next to the raw data)."""
    return [{"group": s.key, **asdict(v)} for s in build_sections(results) for v in s.verdicts]


def write_report(results: dict, path: Path, plots: dict[str, str] | None = None) -> str:
    """Write RESULTS.md for ``results``; ``plots`` maps a group key to an image path relative to ``path``."""
    text = render(results, build_sections(results), plots)
    Path(path).write_text(text)
    return text
