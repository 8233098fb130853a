"""The multi-device worker pool (Ray actors, gloo on the CPU): the same latent as one process,
CFG parallel, block swap (set counts, and "auto" per worker), image-to-video in each mode, step
caches, an interrupt that stops every rank, a killed worker that fails the run and is replaced on
the next. fp32 tiny DiTs; max rel. error <= 1e-5 (heads split across processes sum attention in
another order)."""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import os
import signal
import threading

import pytest
import ray  # a test tool (requirements/dev.txt); users install it for multi-device runs
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from hunyuan import memory
from hunyuan.conditioning import RefinedConditioning, TextEmbeds
from hunyuan.dit import precompute_refined_text
from hunyuan.dit.checkpoint import load_dit, read_config
from hunyuan.dit.compile import CompileSettings
from hunyuan.dit.step_cache import StepCacheRun, StepCacheSettings, StepCacheState
from hunyuan.dit.tiny import write_tiny
from hunyuan.memory import WORKER_RESERVE_BYTES, auto_swap, estimate_sampling_memory
from hunyuan.offload import SwapSettings
from hunyuan.parallel import workers
from hunyuan.parallel.workers import (
    DiTSource,
    DiTWorker,
    PoolSettings,
    SampleJob,
    WeightPatch,
    WorkerFailed,
    WorkerInterrupted,
    WorkerPool,
    _free_port,
    apply_patches,
    check_host_memory,
)
from hunyuan.sampling import flow_sigmas, seeded_noise
from hunyuan.sampling.image import ImageInput
from hunyuan.sampling.pipeline import MODEL_LATENT_SCALE, sample_video
from tests.checks import FP32_RTOL, rel_err

