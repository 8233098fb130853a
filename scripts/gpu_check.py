"""The prepared GPU check: every CUDA path of the pack in one run of a few minutes (README "GPU check").

    python scripts/gpu_check.py [--dry-run] [--out DIR] [--budget-s 400] [--stages a,b]

Stages, cheapest first, each recorded as ok / fail / error / skipped (with the reason):
pack imports and the carried payload; the tiny model files through the real loaders, DiT parity
device vs CPU (fp32, bf16); the whole tiny pipeline with every component offloaded; partial-depth
real-width DiT: block swap on vs off bit-equal (side stream, pinned host memory), fp8 storage,
attention backends (sage/flash if installed), batched vs two-forward true CFG (time and peak at a
small and a larger size); the real VAE layout decoding on the device; the tests marked ``gpu``;
the 13B DiT under 24 GiB and 6 GiB caps with auto block swap. Every device peak is
``torch.cuda.max_memory_allocated`` next to the planner's prediction.

Writes DIR/gpu.json after every stage (a timeout keeps what finished) and DIR/gpu.md at the end.
Exit status 1 only when a stage failed (a property does not hold, or it crashed); skipped
stages are not failures. ``--dry-run``: device cpu, smallest sizes, same code paths (the test
suite runs it so the script cannot rot).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from scripts import gpu_pipeline, gpu_real, gpu_speed, gpu_stages  # noqa: E402
from scripts.gpu_common import CheckFailed, Ctx, Skipped  # noqa: E402

PAYLOAD_LIMIT = 64 * 2**20  # the device tool's working-tree limit
CARRY = (".comfyui/ComfyUI/comfy/text_encoders/llama_tokenizer", ".comfyui/ComfyUI/comfy/sd1_tokenizer")


def _tree_bytes(paths) -> int:
    total = 0
    for p in map(Path, paths):
        p = p if p.is_absolute() else ROOT / p
        if p.is_file():
            total += p.stat().st_size
        elif p.is_dir():
            total += sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return total


def stage_payload(ctx: Ctx) -> dict:
    """What the device tool carries: tracked + untracked-not-ignored files, plus the CARRY paths
    (the tokenizer files the tiny text encoders need), under the 64 MiB limit."""
    from hunyuan.text.tiny import clip_tokenizer_dir, llama_tokenizer_dir
    from scripts.comfy_server import default_comfyui_dir

    tokenizers = [llama_tokenizer_dir(default_comfyui_dir()), clip_tokenizer_dir(default_comfyui_dir())]
    missing = [str(t) for t in tokenizers if not t.is_dir()]
    if missing:
        raise CheckFailed(f"tokenizer folders missing: {missing} (run scripts/bootstrap.sh, or set COMFYUI_PATH)")
    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        return {"carry": list(CARRY), "note": "no git checkout here (on the device): size checked before sending"}
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                           capture_output=True).stdout.decode().split("\0")
    tree, carried = _tree_bytes(f for f in files if f), _tree_bytes(tokenizers)
    if tree + carried > PAYLOAD_LIMIT:
        raise CheckFailed(f"payload {(tree + carried) / 2**20:.1f} MiB is over the device tool's 64 MiB")
    return {"tree_mib": tree / 2**20, "carry_mib": carried / 2**20, "total_mib": (tree + carried) / 2**20,
            "limit_mib": 64, "carry": list(CARRY)}


def stage_tiny_models(ctx: Ctx) -> dict:
    from hunyuan.tools.make_tiny_models import write_all
    from scripts.comfy_server import default_comfyui_dir

    written = write_all(ctx.work / "models", comfyui=default_comfyui_dir())
    return {"files": len(written)}


def stage_gpu_tests(ctx: Ctx) -> dict:
    """pytest on every test marked ``gpu`` (on the CPU they skip; the run still proves they collect)."""
    ctx.need(30, "gpu tests")
    grep = subprocess.run(["grep", "-rl", "pytest.mark.gpu", "tests"], cwd=ROOT, capture_output=True, text=True)
    files = sorted(grep.stdout.split())
    if not files:
        raise Skipped("no test is marked gpu")
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", *files]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=max(30, ctx.left()))
    tail = run.stdout.strip().splitlines()[-1:] or [run.stderr.strip()[-300:]]
    if run.returncode not in (0, 5):
        raise CheckFailed(f"pytest -m gpu exit {run.returncode}: {run.stdout[-1500:]}")
    return {"files": files, "summary": tail[0], "exit": run.returncode}


STAGES = {
    "pack_imports": gpu_stages.stage_pack_imports,
    "payload": stage_payload,
    "tiny_models": stage_tiny_models,
    "tiny_dit": gpu_stages.stage_tiny_dit,
    "pipeline": gpu_pipeline.stage_pipeline,
    "blockswap": gpu_stages.stage_blockswap,
    "fp8": gpu_stages.stage_fp8,
    "attention": gpu_stages.stage_attention,
    "cfg": gpu_speed.stage_cfg,
    "real_vae": gpu_stages.stage_real_vae,
    "gpu_tests": stage_gpu_tests,
    "real_13b": gpu_real.stage_real_13b,
}
NEEDS = {"tiny_dit": "tiny_models", "pipeline": "tiny_models", "fp8": "blockswap"}


def run_stage(name: str, ctx: Ctx, results: dict) -> dict:
    need = NEEDS.get(name)
    if need and results.get(need, {}).get("status") != "ok":
        return {"status": "skipped", "reason": f"needs the {need} stage, which did not pass", "seconds": 0.0}
    start = time.monotonic()
    try:
        row = {"status": "ok", **STAGES[name](ctx)}
    except Skipped as err:
        row = {"status": "skipped", "reason": str(err)}
    except CheckFailed as err:
        row = {"status": "fail", "reason": str(err)}
    except Exception as err:  # a crash on the device is a finding too: record it and go on
        row = {"status": "error", "reason": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()[-3000:]}
    finally:
        if ctx.cuda:
            torch.cuda.empty_cache()
    row["seconds"] = time.monotonic() - start
    return row


def _summary(report: dict) -> str:
    lines = [f"# GPU check ({'dry run, ' if report['dry_run'] else ''}{report['device']})", "",
             f"torch {report['torch']}, {report['started']}, {report['wall_s']:.0f} s. "
             f"Failures: {len(report['failures'])}.", "", "| stage | status | s | details |", "|---|---|---|---|"]
    for name, row in report["stages"].items():
        details = {k: v for k, v in row.items() if k not in ("status", "seconds", "traceback")}
        text = json.dumps(details, default=str)
        lines.append(f"| {name} | {row['status']} | {row['seconds']:.1f} | {text[:600]} |")
    for title, items in (("Findings", report["findings"]), ("Failures", report["failures"])):
        if items:
            lines += ["", f"## {title}", *[f"- {i}" for i in items]]
    return "\n".join(lines) + "\n"


def _args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="device cpu, smallest sizes, same code paths")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or ROOT / "bench" / "_work" / "gpu"))
    parser.add_argument("--budget-s", type=float, default=400.0, help="stages that would overrun it are skipped")
    parser.add_argument("--stages", default=",".join(STAGES), help="comma-separated subset, in this order")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = _args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; use --dry-run on a CPU machine", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 parity means fp32 math on both sides
    torch.backends.cudnn.allow_tf32 = False
    device = torch.device("cpu") if args.dry_run else torch.device("cuda", torch.cuda.current_device())
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as work:
        ctx = Ctx(device=device, dry_run=args.dry_run, work=Path(work), deadline=started + args.budget_s)
        report = {"schema": 1, "dry_run": args.dry_run, "torch": torch.__version__, "started": time.strftime(
            "%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "device": torch.cuda.get_device_name(device) if ctx.cuda
            else "cpu", "budget_s": args.budget_s, "stages": {}, "findings": ctx.findings, "failures": []}
        for name in args.stages.split(","):
            row = run_stage(name, ctx, report["stages"])
            report["stages"][name] = row
            if row["status"] in ("fail", "error"):
                report["failures"].append(f"{name}: {row['reason']}")
            print(f"gpu_check: {name}: {row['status']} ({row['seconds']:.1f} s) {row.get('reason', '')}", flush=True)
            report["wall_s"] = time.monotonic() - started
            (args.out / "gpu.json").write_text(json.dumps(report, indent=2, default=str))
    (args.out / "gpu.md").write_text(_summary(report))
    print(_summary(report))
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
