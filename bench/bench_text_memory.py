"""Peak RAM of text-encoder loading and of the LLaVA split tool, each in a FRESH subprocess.

    python bench/bench_text_memory.py [--workdir DIR (default: a fresh temporary folder)] [--keep] [--out FILE]

1. load: a synthetic Llama (~300 MB fp16, 2 safetensors shards) loaded with ``hunyuan.text.load_llm``
   (dtype auto: zero-copy), then every weight is read once so its pages are really resident.
   Peers in the same run: the same load converting fp16 -> bf16, and transformers'
   ``LlamaModel.from_pretrained``. Target: ours <= 1.1x the weight bytes.
2. split: a synthetic full LLaVA (>= 1 GB in 4 shards, vision tower in its own shard) through
   ``python -m hunyuan.tools.split_llava``. Target: <= 1.2x the largest shard.

Peak = VmHWM (reset right after imports) minus the RSS right after imports (so the interpreter, torch and
transformers are not counted). Writes bench/results/text_memory.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.common import reset_peak, rss_now, rss_peak  # noqa: E402

MB = 2**20
LOAD_SHAPE = dict(vocab=32000, hidden=1024, intermediate=4096, layers=8, heads=8, kv_heads=2)
LLAVA_SHAPE = dict(vocab=32000, hidden=2048, intermediate=5632, layers=8, heads=16, kv_heads=4)


class Sampler(threading.Thread):
    """Second witness of the peak: VmRSS polled every 2 ms."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak, self.stop = 0, threading.Event()

    def run(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, rss_now())
            time.sleep(0.002)


# --- synthetic checkpoints -------------------------------------------------------------------

def llama_tensors(shape: dict, prefix: str, seed: int) -> dict:
    import torch

    gen = torch.Generator().manual_seed(seed)
    h, i, hd = shape["hidden"], shape["intermediate"], shape["hidden"] // shape["heads"]
    kv = shape["kv_heads"] * hd

    def rnd(*size):
        return (0.02 * torch.randn(*size, generator=gen)).half()

    out = {f"{prefix}embed_tokens.weight": rnd(shape["vocab"], h), f"{prefix}norm.weight": torch.ones(h).half()}
    for n in range(shape["layers"]):
        p = f"{prefix}layers.{n}."
        out.update({p + "self_attn.q_proj.weight": rnd(h, h), p + "self_attn.k_proj.weight": rnd(kv, h),
                    p + "self_attn.v_proj.weight": rnd(kv, h), p + "self_attn.o_proj.weight": rnd(h, h),
                    p + "mlp.gate_proj.weight": rnd(i, h), p + "mlp.up_proj.weight": rnd(i, h),
                    p + "mlp.down_proj.weight": rnd(h, i), p + "input_layernorm.weight": torch.ones(h).half(),
                    p + "post_attention_layernorm.weight": torch.ones(h).half()})
    return out


def write_sharded(folder: Path, tensors: dict, n_shards: int, config: dict, groups: list[list[str]] | None = None):
    from hunyuan.tools.split_llava import write_safetensors

    folder.mkdir(parents=True, exist_ok=True)
    keys = list(tensors)
    if groups is None:
        per = -(-len(keys) // n_shards)
        groups = [keys[k:k + per] for k in range(0, len(keys), per)]
    weight_map = {}
    for n, group in enumerate(groups):
        name = f"model-{n + 1:05d}-of-{len(groups):05d}.safetensors"
        write_safetensors(folder / name, {k: tensors[k] for k in group}, {"format": "pt"})
        weight_map.update(dict.fromkeys(group, name))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps(config))
    tok = ROOT / ".comfyui" / "ComfyUI" / "comfy" / "text_encoders" / "llama_tokenizer"
    for file in tok.iterdir():
        shutil.copyfile(file, folder / file.name)


def llama_config(shape: dict) -> dict:
    return dict(model_type="llama", architectures=["LlamaForCausalLM"], vocab_size=shape["vocab"],
                hidden_size=shape["hidden"], intermediate_size=shape["intermediate"],
                num_hidden_layers=shape["layers"], num_attention_heads=shape["heads"],
                num_key_value_heads=shape["kv_heads"], rms_norm_eps=1e-5, rope_theta=500000.0,
                max_position_embeddings=2048, torch_dtype="float16", pad_token_id=0)


def make_llama(folder: Path) -> None:
    write_sharded(folder, llama_tensors(LOAD_SHAPE, "model.", 0), 2, llama_config(LOAD_SHAPE))


