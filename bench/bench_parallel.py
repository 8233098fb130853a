"""Sequence parallelism: what the workers send each other, and where the time goes on this CPU.

    .venv/bin/python bench/bench_parallel.py [--blocks 1,1] [--repeats 3] [--out bench/results/parallel.json]

1. **Communication per step at 1280 x 720 x 129** (33 x 90 x 160 latent = 118,800 video tokens,
   256 text tokens, bf16, 20 double + 40 single blocks, one pass) for 2, 4 and 8 Ulysses ranks:
   the real ``UlyssesAttention`` / ``SequenceShard`` code runs on the meta device with the
   collectives replaced by recorders, so the bytes are what the implementation sends, call by
   call, not a formula. "sent" counts what leaves one rank ((P-1)/P of each all-to-all buffer,
   everything but its own part of an all-gather).
2. **Measured time split at 2 ranks** (gloo, two processes on this CPU): the DiT at real width
   with ``--blocks`` double + single blocks, bf16, 320 x 192 x 5 frames (480 video tokens) and 128
   text tokens; one forward per rank timed in total and inside the collectives, next to the same
   forward in one process.
3. **A model of the GPU speed-up**, stated as a model: per-step compute divided by the ranks plus
   the measured bytes over an assumed link bandwidth, next to xDiT's published times for Tencent's
   reference (1,904 s on one H100 at 720p x 129 frames, 50 steps; 925 / 514 / 338 s on 2 / 4 / 8).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_dit_step import make_config, weights  # noqa: E402
from bench.common import RESULTS, write_json  # noqa: E402
from hunyuan.dit.checkpoint import load_dit  # noqa: E402
from hunyuan.dit.config import REAL  # noqa: E402
from hunyuan.parallel import sequence  # noqa: E402
from hunyuan.sampling.schedule import latent_shape  # noqa: E402

XDIT_SECONDS = {1: 1904, 2: 925, 4: 514, 8: 338}  # Tencent's README, xDiT Ulysses, H100, 720p x 129, 50 steps
LINK_GBPS = 300.0  # assumed all-to-all bandwidth per GPU (NVLink class), GB/s: a model input, not measured


class Recorder:
    """Stands in for the collectives: returns correctly shaped meta tensors and counts bytes."""

    def __init__(self, ranks: int):
        self.ranks, self.calls = ranks, []

    def all_to_all(self, send: torch.Tensor, group) -> torch.Tensor:
        size = send.numel() * send.element_size()
        self.calls.append(("all_to_all", size, size * (self.ranks - 1) // self.ranks))
        return torch.empty_like(send)

    def all_gather(self, parts: list, tensor: torch.Tensor, group=None) -> None:
        size = tensor.numel() * tensor.element_size()
        self.calls.append(("all_gather", size * self.ranks, size * (self.ranks - 1)))


def communication(ranks: int, width: int = 1280, height: int = 720, frames: int = 129, text: int = 256) -> dict:
    """Bytes the real sharding and attention code sends for one DiT forward (one pass)."""
    config = REAL
    _, _, t, h, w = latent_shape(1, width, height, frames)
    n_video = t * (h // 2) * (w // 2)
    heads, head_dim = config.num_heads, config.hidden_size // config.num_heads
    groups = sequence.ParallelGroups(1, ranks, 0, 0, None, None)
    recorder = Recorder(ranks)
    saved = sequence._all_to_all, sequence.dist.all_gather
    sequence._all_to_all, sequence.dist.all_gather = recorder.all_to_all, recorder.all_gather
    try:
        n_local = -(-n_video // ranks)  # SequenceShard.split pads to a multiple of the ranks
        attention = sequence.UlyssesAttention(
            lambda q, k, v, key_mask: torch.empty(q.shape[0], q.shape[2], q.shape[1] * q.shape[3], device="meta",
                                                  dtype=q.dtype), groups, n_local)
        qkv = torch.empty(1, heads, n_local + text, head_dim, device="meta", dtype=torch.bfloat16)
        attention(qkv, qkv, qkv, None)  # one block's attention
        per_attention = list(recorder.calls)
        recorder.calls.clear()
        shard = sequence.SequenceShard(groups)
        shard.n_video = n_video
        out_channels = config.out_channels * config.patch_volume
        shard.join(torch.empty(1, n_local, out_channels, device="meta", dtype=torch.bfloat16))
        join = list(recorder.calls)
    finally:
        sequence._all_to_all, sequence.dist.all_gather = saved
    blocks = config.depth_double + config.depth_single
    sent = blocks * sum(c[2] for c in per_attention) + sum(c[2] for c in join)
    return {"ranks": ranks, "video_tokens": n_video, "padded_to": n_local * ranks, "text_tokens": text,
            "per_attention_calls": [{"op": op, "buffer_bytes": b, "sent_bytes": s} for op, b, s in per_attention],
            "all_to_all_buffer_bytes": per_attention[0][1], "attentions_per_forward": blocks,
            "sent_bytes_per_forward": sent}


def _timed_worker(rank: int, world: int, rendezvous: str, blocks: str, repeats: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    try:
        double, single = (int(v) for v in blocks.split(","))
        config = make_config(double, single)
        model = load_dit(weights(config, torch.bfloat16), dtype=torch.bfloat16)
        model.detach_refiner()
        spent = [0.0]
        a2a, gather = sequence._all_to_all, sequence.dist.all_gather

        def timed(fn):
            def run(*args, **kwargs):
                start = time.perf_counter()
                try:
                    return fn(*args, **kwargs)
                finally:
                    spent[0] += time.perf_counter() - start
            return run

        sequence._all_to_all, sequence.dist.all_gather = timed(a2a), timed(gather)
        parallel = sequence.ParallelDiT(model, sequence.make_groups(1, config.num_heads))
        g = torch.Generator().manual_seed(0)
        x = torch.randn(1, 16, 2, 24, 40, generator=g)
        text = torch.randn(1, 128, config.hidden_size, generator=g).to(torch.bfloat16)
        args = (x, torch.tensor([500.0]), torch.ones(1, 128, dtype=torch.bool), torch.randn(1, 768, generator=g),
                torch.tensor([6.0]))
        totals, comms = [], []
        with torch.inference_mode():
            for _ in range(repeats + 1):  # the first is a warm-up
                spent[0] = 0.0
                dist.barrier()
                start = time.perf_counter()
                parallel(*args, refined_text=text)
                totals.append(time.perf_counter() - start)
                comms.append(spent[0])
            single_times = []
            if rank == 0:
                for _ in range(repeats):
                    start = time.perf_counter()
                    model(*args, refined_text=text)
                    single_times.append(time.perf_counter() - start)
        if rank == 0:
            Path(out).write_text(json.dumps({"total": totals[1:], "comm": comms[1:], "one_process": single_times}))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def measured_split(blocks: str, repeats: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "times.json")
        mp.spawn(_timed_worker, args=(2, os.path.join(tmp, "rdv"), blocks, repeats, out), nprocs=2)
        times = json.loads(Path(out).read_text())
    median = lambda v: sorted(v)[len(v) // 2]  # noqa: E731
    total, comm, one = median(times["total"]), median(times["comm"]), median(times["one_process"])
    return {"blocks": blocks, "ranks": 2, "threads_per_rank": 1, "video_tokens": 480, "text_tokens": 128,
            "forward_s": total, "collectives_s": comm, "compute_s": total - comm,
            "communication_share": comm / total, "one_process_one_thread_s": one, "speedup": one / total}


def gpu_model(comm: list[dict]) -> list[dict]:
    step = XDIT_SECONDS[1] / 50.0
    rows = []
    for c in comm:
        n = c["ranks"]
        link = c["sent_bytes_per_forward"] / (LINK_GBPS * 1e9)
        predicted = step / n + link
        rows.append({"ranks": n, "step_s_model": predicted, "speedup_model": step / predicted,
                     "speedup_xdit_published": XDIT_SECONDS[1] / XDIT_SECONDS[n], "link_s_per_step": link})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--blocks", default="1,1")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS / "parallel.json")
    args = parser.parse_args(argv)
    comm = [communication(n) for n in (2, 4, 8)]
    for c in comm:
        print(f"{c['ranks']} ranks: {c['video_tokens']} video tokens padded to {c['padded_to']}; all-to-all buffer "
              f"{c['all_to_all_buffer_bytes'] / 2**20:.1f} MiB; sent per forward {c['sent_bytes_per_forward'] / 2**30:.2f} GiB")
    split = measured_split(args.blocks, args.repeats)
    print(f"2 ranks on this CPU ({args.blocks} blocks): forward {split['forward_s']:.3f} s, collectives "
          f"{split['collectives_s']:.3f} s ({100 * split['communication_share']:.0f} %), one process "
          f"{split['one_process_one_thread_s']:.3f} s -> {split['speedup']:.2f}x")
    model = gpu_model(comm)
    for row in model:
        print(f"GPU model, {row['ranks']} ranks: {row['speedup_model']:.2f}x (xDiT published "
              f"{row['speedup_xdit_published']:.2f}x); link time {row['link_s_per_step']:.2f} s/step at {LINK_GBPS:.0f} GB/s")
    write_json(args.out, {"communication": comm, "cpu_split": split, "gpu_model": model,
                          "assumed_link_gbps": LINK_GBPS, "xdit_published_s": XDIT_SECONDS})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
