"""Peak RAM of applying a LoRA to the DiT, each case in a FRESH subprocess.

    python bench/bench_lora_memory.py [--rank 64] [--keep] [--out FILE]

The DiT has the real width (3072, text 4096, refiner included) with 1 double + 1 single block,
bf16, random weights in a safetensors file; the LoRA is rank 64 on every Linear of both blocks
(musubi-tuner's layout, bf16). Cases:

1. ``load``: ``load_dit`` + the DiT's ModelPatcher, every weight read once so its pages are resident;
2. ``load+lora``: the same, then what the LoRA node does (read the file, map it, ComfyUI's
   ``comfy.lora.load_lora``, ``add_patches`` on a clone). Target: <= 1.1x ``load``;
3. ``load+lora+patch``: then ``patch_model()`` on the CPU, as ComfyUI patches a model it runs on
   the CPU: the patched weights are new tensors and the originals are kept for the unpatch
   (ComfyUI's own behaviour for any model; on a GPU the patched copies live on the device).

Peak = VmHWM (reset right after imports) minus the RSS right after imports. Writes
bench/results/lora_memory.json and prints a table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.common import RESULTS, reset_peak, rss_now, rss_peak, write_json  # noqa: E402

MB = 2**20
CASES = ("load", "load+lora", "load+lora+patch")


def config():
    from hunyuan.dit import REAL

    return dataclasses.replace(REAL, depth_double=1, depth_single=1)


def write_inputs(folder: Path, rank: int) -> tuple[Path, Path]:
    import torch
    from safetensors.torch import save_file

    from hunyuan.dit.tiny import random_state_dict, write_tiny_lora

    sd = {k: v.to(torch.bfloat16).contiguous() for k, v in random_state_dict(config(), seed=0).items()}
    dit = folder / "dit.safetensors"
    save_file(sd, str(dit))
    return dit, write_tiny_lora(folder, config(), seed=0, rank=rank)


def child(case: str, dit_path: str, lora_path: str) -> dict:
    sys.path.append(str(ROOT / ".comfyui" / "ComfyUI"))
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    import importlib
    import types

    import comfy.model_patcher
    import torch

    pack = types.ModuleType("hyvid_pack")
    pack.__path__ = [str(ROOT)]
    sys.modules["hyvid_pack"] = pack
    lora_node = importlib.import_module("hyvid_pack.nodes.lora")
    from hunyuan.checkpoint_io import load_state_dict
    from hunyuan.dit.checkpoint import load_dit

    base = rss_now()
    reset_peak()
    model = load_dit(dit_path, dtype=torch.bfloat16)
    model.detach_refiner()
    touched = sum(float(p.float().sum()) for p in model.parameters())  # every page resident
    patcher = comfy.model_patcher.ModelPatcher(model, load_device="cpu", offload_device="cpu")
    patched = 0
    if case != "load":
        patches, _ = lora_node.lora_patches(patcher, load_state_dict(lora_path), Path(lora_path).name)
        clone = patcher.clone()
        patched = len(clone.add_patches(patches, 1.0))
        if case == "load+lora+patch":
            clone.patch_model()
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return {"case": case, "peak_bytes": rss_peak() - base, "weight_bytes": weights, "patched": patched,
            "checksum": touched}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--out", type=Path, default=RESULTS / "lora_memory.json")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(*args.child)))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        dit, lora = write_inputs(Path(tmp), args.rank)
        runs = {}
        for case in CASES:
            proc = subprocess.run([sys.executable, __file__, "--child", case, str(dit), str(lora)],
                                  capture_output=True, text=True, check=True, cwd=ROOT)
            runs[case] = json.loads(proc.stdout.strip().splitlines()[-1])
        lora_bytes = lora.stat().st_size
    load = runs["load"]["peak_bytes"]
    result = {"config": "real width, 1 double + 1 single block, bf16", "rank": args.rank, "lora_file_bytes": lora_bytes,
              "runs": runs, "ratio_lora_vs_load": runs["load+lora"]["peak_bytes"] / load,
              "ratio_patch_vs_load": runs["load+lora+patch"]["peak_bytes"] / load, "target_lora_vs_load": 1.1}
    write_json(args.out, result)
    print(f"{'case':18} {'peak MiB':>9} {'x load':>7}")
    for case in CASES:
        peak = runs[case]["peak_bytes"]
        print(f"{case:18} {peak / MB:9.0f} {peak / load:7.2f}")
    print(f"LoRA file {lora_bytes / MB:.0f} MiB; weights {runs['load']['weight_bytes'] / MB:.0f} MiB")
    return 0 if result["ratio_lora_vs_load"] <= 1.1 else 1


if __name__ == "__main__":
    raise SystemExit(main())
