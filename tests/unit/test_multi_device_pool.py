"""The multi-device worker pool (Ray actors, gloo on the CPU): the same latent as one process,
CFG parallel, an interrupt that stops every rank, a killed worker that fails the run and is
replaced on the next. fp32 tiny DiT; max rel. error <= 1e-5 (heads split across processes sum
attention in another order)."""

from __future__ import annotations

import dataclasses
import os
import signal

import pytest
import ray  # a test tool (requirements/dev.txt); users install it for multi-device runs
import torch

from hunyuan.conditioning import RefinedConditioning, TextEmbeds
from hunyuan.dit import precompute_refined_text
from hunyuan.dit.checkpoint import load_dit
from hunyuan.dit.tiny import write_tiny
from hunyuan.offload import SwapSettings
from hunyuan.parallel.workers import (
    DiTSource,
    PoolSettings,
    SampleJob,
    WeightPatch,
    WorkerFailed,
    WorkerInterrupted,
    WorkerPool,
    apply_patches,
)
from hunyuan.sampling import flow_sigmas, seeded_noise
from hunyuan.sampling.pipeline import sample_video
from tests.checks import FP32_RTOL, rel_err

SHAPE = (1, 16, 3, 6, 10)  # 45 video tokens: padded for 2 ranks
STEPS = 4


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> DiTSource:
    path = write_tiny(tmp_path_factory.mktemp("models"))[0]
    return DiTSource(str(path), "float32", None, "sdpa")


def _job(source: DiTSource, steps: int) -> SampleJob:
    model = load_dit(source.path, dtype=torch.float32)
    g = torch.Generator().manual_seed(3)
    sigmas = flow_sigmas(steps, 7.0)
    texts = [TextEmbeds(torch.randn(1, n, model.config.text_states_dim, generator=g), torch.arange(n)[None] < valid,
                        torch.randn(1, model.config.text_states_dim_2, generator=g)) for n, valid in ((7, 5), (4, 4))]
    pos, neg = (precompute_refined_text(model.txt_in, t, sigmas, device="cpu", dtype=torch.float32) for t in texts)
    return SampleJob.of(RefinedConditioning(pos, neg), sigmas, seeded_noise(11, SHAPE), cfg=3.0)


@pytest.fixture(scope="module")
def job(source) -> SampleJob:
    return _job(source, STEPS)


def _one_process(source: DiTSource, job: SampleJob) -> torch.Tensor:
    model = load_dit(source.path, dtype=torch.float32)
    with torch.inference_mode():
        return sample_video(model, job.conditioning(), job.sigmas, job.noise, cfg=job.cfg,
                            embedded_guidance=job.embedded_guidance)


@pytest.fixture(scope="module")
def reference(source, job) -> torch.Tensor:
    return _one_process(source, job)


@pytest.fixture(scope="module", autouse=True)
def ray_session():
    yield
    ray.shutdown()


@pytest.mark.parametrize("cfg_parallel", [False, True])
def test_two_workers_equal_one_process(source, job, reference, cfg_parallel):
    pool = WorkerPool(PoolSettings(2, "cpu", cfg_parallel), heads=4)
    try:
        seen = []
        out = pool.run(source, job, progress=lambda done, total: seen.append((done, total)))
        assert rel_err(out, reference) <= FP32_RTOL
        assert seen and all(total == STEPS for _, total in seen)
    finally:
        pool.shutdown()


def test_block_swap_on_the_workers_streams_patched_blocks(source, job):
    """The Block Swap node's counts reach every worker: the swapped blocks are fetched for each
    forward, and a weight patch on a swapped block (applied in host memory before placement)
    is in the result, which equals one process with the same patch."""
    swapped = dataclasses.replace(source, swap=SwapSettings(double_blocks=1, single_blocks=1))
    patch = WeightPatch("double_blocks.0.img_mlp.fc1.weight", 1.0,
                        diff=0.05 * torch.randn(256, 64, generator=torch.Generator().manual_seed(1)))
    model = load_dit(source.path, dtype=torch.float32)
    apply_patches(model, [patch])
    with torch.inference_mode():
        reference = sample_video(model, job.conditioning(), job.sigmas, job.noise, cfg=job.cfg,
                                 embedded_guidance=job.embedded_guidance)
    pool = WorkerPool(PoolSettings(2, "cpu", False), heads=4)
    try:
        out = pool.run(swapped, job, patches=[patch], patches_id="diff")
        assert rel_err(out, reference) <= FP32_RTOL
        forwards = 2 * STEPS  # true CFG in two passes
        for stats in ray.get([a.swap_stats.remote() for a in pool.actors]):
            assert stats["fetches"] >= 2 * forwards, stats  # two swapped blocks, each fetched at least once a forward
    finally:
        pool.shutdown()


