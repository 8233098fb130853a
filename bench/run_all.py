"""Run every benchmark in bench/, each in a fresh subprocess, and write one report.

    make bench                       # = bash scripts/bootstrap.sh && .venv/bin/python bench/run_all.py
    .venv/bin/python bench/run_all.py [--quick] [--only dit_step,refiner] [--reuse vae_decode]

Writes bench/results/<group>.json (each benchmark's own output), bench/results/results.json (all of
them, plus the verdicts), bench/RESULTS.md (tables, targets, MET / MISSED) and one PNG per figure
group in bench/plots/. ``--quick`` is a smoke test of the orchestration (fewer repeats, smaller
sizes, the VAE and text-memory results reused) and writes under bench/_work/quick/ instead, so
it never replaces the committed figures. ``--reuse`` / ``--only`` take groups' results from the
committed bench/results/*.json instead of re-running them (marked "reused" in the report).

With a CUDA device the GPU benchmark (bench/gpu_blockswap.py) runs too; without one the report
says "GPU: not run (no CUDA device)". Exit status 1 if any benchmark failed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.plots import make_plots  # noqa: E402
from bench.report import GROUPS, evaluate, write_report  # noqa: E402

COMMITTED = ROOT / "bench" / "results"


@dataclass(frozen=True)
class Bench:
    key: str
    script: str
    output: str  # file name of its JSON in the results folder
    args: tuple[str, ...] = ()
    quick_args: tuple[str, ...] | None = ()  # None: reused in --quick (too slow for a smoke test)
    takes_out: bool = True  # accepts --out PATH (bench_vae_decode.py always writes bench/results/)
    memory_only: bool = False  # measures peak RSS only: may overlap the next memory-only benchmark
    timeout_s: int = 1800


BENCHES = [
    Bench("dit_step", "bench_dit_step.py", "dit_step.json",
          quick_args=("--dtypes", "bf16", "--repeats", "1", "--no-profile")),
    Bench("refiner", "bench_refiner.py", "refiner.json", quick_args=("--repeats", "1")),
    # one repeat (about 2.5 min here) keeps make bench near its 20-minute budget; the script defaults to 2
    Bench("step_cache", "bench_step_cache.py", "step_cache.json", args=("--repeats", "1"),
          quick_args=("--steps", "4", "--repeats", "1")),
    Bench("compile_cfg", "bench_compile_cfg.py", "compile_cfg.json", quick_args=("--repeats", "1")),
    # issue 18's side by side: one repeat, 10 steps, 9 videos; 13 min wall on this 2-core machine shared at load
    # average ~7 (its videos took 226 CPU s, about 2 min of both cores when the machine is not shared)
    Bench("native_cache", "bench_native_cache.py", "native_cache.json", args=("--repeats", "1"),
          quick_args=("--steps", "3", "--comfy-thresholds", "0.2")),
    # issue 16's modes at 5 frames of 192x192 (a shared 2-core CPU could not fit the 17x256x256 run in time)
    Bench("vae_decode", "bench_vae_decode.py", "vae_decode.json", quick_args=None, takes_out=False,
          args=("--shape", "2", "24", "24", "--variants", "ours_untiled", "ours_chunk1", "ours_chunk1_per_chunk_norm",
                "ours_tiled", "ours_tiled_per_tile_norm", "comfy_untiled", "comfy_tiled", "diffusers_tiled")),
    Bench("text_memory", "bench_text_memory.py", "text_memory.json", quick_args=None, memory_only=True),
    Bench("planner", "bench_planner.py", "bench_planner.json", quick_args=("--quick",), memory_only=True),
    Bench("blockswap", "bench_blockswap.py", "bench_blockswap.json", quick_args=("--repeats", "2")),
    Bench("pipeline", "bench_pipeline.py", "pipeline.json", quick_args=("--repeats", "1")),
    Bench("gpu", "gpu_blockswap.py", "gpu_blockswap.json", quick_args=("--config", "half", "--repeats", "1")),
]
assert sorted(b.key for b in BENCHES) == sorted(g[0] for g in GROUPS), "every report group needs one benchmark"


def cuda_available() -> bool:
    probe = "import torch; print(int(torch.cuda.is_available()))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    return out.stdout.strip().endswith("1")


class Running:
    """One benchmark script running in a fresh process, its output teed to the console and a log."""

    def __init__(self, bench: Bench, args: tuple[str, ...], out_json: Path, log: Path):
        self.bench, self.out_json, self.log = bench, out_json, log
        cmd = [sys.executable, str(ROOT / "bench" / bench.script), *args]
        if bench.takes_out:
            cmd += ["--out", str(out_json)]
        self.shown = " ".join([".venv/bin/python", f"bench/{bench.script}", *args])
        print(f"\n=== {bench.key}: {self.shown}", flush=True)
        log.parent.mkdir(parents=True, exist_ok=True)
        self.start = time.perf_counter()
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
        # past the limit, stop this benchmark's own process group (it and its children) only
        self.watchdog = threading.Timer(bench.timeout_s, os.killpg, (self.proc.pid, signal.SIGKILL))
        self.watchdog.start()
        self.reader = threading.Thread(target=self._tee, daemon=True)
        self.reader.start()

    def _tee(self) -> None:
        with open(self.log, "w") as sink:
            for line in self.proc.stdout:
                sink.write(line)
                print(f"  [{self.bench.key}] {line}", end="", flush=True)

    def finish(self) -> dict:
        rc = self.proc.wait()
        self.watchdog.cancel()
        self.reader.join()
        seconds = time.perf_counter() - self.start
        bench, out_json = self.bench, self.out_json
        entry = {"command": self.shown, "seconds": seconds, "log": str(self.log.relative_to(ROOT))}
        produced = out_json if bench.takes_out else COMMITTED / bench.output
        if rc != 0 or not produced.is_file():
            tail = self.log.read_text(errors="replace").strip().splitlines()[-5:]
            reason = f"exit status {rc}" + (f" after the {bench.timeout_s} s limit" if seconds > bench.timeout_s else "")
            print(f"=== {bench.key} FAILED ({reason}) after {seconds:.0f} s", flush=True)
            return {**entry, "status": "failed", "error": f"{reason}: " + " / ".join(tail)}
        if produced.resolve() != out_json.resolve():
            out_json.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(produced, out_json)
        print(f"=== {bench.key} done in {seconds:.0f} s", flush=True)
        return {**entry, "status": "ok", "data": json.loads(out_json.read_text())}


def finish(running: dict[str, Running], benches: dict) -> None:
    """Wait for every started benchmark and record its result."""
    for key, run in list(running.items()):
        benches[key] = run.finish()
        del running[key]


def reused(bench: Bench, why: str) -> dict:
    source = COMMITTED / bench.output
    if not source.is_file():
        return {"status": "failed", "error": f"asked to reuse {source.relative_to(ROOT)}, which does not exist",
                "command": "-"}
    print(f"\n=== {bench.key}: reused from {source.relative_to(ROOT)} ({why})", flush=True)
    return {"status": "reused", "source": str(source.relative_to(ROOT)), "data": json.loads(source.read_text()),
            "command": f"(reused: {why})"}


def machine(load: tuple[float, ...]) -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), "unknown CPU")
    return f"{model}, {os.cpu_count()} cores, load average {load[0]:.1f} at the start"


def git_commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
        return sha.strip() or "unknown"
    except OSError:
        return "unknown"


def parse(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    keys = [b.key for b in BENCHES]
    parser.add_argument("--quick", action="store_true", help="smoke test of the orchestration (bench/_work/quick/)")
    parser.add_argument("--only", default="", help=f"comma-separated groups to run; the others are reused ({keys})")
    parser.add_argument("--reuse", default="", help="comma-separated groups to take from bench/results/ unchanged")
    parser.add_argument("--report-only", action="store_true",
                        help="run nothing: redraw RESULTS.md, the plots and the verdicts from results/results.json "
                        "and each group's own results/<group>.json")
    args = parser.parse_args(argv)
    for name in filter(None, (args.only + "," + args.reuse).split(",")):
        if name not in keys:
            parser.error(f"unknown group {name!r}; expected some of {', '.join(keys)}")
    return args


def previous_run(results_dir: Path) -> dict | None:
    """The verdicts of the results.json about to be replaced (shown next to the new ones)."""
    old = results_dir / "results.json"
    if not old.is_file():
        return None
    meta = json.loads(old.read_text())
    return {"date": meta.get("meta", {}).get("date"), "commit": meta.get("meta", {}).get("commit"),
            "verdicts": [{k: v[k] for k in ("group", "figure", "status", "measured")} for v in meta.get("verdicts", [])]}


def write_outputs(results: dict, base: Path, results_dir: Path) -> tuple[Path, dict]:
    """Plots, RESULTS.md and results.json (with the verdicts) for ``results``."""
    plots = make_plots(results, base / "plots")
    md = base / "RESULTS.md"
    write_report(results, md, {k: os.path.relpath(p, md.parent) for k, p in plots.items()})
    results["verdicts"] = evaluate(results)
    (results_dir / "results.json").write_text(json.dumps(results, indent=1))
    return md, plots


def main(argv=None) -> int:
    args = parse(argv)
    base = ROOT / "bench" / "_work" / "quick" if args.quick else ROOT / "bench"
    results_dir = base / "results" if args.quick else COMMITTED
    if args.report_only:
        results = json.loads((results_dir / "results.json").read_text())
        for bench in BENCHES:  # each group's own JSON file is the source of truth (e.g. a newer VAE run)
            own = results_dir / bench.output
            entry = results["benches"].get(bench.key)
            if entry is None and own.is_file():  # a group added since the last full run joins with its own run
                entry = results["benches"][bench.key] = {
                    "status": "reused", "source": str(own.relative_to(ROOT)),
                    "command": f"(its own run, joined with --report-only: python bench/{bench.script})"}
            if entry is not None and entry.get("status") in ("ok", "reused") and own.is_file():
                entry["data"] = json.loads(own.read_text())
        results["benches"] = {b.key: results["benches"][b.key] for b in BENCHES if b.key in results["benches"]}
        md, plots = write_outputs(results, base, results_dir)
        print(f"wrote {md.relative_to(ROOT)} and {len(plots)} plots from {results_dir.relative_to(ROOT)}/results.json")
        return 0
    only, reuse = set(filter(None, args.only.split(","))), set(filter(None, args.reuse.split(",")))
    start, load = time.perf_counter(), os.getloadavg()
    previous = previous_run(results_dir)
    has_cuda = cuda_available()
    benches, running = {}, {}
    for bench in BENCHES:
        if bench.key == "gpu" and not has_cuda:
            benches[bench.key] = {"status": "not run", "error": "GPU: not run (no CUDA device).", "command": "-"}
        elif bench.key in reuse or (only and bench.key not in only):
            benches[bench.key] = reused(bench, "--reuse" if bench.key in reuse else "not in --only")
        elif args.quick and bench.quick_args is None:
            benches[bench.key] = reused(bench, "too slow for --quick")
        else:
            extra = bench.quick_args if args.quick else bench.args
            log = ROOT / "bench" / "_work" / "logs" / f"{bench.key}.log"
            if not bench.memory_only:  # memory-only benchmarks overlap each other; a timed one runs alone
                finish(running, benches)
            running[bench.key] = Running(bench, extra, results_dir / bench.output, log)
            if not bench.memory_only:
                finish(running, benches)
    finish(running, benches)
    benches = {b.key: benches[b.key] for b in BENCHES}
    total = time.perf_counter() - start
    note = "QUICK smoke run (fewer repeats, smaller sizes): not the committed figures. " if args.quick else ""
    results = {"meta": {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                        "commit": git_commit(), "machine": machine(load), "cuda": has_cuda,
                        "command": "make bench-quick" if args.quick else "make bench", "argv": sys.argv[1:],
                        "note": note + f"Load average at the end: {os.getloadavg()[0]:.1f}.",
                        "total_seconds": total},
               "benches": benches, "previous": previous}
    md, plots = write_outputs(results, base, results_dir)
    failed = [k for k, b in benches.items() if b["status"] == "failed"]
    print(f"\nwrote {md.relative_to(ROOT)}, {(results_dir / 'results.json').relative_to(ROOT)} and {len(plots)} plots "
          f"in {total / 60:.1f} min" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    for v in results["verdicts"]:
        print(f"  {v['status']:>12}  {v['figure']}: {v['measured']}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