SHAPE = (1, 16, 3, 6, 10)  # 45 video tokens: padded for 2 ranks
STEPS = 4


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory) -> list:
    """The text-to-video DiT, the three image-to-video ones (token replace, concat_mask, concat), a LoRA."""
    return write_tiny(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def source(tiny_files) -> DiTSource:
    return DiTSource(str(tiny_files[0]), "float32", None, "sdpa")


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


def _one_process(source: DiTSource, job: SampleJob, step_cache: StepCacheRun | None = None) -> torch.Tensor:
    model = load_dit(source.path, dtype=torch.float32)
    image = ImageInput(**job.image) if job.image is not None else None
    with torch.inference_mode():
        return sample_video(model, job.conditioning(), job.sigmas, job.noise, cfg=job.cfg,
                            embedded_guidance=job.embedded_guidance, image=image, step_cache=step_cache)


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


def test_block_swap_auto_picks_counts_for_each_workers_memory(source, job, reference, caplog):
    """"auto" is resolved by each worker for its own free memory and its share of the video (1/P of
    the tokens): a worker told it has less memory swaps blocks, the other none, and the result is
    the single-process latent. The cap fits the per-rank size with 2 double + 1 single blocks
    swapped, where a one-process plan would need every block swapped."""
    config = read_config(source.path)
    sizes = {**job.plan(), "weight_dtype": torch.float32, "compute_dtype": torch.float32}
    cap = estimate_sampling_memory(config, swap=SwapSettings(2, 1), **sizes, sequence_parallel=2).peak_bytes
    auto = SwapSettings(mode="auto")
    chosen = auto_swap(config, cap, base=auto, **sizes, sequence_parallel=2)
    assert (chosen.double_blocks, chosen.single_blocks) == (2, 1)
    assert auto_swap(config, cap, base=auto, **sizes) != chosen, "the per-rank size is what makes it fit"
    pool = WorkerPool(PoolSettings(2, "cpu", False, memory_caps=(None, cap)), heads=4)
    try:
        with caplog.at_level(logging.INFO, logger="hunyuan.parallel.workers"):
            out = pool.run(dataclasses.replace(source, swap=auto), job)
        assert rel_err(out, reference) <= FP32_RTOL
        assert "worker 0 (cpu): block swap auto: 0 double + 0 single blocks" in caplog.text
        assert "worker 1 (cpu): block swap auto: 2 double + 1 single blocks" in caplog.text
        assert "over 2 sequence shards" in caplog.text
        stats = ray.get([a.swap_stats.remote() for a in pool.actors])
        assert stats[0] is None and stats[1]["fetches"] >= 3 * 2 * STEPS, stats  # 3 blocks, 2 passes a step
    finally:
        pool.shutdown()


def test_block_swap_auto_on_a_worker_keeps_the_reserve_back(source, job, monkeypatch):
    """A worker plans with its device's free memory less the reserve: free memory that would hold
    the job with nothing swapped, but not once the reserve is kept back, makes it swap blocks."""
    config = read_config(source.path)
    sizes = {**job.plan(), "weight_dtype": torch.float32, "compute_dtype": torch.float32, "sequence_parallel": 2}
    whole = estimate_sampling_memory(config, swap=SwapSettings(), **sizes).peak_bytes
    free = whole + WORKER_RESERVE_BYTES - 1
    monkeypatch.setattr(memory, "device_free_bytes", lambda device: free)
    auto = dataclasses.replace(source, swap=SwapSettings(mode="auto"))
    chosen, why = DiTWorker(1, 2, 1, "cpu")._swap_for(auto, job.plan())
    assert chosen == auto_swap(config, free - WORKER_RESERVE_BYTES, base=auto.swap, **sizes)
    assert chosen.swaps_anything and auto_swap(config, free, base=auto.swap, **sizes).swaps_anything is False
    assert f"{(free - WORKER_RESERVE_BYTES) / 2**30:.3f} GiB to plan with" in why


def test_block_swap_auto_keeps_the_loaded_counts_while_they_fit(source, job, monkeypatch):
    """A worker holding the DiT with counts that still fit this job keeps them (no reload from
    disk) though auto alone would pick others; counts that no longer fit, another file's or
    other patches' are not kept."""
    config = read_config(source.path)
    sizes = {**job.plan(), "weight_dtype": torch.float32, "compute_dtype": torch.float32, "sequence_parallel": 2}
    auto = dataclasses.replace(source, swap=SwapSettings(mode="auto"))
    held = auto.swap.with_counts(2, 1)
    held_peak = estimate_sampling_memory(config, swap=held, **sizes).peak_bytes
    worker = DiTWorker(1, 2, 1, "cpu")
    worker.loaded = (auto, "lora", held)
    monkeypatch.setattr(memory, "device_free_bytes", lambda device: 2**40)
    fresh, _ = worker._swap_for(auto, job.plan(), "other lora")
    assert not fresh.swaps_anything
    kept, why = worker._swap_for(auto, job.plan(), "lora")
    assert kept == held and "(the loaded counts, which still fit; 0 double + 0 single would need a reload)" in why
    monkeypatch.setattr(memory, "device_free_bytes", lambda device: held_peak - 1 + WORKER_RESERVE_BYTES)
    assert worker._swap_for(auto, job.plan(), "lora")[0] != held


def test_block_swap_auto_reads_the_config_only_for_a_file_not_loaded(source, tiny_files, job, monkeypatch):
    """A worker holding a DiT from the file plans with that model's config instead of opening the
    file again (a Tencent .pt would be loaded whole just for its shapes); without a model, or
    with one from another file, it reads the file's."""
    read = []
    monkeypatch.setattr(workers, "read_config", lambda path: read.append(path) or read_config(path))
    monkeypatch.setattr(memory, "device_free_bytes", lambda device: 2**40)
    auto = dataclasses.replace(source, swap=SwapSettings(mode="auto"))
    worker = DiTWorker(1, 2, 1, "cpu")
    first = worker._swap_for(auto, job.plan())
    assert read == [source.path]
    worker.model, worker.loaded = load_dit(source.path, dtype=torch.float32), (auto, None, first[0])
    assert worker._swap_for(auto, job.plan()) == first and worker._swap_for(auto, job.plan(), "lora") == first
    assert read == [source.path], "the loaded model's config, not the file's again"
    other = dataclasses.replace(auto, path=str(tiny_files[1]))
    worker._swap_for(other, job.plan())
    assert read == [source.path, other.path]


def test_block_swap_auto_that_cannot_fit_names_the_worker_and_the_memory(source, job, reference):
    """A worker whose memory holds the tiny DiT's job even with every block swapped fails the job
    with the planner's reason and that worker's name; the next run (other settings) is right."""
    pool = WorkerPool(PoolSettings(2, "cpu", False, memory_caps=(None, 2**20)), heads=4)
    try:
        auto = dataclasses.replace(source, swap=SwapSettings(mode="auto"))
        with pytest.raises(WorkerFailed, match=r"worker 1 \(cpu\): block swap auto: sampling needs about .* even "
                           r"with every block swapped, but only 0.0 GiB is free"):
            pool.run(auto, job)
        assert rel_err(pool.run(source, job), reference) <= FP32_RTOL
    finally:
        pool.shutdown()


def test_pool_settings_name_a_wrong_number_of_memory_caps():
    with pytest.raises(ValueError, match=r"memory_caps has 1 entries; expected one per process \(2\)"):
        PoolSettings(2, "cpu", False, memory_caps=(1,))


def test_image_to_video_on_four_workers_equals_one_process(tiny_files, job):
    """Each image-to-video mode on 4 workers (Ulysses degree 4: 45 video tokens in shards of 12,
    the last padded) equals one process. Token replace's first frame (15 tokens, modulated as at
    t=0) spans ranks 0 and 1 and is absent from 2 and 3."""
    raw = torch.randn(1, 16, 1, *job.noise.shape[-2:], generator=torch.Generator().manual_seed(5))
    modes = {"token_replace": tiny_files[1], "concat_mask": tiny_files[2], "concat": tiny_files[3]}
    pool = WorkerPool(PoolSettings(4, "cpu", False), heads=4)
    try:
        for how, path in modes.items():
            image = ImageInput(how, raw, stability=how == "concat", scale=MODEL_LATENT_SCALE)
            source = DiTSource(str(path), "float32", None, "sdpa")
            i2v = dataclasses.replace(job, image={f.name: getattr(image, f.name) for f in dataclasses.fields(image)})
            reference = _one_process(source, i2v)
            out = pool.run(source, i2v)
            assert out.shape == reference.shape, how
            assert rel_err(out, reference) <= FP32_RTOL, how
    finally:
        pool.shutdown()


# Each skips some steps, not all. With CFG parallel and a batch of 2, each CFG group runs one
# batch element, whose own metric differs from the whole batch's by ~1e-3: First Block Cache's
# 0.095 lies between them at step 6 (one process computes, one group alone would skip).
CACHES = {(False, 1): [("teacache", 0.15), ("first_block", 0.07), ("easycache", 0.025)],
          (True, 2): [("teacache", 0.15), ("first_block", 0.095), ("easycache", 0.025)]}


@pytest.mark.parametrize("cfg_parallel, batch", list(CACHES))
def test_step_caches_on_two_workers_decide_as_one_process(source, cfg_parallel, batch):
    """Every rank takes each step cache decision one process takes, from the same metric: TeaCache
    and First Block Cache sum theirs over every rank's tokens (and, when CFG parallel splits the
    batch, over both CFG groups' batch elements), EasyCache's is whole on every rank.
    Metrics within 1e-4 relative: each is a small difference of two fp32 means, so the 1e-6 the
    split attention moves the activations by is amplified by the ratio of the two."""
    job = _job(source, 8)
    job = dataclasses.replace(job, noise=seeded_noise(11, (batch, *SHAPE[1:])))
    pool = WorkerPool(PoolSettings(2, "cpu", cfg_parallel), heads=4)
    try:
        for kind, threshold in CACHES[cfg_parallel, batch]:
            settings = StepCacheSettings(kind, threshold)
            run = StepCacheRun(settings)
            reference = _one_process(source, job, step_cache=run)
            out = pool.run(source, dataclasses.replace(job, step_cache=dataclasses.asdict(settings)))
            assert rel_err(out, reference) <= FP32_RTOL, kind
            decisions = [d.computed for state in run.states.values() for d in state.history]
            assert not all(decisions), f"{kind} skipped no step at threshold {threshold}"
            for rank, history in enumerate(ray.get([a.cache_history.remote() for a in pool.actors])):
                assert set(history) == set(run.states), (kind, rank)
                for which, state in run.states.items():
                    assert [h[3] for h in history[which]] == [d.computed for d in state.history], (kind, rank)
                    for (_, metric, _, _), d in zip(history[which], state.history):
                        assert (metric is None) == (d.metric is None), (kind, rank)
                        if metric is not None:
                            assert abs(metric - d.metric) <= 1e-4 * abs(d.metric), (kind, rank, which, metric)
    finally:
        pool.shutdown()


class _StopAtOnce(threading.Event):
    """A stop flag that is always set: the run stops after its first step."""

    def is_set(self) -> bool:
        return True


def _cache_left_after_runs(rank: int, path: str, port: int, out: str) -> None:
    """A one-rank worker (gloo, in a child process) samples with a step cache, once to the end and
    once interrupted (the exception kept); after each, which step cache states are still alive."""
    worker = DiTWorker(0, 1, 1, "cpu")
    worker.connect("127.0.0.1", port)
    try:
        source = DiTSource(path, "float32", None, "sdpa")
        job = dataclasses.replace(_job(source, 8), step_cache=dataclasses.asdict(StepCacheSettings("first_block", 0.07)))
        worker.load(source)
        worker.sample(job)
        gc.collect()
        found = {"after a run": sum(issubclass(type(o), StepCacheState) for o in gc.get_objects()),
                 "history": worker.cache_history()}
        worker._stop = _StopAtOnce()
        try:
            worker.sample(job)
        except WorkerInterrupted as exc:
            kept = exc  # noqa: F841 (held, as Ray holds what a method raised while it reports it)
        gc.collect()
        found["after an interrupt"] = sum(issubclass(type(o), StepCacheState) for o in gc.get_objects())
        found["interrupted history"] = worker.cache_history()
        with open(out, "w") as f:
            json.dump(found, f)
    finally:
        dist.destroy_process_group()


def test_a_worker_keeps_the_step_cache_decisions_not_its_tensors(source, tmp_path):
    """Between runs a worker holds the last run's decisions (plain values, for cache_history) and
    none of the step cache's residuals and probes, also when the run was interrupted."""
    out = tmp_path / "found.json"
    mp.spawn(_cache_left_after_runs, args=(source.path, _free_port(), str(out)), nprocs=1)
    found = json.loads(out.read_text())
    assert found["after a run"] == 0 and found["after an interrupt"] == 0, found
    history = found["history"]["cond"]
    assert len(history) == 8 and not all(computed for *_, computed in history)
    assert [step for step, *_ in found["interrupted history"]["cond"]] == [0]  # stopped after the first


@pytest.mark.slow
def test_compile_on_two_workers_equals_one_eager_process(source, job, reference):
    """The Compile node's settings reach the workers: each compiles its blocks (inductor on the
    CPU, around the Ulysses all-to-alls) and the latent equals one eager process (fp32: inductor's
    fused kernels sum in another order, as in tests/unit/test_compile.py). A check that a second
    identical run makes no new graphs passed alone but failed in the full suite (a recompile on some
    worker, cause not found), so it is not asserted here."""
    pool = WorkerPool(PoolSettings(2, "cpu", False), heads=4)
    try:
        settings = dataclasses.asdict(CompileSettings(eager_fallback=False))
        out = pool.run(source, dataclasses.replace(job, compile=settings))
        assert rel_err(out, reference) <= FP32_RTOL
        graphs = ray.get([a.compiled_graphs.remote() for a in pool.actors])
        assert all(n > 0 for n in graphs)
        out = pool.run(source, dataclasses.replace(job, compile=settings))
        assert rel_err(out, reference) <= FP32_RTOL
        assert rel_err(pool.run(source, job), reference) <= FP32_RTOL, "and a run without Compile after it"
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


def test_cpu_workers_that_do_not_fit_system_memory_are_refused_before_starting(source, job, monkeypatch):
    """Each local CPU worker holds the whole DiT: 16 of a real one on a 24 GiB machine would have
    the kernel kill processes mid-load (the security review's finding); the pool says so first."""
    per_worker = memory.weight_bytes(read_config(source.path), torch.float32, SwapSettings(), torch.float32)
    per_worker += WORKER_RESERVE_BYTES
    check_host_memory(PoolSettings(4, "cpu", False), source, available=4 * per_worker)  # fits exactly
    with pytest.raises(ValueError, match=r"^processes=4 CPU workers each hold the whole DiT: .* expected fewer"):
        check_host_memory(PoolSettings(4, "cpu", False), source, available=4 * per_worker - 1)
    check_host_memory(PoolSettings(4, "cuda", False), source, available=0)  # GPU workers: their own plan
    check_host_memory(PoolSettings(4, "cpu", False, address="ray://elsewhere:10001"), source, available=0)

    monkeypatch.setattr(workers, "device_free_bytes", lambda device: per_worker)  # room for one worker
    pool = WorkerPool(PoolSettings(2, "cpu", False), heads=4)
    with pytest.raises(ValueError, match="processes=2 CPU workers"):
        pool.run(source, job)
    assert pool.actors == []  # nothing was started