def test_interrupt_stops_every_rank_and_the_pool_runs_again(source, job, reference):
    pool = WorkerPool(PoolSettings(2, "cpu", False), heads=4)
    try:
        progress = []
        with pytest.raises(WorkerInterrupted):
            pool.run(source, job, interrupted=lambda: bool(progress) and progress[-1][0] >= 1,
                     progress=lambda done, total: progress.append((done, total)))
        pids = list(pool.pids)
        assert rel_err(pool.run(source, job), reference) <= FP32_RTOL
        assert pool.pids == pids, "an interrupt keeps the workers (and their loaded DiT)"

        class Stop(Exception):  # as ComfyUI's progress bar raises when the user interrupts
            pass

        def stop_at_first_step(done, total):
            if done >= 1:
                raise Stop

        with pytest.raises(Stop):
            pool.run(source, _job(source, 400), progress=stop_at_first_step)
        assert pool.pids == pids, "the caller's own exception stops the workers cleanly; they stay"
        assert rel_err(pool.run(source, job), reference) <= FP32_RTOL
    finally:
        pool.shutdown()


def test_a_killed_worker_fails_the_run_and_is_replaced(source, job, reference):
    pool = WorkerPool(PoolSettings(2, "cpu", False), heads=4)
    try:
        pool.start()
        victim, killed = pool.pids[1], []

        def kill_once(done, total):  # mid-run: a long schedule, so the run is still going
            if done >= 1 and not killed:
                killed.append(done)
                os.kill(victim, signal.SIGKILL)

        with pytest.raises(WorkerFailed, match="the workers are restarted on the next run"):
            pool.run(source, _job(source, 400), progress=kill_once)
        assert killed and killed[0] < 400
        assert pool.actors == []
        assert rel_err(pool.run(source, job), reference) <= FP32_RTOL
        assert victim not in pool.pids
    finally:
        pool.shutdown()


def test_weight_patches_follow_comfyui_order_offsets_and_kinds():
    """apply_patches: several patches on one weight, in order; a LoRA on rows of a fused weight
    (offset), a diff, strength_model; fp32 maths, then the weight's own dtype."""
    from hunyuan.parallel.workers import WeightPatch, apply_patches

    g = torch.Generator().manual_seed(0)
    up, down, diff = torch.randn(2, 2, generator=g), torch.randn(2, 4, generator=g), torch.randn(6, 4, generator=g)
    patches = [WeightPatch("weight", 0.8, offset=(0, 2, 2), up=up, down=down, scale=0.5),
               WeightPatch("weight", 0.3, strength_model=0.9, diff=diff)]
    for dtype in (torch.float32, torch.bfloat16):
        layer = torch.nn.Linear(4, 6).to(dtype)
        expected = layer.weight.detach().float().clone()
        expected[2:4] += 0.8 * (0.5 * (up @ down))
        expected = expected * 0.9 + 0.3 * diff
        apply_patches(layer, patches)
        assert layer.weight.dtype == dtype
        # fp32: summation order only; bf16: one rounding of the fp32 result (2^-8 relative)
        assert rel_err(layer.weight.float(), expected) <= (FP32_RTOL if dtype == torch.float32 else 2**-8)
    with pytest.raises(KeyError, match="'nope.weight', which the DiT does not have"):
        apply_patches(torch.nn.Linear(4, 6), [WeightPatch("nope.weight", 1.0, diff=diff)])