def make_llava(folder: Path) -> None:
    import torch

    lm = llama_tensors(LLAVA_SHAPE, "language_model.model.", 1)
    lm["language_model.lm_head.weight"] = lm["language_model.model.embed_tokens.weight"].clone()
    gen = torch.Generator().manual_seed(2)
    vision = {f"vision_tower.vision_model.encoder.layers.{n}.mlp.fc{j}.weight":
              (0.02 * torch.randn(4096, 1024, generator=gen)).half() for n in range(12) for j in (1, 2)}
    vision["multi_modal_projector.linear_1.weight"] = torch.zeros(2048, 1024).half()
    keys = list(lm)
    third = -(-len(keys) // 3)
    groups = [keys[k:k + third] for k in range(0, len(keys), third)] + [list(vision)]
    config = {"model_type": "llava", "text_config": llama_config(LLAVA_SHAPE), "vision_config": {}}
    write_sharded(folder, {**lm, **vision}, 4, config, groups)


# --- children (run in fresh interpreters) ----------------------------------------------------

def child(mode: str, src: str, dst: str) -> dict:
    import torch  # noqa: F401 - counted in the baseline
    from transformers import LlamaModel

    from hunyuan.text import load_llm, parse_dtype
    from hunyuan.tools.split_llava import split_llava

    base = rss_now()
    reset_peak()
    sampler = Sampler()
    sampler.start()
    start = time.perf_counter()
    if mode == "split":
        split_llava(src, dst)
        lazy = rss_now() - base
    else:
        if mode == "hf_from_pretrained":
            model = LlamaModel.from_pretrained(src, torch_dtype=torch.float16)
        else:
            model = load_llm(src, parse_dtype("auto" if mode == "ours_auto" else "bf16"))
        lazy = rss_now() - base
        with torch.no_grad():
            for param in model.parameters():  # read every 4 KiB page once, without big temporaries
                param.detach().reshape(-1)[::1024].float().sum()
    seconds = time.perf_counter() - start
    sampler.stop.set()
    sampler.join()
    return {"seconds": seconds, "rss_after_call": lazy, "peak": max(rss_peak(), sampler.peak) - base}


def run_child(mode: str, src: Path, dst: Path | None = None) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", mode, str(src), str(dst or "")]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    if proc.returncode:
        raise RuntimeError(f"{mode} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def shard_bytes(folder: Path, lm_only: bool = False) -> list[int]:
    return [p.stat().st_size for p in sorted(folder.glob("*.safetensors"))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, help="where to write the synthetic checkpoints (emptied first)")
    parser.add_argument("--keep", action="store_true", help="keep the synthetic checkpoints")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "text_memory.json")
    parser.add_argument("--child", nargs=3, metavar=("MODE", "SRC", "DST"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return 0
    work = args.workdir or Path(tempfile.mkdtemp(prefix="hyvid_text_bench_"))  # two runs never share it
    shutil.rmtree(work, ignore_errors=True)
    llama, llava, split_out = work / "llama", work / "llava", work / "llava_split"
    make_llama(llama)
    make_llava(llava)
    weights = sum(shard_bytes(llama))
    rows = []
    for mode in ("ours_auto", "ours_bf16_convert", "hf_from_pretrained"):
        r = run_child(mode, llama)
        rows.append({"case": f"load {mode}", "reference_bytes": weights, **r, "ratio": r["peak"] / weights})
    largest = max(shard_bytes(llava))
    r = run_child("split", llava, split_out)
    rows.append({"case": "split_llava", "reference_bytes": largest, **r, "ratio": r["peak"] / largest})
    result = {
        "machine": platform.platform(), "python": sys.version.split()[0],
        "llama_weight_bytes": weights, "llava_total_bytes": sum(shard_bytes(llava)), "llava_largest_shard": largest,
        "targets": {"load ours_auto": 1.1, "split_llava": 1.2}, "rows": rows,
    }
    out = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"LLM weights {weights / MB:.0f} MB; LLaVA {result['llava_total_bytes'] / MB:.0f} MB, "
          f"largest shard {largest / MB:.0f} MB")
    print(f"{'case':28} {'reference MB':>12} {'peak MB':>9} {'ratio':>6} {'target':>6} {'seconds':>8}")
    for row in rows:
        target = result["targets"].get(row["case"], "")
        print(f"{row['case']:28} {row['reference_bytes'] / MB:12.0f} {row['peak'] / MB:9.0f} "
              f"{row['ratio']:6.2f} {target!s:>6} {row['seconds']:8.1f}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
