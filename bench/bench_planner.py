"""Memory planner vs measurement (CPU) and vs the published 13B figures.

    .venv/bin/python bench/bench_planner.py [--quick] [--out bench/results/bench_planner.json]

CPU measurement: a fresh subprocess builds a DiT, runs one small warm-up forward (so library
code pages are already resident), records its RSS, runs the measured forward and reads the
peak RSS (``VmHWM``). glibc is told to serve every large allocation with mmap
(``MALLOC_MMAP_THRESHOLD_``) so freed tensors leave the RSS at once and the peak is the peak of
live tensors. Writes bench/results/bench_planner.json.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"

# (name, DiT config overrides, dtype, latent T/H/W, text tokens, text padding)
CPU_CASES = [
    ("d512-fp32", dict(hidden_size=512, num_heads=4, depth_double=1, depth_single=1), "float32", (4, 64, 64), 64, False),
    ("d512-bf16", dict(hidden_size=512, num_heads=4, depth_double=1, depth_single=1), "bfloat16", (4, 64, 64), 64, False),
    ("d512-bf16-pad", dict(hidden_size=512, num_heads=4, depth_double=1, depth_single=1), "bfloat16", (4, 64, 64), 64, True),
    ("d1024-fp32", dict(hidden_size=1024, num_heads=8, depth_double=1, depth_single=1), "float32", (8, 48, 48), 128, False),
    ("d1024-bf16", dict(hidden_size=1024, num_heads=8, depth_double=1, depth_single=1), "bfloat16", (8, 48, 48), 128, False),
]
TARGET_PCT = 20.0  # issue 6: planner within +-20 % of the measured peak

CHILD = r"""
import gc, json, sys
import torch
sys.path.insert(0, sys.argv[2])
from hunyuan.dit import DiTConfig, HunyuanVideoDiT
spec = json.loads(sys.argv[1])
torch.manual_seed(0)
dtype = getattr(torch, spec["dtype"])
cfg = DiTConfig(text_states_dim=64, text_states_dim_2=32, **spec["config"])
model = HunyuanVideoDiT(cfg, dtype=dtype).eval()
model.detach_refiner()
L = spec["text"]
mask = torch.ones(1, L, dtype=torch.bool)
if spec["pad"]:
    mask[:, L // 2:] = False
pooled = torch.randn(1, cfg.text_states_dim_2)
tokens = torch.randn(1, L, cfg.hidden_size, dtype=dtype)
def run(t, h, w):
    x = torch.randn(1, 16, t, h, w)
    with torch.no_grad():
        return model(x, torch.tensor([900.0]), mask, pooled, torch.tensor([6.0]), refined_text=tokens)
run(1, 4, 4)
gc.collect()
with open("/proc/self/statm") as f:
    base = int(f.read().split()[1]) * 4096
run(*spec["latent"])
# VmHWM is this address space's high-water mark. ru_maxrss is not: Linux carries the forking
# parent's RSS into it across exec, so a large parent (a long pytest run) inflated the "peak".
with open("/proc/self/status") as f:
    peak = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
print(json.dumps({"base": base, "peak": peak}))
"""


def _clean_signals() -> None:
    """Child set-up: default signal dispositions and an empty signal mask. Both survive exec, and
    a parent that changed them (importing ComfyUI does) made the child's bf16/fp32 peak ~60 MB
    higher; with them reset the measurement no longer depends on the parent."""
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    for sig in (signal.SIGINT, signal.SIGPIPE, signal.SIGTERM, signal.SIGCHLD, signal.SIGHUP, signal.SIGUSR1,
                signal.SIGUSR2, signal.SIGALRM):
        signal.signal(sig, signal.SIG_DFL)


def measure_forward_peak(config: dict, dtype: str, latent: tuple[int, int, int], text: int, pad: bool) -> int:
    """Peak bytes above the resident model during one DiT forward on the CPU (subprocess)."""
    spec = json.dumps({"config": config, "dtype": dtype, "latent": list(latent), "text": text, "pad": pad})
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "2"}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, spec, str(ROOT)], env=env, capture_output=True, text=True, check=True, timeout=300,
        preexec_fn=_clean_signals,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return result["peak"] - result["base"]


def predicted_forward_peak(config: dict, dtype: str, latent: tuple[int, int, int], text: int) -> int:
    import torch

    from hunyuan.dit import DiTConfig
    from hunyuan.memory import estimate_sampling_memory
    from hunyuan.sampling import video_size

    cfg = DiTConfig(text_states_dim=64, text_states_dim_2=32, **config)
    est = estimate_sampling_memory(
        cfg, **video_size(latent), text_tokens=text,
        weight_dtype=getattr(torch, dtype), attention="flash",
    )
    return est.activation_bytes


def run_cpu_cases(cases: list) -> list[dict]:
    rows = []
    for name, config, dtype, latent, text, pad in cases:
        measured = measure_forward_peak(config, dtype, latent, text, pad)
        predicted = predicted_forward_peak(config, dtype, latent, text)
        rows.append({"case": name, "measured_mib": measured / 2**20, "predicted_mib": predicted / 2**20,
                     "error_pct": 100.0 * (predicted - measured) / measured})
    return rows


def run_published() -> list[dict]:
    """Tencent's published whole-process peaks vs the whole-process estimate (hunyuan/process_memory.py),
    with the DiT sampling estimate alone next to it (what this table compared before)."""
    from hunyuan.memory import estimate_sampling_memory
    from hunyuan.process_memory import published_comparison

    rows = published_comparison()
    for row in rows:
        w, h, f = (int(x) for x in row["size"].split("x"))
        est = estimate_sampling_memory(width=w, height=h, frames=f)
        row.update(dit_sampling_gb=est.peak_bytes / 1e9, weights_gb=est.weights_bytes / 1e9,
                   activations_gb=est.activation_bytes / 1e9)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_planner.json")
    parser.add_argument("--quick", action="store_true", help="only the first two CPU cases (a smoke test)")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    cpu, published = run_cpu_cases(CPU_CASES[:2] if args.quick else CPU_CASES), run_published()
    print(f"{'case':<16}{'measured MiB':>14}{'predicted MiB':>15}{'error %':>9}")
    for r in cpu:
        print(f"{r['case']:<16}{r['measured_mib']:>14.1f}{r['predicted_mib']:>15.1f}{r['error_pct']:>9.1f}")
    print(f"\n{'13B size':<16}{'published GB':>14}{'whole process':>15}{'DiT alone':>11}{'ratio':>7}")
    for r in published:
        print(f"{r['size']:<16}{r['published_gb']:>14.1f}{r['predicted_gb']:>15.1f}{r['dit_sampling_gb']:>11.1f}"
              f"{r['ratio']:>7.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"target_pct": TARGET_PCT, "cpu": cpu, "published_13b": published}, indent=2))


if __name__ == "__main__":
    main()
