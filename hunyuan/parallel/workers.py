"""Worker processes for one video on several devices: Ray actors, one per device, joined by
``torch.distributed`` (NCCL on GPUs, gloo on the CPU) and running :mod:`.sequence`'s parallel DiT.

Each worker loads the DiT itself from the same file (safetensors are memory-mapped) and keeps it
between runs; a run sends it the refined text, the schedule and the noise, and rank 0 returns the
latent. Ray is what starts, watches and (on another machine) places the workers; it is imported
only here, when a multi-device run is asked for (``pip install ray``).

Every rank checks a shared stop flag after each step (one all-reduce), so an interrupt stops all
ranks at the same step and none is left waiting in a collective. A worker that dies fails the run;
the pool then kills the others, and the next run starts fresh workers.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import socket
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, fields

import torch
import torch.distributed as dist

from ..conditioning import RefinedConditioning, RefinedText
from ..dit.attention import available_backends
from ..dit.checkpoint import load_dit, read_config
from ..dit.compile import CompileSettings, compiled_blocks, usable
from ..dit.step_cache import StepCacheRun, StepCacheSettings
from ..memory import (
    WORKER_RESERVE_BYTES,
    device_free_bytes,
    plan_swap,
    sampling_sizes,
    weight_bytes,
    worker_plan_bytes,
)
from ..offload import BlockSwapEngine, CopyTransport, SwapSettings, make_engine
from ..sampling.image import ImageInput
from ..sampling.pipeline import sample_video
from .sequence import ParallelDiT, any_rank, check_degrees, make_groups

log = logging.getLogger(__name__)
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=10)


@dataclass(frozen=True)
class DiTSource:
    """How the workers load the DiT: the file and the loader's choices (dtype names as in torch)."""

    path: str
    dtype: str
    weight_dtype: str | None
    attention: str
    swap: SwapSettings | None = None  # the Block Swap node's settings; "auto" is resolved by each worker


def check_host_memory(settings: PoolSettings, source: DiTSource, available: int | None = None) -> None:
    """Before local CPU workers start: each holds the whole DiT in system memory (as converted by
    its loader) plus a process reserve, so ``processes`` of them must fit in what the system has
    available (``available``, default :func:`hunyuan.memory.device_free_bytes`); otherwise a
    ValueError naming ``processes``, instead of the kernel killing processes (the server among
    them) part-way through loading. GPU workers and an existing cluster's are not checked here."""
    if settings.device != "cpu" or settings.address:
        return
    compute = getattr(torch, source.dtype)
    stored = getattr(torch, source.weight_dtype) if source.weight_dtype else compute
    per_worker = weight_bytes(read_config(source.path), stored, SwapSettings(), compute) + WORKER_RESERVE_BYTES
    available = device_free_bytes("cpu") if available is None else available
    if settings.processes * per_worker > available:
        raise ValueError(
            f"processes={settings.processes} CPU workers each hold the whole DiT: {per_worker / 2**30:.1f} GiB each "
            f"(weights + {WORKER_RESERVE_BYTES >> 20} MiB), {settings.processes * per_worker / 2**30:.1f} GiB in all, "
            f"but {available / 2**30:.1f} GiB of system memory is available; expected fewer processes or device 'cuda'")


@dataclass(frozen=True)
class PoolSettings:
    processes: int
    device: str  # "cpu" or "cuda"
    cfg_parallel: bool
    address: str | None = None  # an existing Ray cluster (the server owner's setting), or None: local
    # per rank, the most bytes block swap "auto" may plan with on that worker's device (None: what
    # the device has free less the reserve, hunyuan.memory.worker_plan_bytes), e.g. for a GPU
    # shared with other work
    memory_caps: tuple[int | None, ...] | None = None

    def __post_init__(self):
        if self.memory_caps is not None and len(self.memory_caps) != self.processes:
            raise ValueError(f"memory_caps has {len(self.memory_caps)} entries; expected one per process "
                             f"({self.processes})")

    @property
    def cfg_degree(self) -> int:
        return 2 if self.cfg_parallel else 1


@dataclass(frozen=True)
class SampleJob:
    """The arguments of :func:`~hunyuan.sampling.pipeline.sample_video` that travel to the workers.

    The refined texts, the image (an :class:`~hunyuan.sampling.image.ImageInput`), the step
    cache settings and the compile settings travel as plain dicts of their fields, so a job made
    by a caller that imported this package under another name still unpickles in the workers.
    """

    positive: dict
    negative: dict | None
    sigmas: torch.Tensor
    noise: torch.Tensor
    latent: torch.Tensor | None = None
    denoise: float = 1.0
    cfg: float = 1.0
    embedded_guidance: float | None = 6.0
    solver: str = "euler"
    image: dict | None = None
    step_cache: dict | None = None
    compile: dict | None = None  # CompileSettings: the DiT's blocks compiled on each worker

    @classmethod
    def of(cls, conditioning, sigmas, noise, *, image=None, step_cache=None, compile=None, **options) -> SampleJob:
        """From a RefinedConditioning, an ImageInput, StepCacheSettings and CompileSettings (of any
        import of this package) and sample_video's other options."""
        def plain(value):
            return None if value is None else {f.name: getattr(value, f.name) for f in fields(value)}

        return cls(plain(conditioning.positive), plain(conditioning.negative), sigmas, noise, **options,
                   image=plain(image), step_cache=plain(step_cache), compile=plain(compile))

    def conditioning(self) -> RefinedConditioning:
        negative = RefinedText(**self.negative) if self.negative is not None else None
        return RefinedConditioning(RefinedText(**self.positive), negative)

    def plan(self) -> dict:
        """This job's size as :func:`hunyuan.memory.estimate_sampling_memory` takes it."""
        return sampling_sizes(self.noise.shape, text_tokens=self.positive["tokens"].shape[2],
                              steps=len(self.sigmas) - 1, cfg=self.cfg != 1.0 and self.negative is not None)


@dataclass(frozen=True)
class WeightPatch:
    """One weight patch (e.g. a LoRA layer) in plain tensors, as ComfyUI's ModelPatcher applies it:
    ``W[offset] = W[offset] * strength_model + strength * delta`` in fp32, then cast back, where
    delta is ``scale * up @ down`` (a LoRA) or ``diff``."""

    key: str
    strength: float
    strength_model: float = 1.0
    offset: tuple[int, int, int] | None = None
    up: torch.Tensor | None = None
    down: torch.Tensor | None = None
    scale: float = 1.0
    diff: torch.Tensor | None = None


def apply_patches(model: torch.nn.Module, patches) -> None:
    """Add ``patches`` (in order, several per weight allowed) to ``model``'s weights."""
    weights = model.state_dict(keep_vars=True)
    by_key: dict[str, list[WeightPatch]] = {}
    for patch in patches:
        if patch.key not in weights:
            raise KeyError(f"weight patch for {patch.key!r}, which the DiT does not have")
        by_key.setdefault(patch.key, []).append(patch)
    for key, group in by_key.items():
        param = weights[key]
        work = param.detach().float().clone()
        for patch in group:
            target = work.narrow(*patch.offset) if patch.offset else work
            if patch.strength_model != 1.0:
                target *= patch.strength_model
            delta = (patch.diff.float() if patch.diff is not None
                     else patch.scale * (patch.up.float().flatten(1) @ patch.down.float().flatten(1)))
            target += patch.strength * delta.reshape(target.shape)
        param.data.copy_(work.to(param.dtype))


class WorkerInterrupted(RuntimeError):
    """Every rank stopped at the same step because an interrupt was asked for."""


class _CallerStopped(Exception):
    """The caller's interrupted/progress callback raised; the workers were stopped first."""

    def __init__(self, original: BaseException):
        super().__init__(str(original))
        self.original = original


class WorkerFailed(RuntimeError):
    """A worker died or raised; the pool has been shut down and restarts on the next run."""


def ray_put_once(value):
    """``value`` in Ray's object store, so that every worker reads the one copy."""
    import ray

    return ray.put(value)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


class DiTWorker:
    """One rank. Ray runs it as an actor with two threads, so ``interrupt`` and ``progress`` are
    answered while ``sample`` runs."""

    def __init__(self, rank: int, world: int, cfg_degree: int, device: str, memory_cap: int | None = None):
        self.rank, self.world, self.cfg_degree, self.memory_cap = rank, world, cfg_degree, memory_cap
        # an accelerator: the one Ray made visible to this process (index 0); "cpu": the CPU
        self.device = torch.device(device) if device == "cpu" else torch.device(device, 0)
        self.model = self.loaded = self.groups = self.engine = None
        self.patches, self.patches_for = (), None  # the weight patches last sent, and for which (source, id)
        # the last run's step cache decisions in plain values (cache_history); its tensors (residuals,
        # probes: on a GPU ~1.5 GB at 720p) go with the run
        self.decisions: dict[str, list[tuple]] | None = None
        self._stop = threading.Event()
        self._progress = (0, 0)

    def pid(self) -> int:
        return os.getpid()

    def rendezvous(self) -> tuple[str, int]:
        """(address, port) the other ranks reach this one at (asked of rank 0)."""
        import ray

        return ray.util.get_node_ip_address(), _free_port()

    def connect(self, host: str, port: int) -> None:
        backend = "nccl" if self.device.type == "cuda" else "gloo"
        dist.init_process_group(backend, init_method=f"tcp://{host}:{port}", rank=self.rank,
                                world_size=self.world, timeout=COLLECTIVE_TIMEOUT)

    def load(self, source: DiTSource, patches=(), patches_id: str | None = None, plan: dict | None = None):
        """The DiT from ``source`` with ``patches`` applied; reloaded when either changes, or when
        block swap "auto" needs other counts for this job (``plan``: :meth:`SampleJob.plan`).
        Returns what "auto" chose on this worker and why (a log line), or None."""
        if (source, patches_id) != self.patches_for:  # the pool sends patches only when these change
            self.patches, self.patches_for = patches, (source, patches_id)
        swap, why = self._swap_for(source, plan, patches_id)
        if (source, patches_id, swap) == self.loaded:
            return why
        self.model = self.engine = self.loaded = None
        fp8 = getattr(torch, source.weight_dtype) if source.weight_dtype else None
        swapping = swap is not None and swap.swaps_anything
        model = load_dit(source.path, device="cpu" if swapping else self.device, dtype=getattr(torch, source.dtype),
                         weight_dtype=fp8)
        model.detach_refiner()  # the refined text comes with each run; nothing keeps the refiner
        model.attention_backend = source.attention if source.attention in available_backends() else "auto"
        apply_patches(model, self.patches)  # in host memory, before the engine places anything: swapped blocks too
        if swapping:
            self.engine = self._engine(model, swap).place()
        if self.groups is None:  # collective: every rank loads the same DiT at the same time
            self.groups = make_groups(self.cfg_degree, model.config.num_heads)
        self.model, self.loaded = model.eval(), (source, patches_id, swap)
        return why

    def _swap_for(self, source: DiTSource, plan: dict | None,
                  patches_id: str | None = None) -> tuple[SwapSettings | None, str | None]:
        """The swap settings this worker loads with: the node's counts, or for "auto" the counts
        :func:`hunyuan.memory.plan_swap` picks for this job's per-rank size (1/P of the video
        tokens) in this worker's own free memory less a reserve
        (:func:`hunyuan.memory.worker_plan_bytes`), capped by ``memory_cap``. The counts of the
        DiT this worker holds (same file, settings and patches) are kept while they still fit, so
        a job of another size does not reload it from disk."""
        settings = source.swap
        if settings is None or settings.mode != "auto":
            return settings, None
        if plan is None:
            raise ValueError("block swap 'auto' needs the job's size to pick counts; none was given")
        config = self._config(source)
        free = worker_plan_bytes(self.device)  # less a reserve; this worker's own DiT counts as free
        if self.memory_cap is not None:
            free = min(free, self.memory_cap)
        dtype = getattr(torch, source.dtype)
        sizes = {**plan, "weight_dtype": getattr(torch, source.weight_dtype) if source.weight_dtype else dtype,
                 "compute_dtype": dtype, "sequence_parallel": self.world // self.cfg_degree}
        held = self.loaded[2] if self.loaded is not None and self.loaded[:2] == (source, patches_id) else None
        try:
            chosen, why = plan_swap(config, free, settings, held=held, **sizes)
        except ValueError as exc:
            raise ValueError(f"worker {self.rank} ({self.device}): {exc}") from None
        return chosen, f"worker {self.rank} ({self.device}): {why}"

    def _config(self, source: DiTSource):
        """The config of the DiT in ``source``: the loaded model's when it came from the same file
        (a Tencent ``.pt`` is otherwise opened again whole just for its shapes), else read from it."""
        if self.model is not None and self.loaded[0].path == source.path:
            return self.model.config
        return read_config(source.path)

    def _engine(self, model, settings: SwapSettings) -> BlockSwapEngine:
        """The Block Swap engine for this worker's device. CPU workers (the test configuration)
        get one that copies host to host, so CPU runs go through the same path as a GPU's."""
        if self.device.type == "cpu":
            return BlockSwapEngine(model, settings, self.device, transport=CopyTransport(self.device))
        return make_engine(model, settings, self.device)

    def swap_stats(self) -> dict | None:
        """The engine's counters (blocks fetched, loads that waited), or None without block swap."""
        return None if self.engine is None else dict(self.engine.stats)

    def sample(self, job: SampleJob) -> tuple[torch.Tensor, str | None] | None:
        """Rank 0: the latent and the step cache's summary (or None); other ranks: None."""
        self._stop.clear()
        self.decisions = None
        cache = (StepCacheRun(StepCacheSettings(**job.step_cache), agree=self._any_rank)
                 if job.step_cache is not None else None)
        self._progress = (0, len(job.sigmas) - 1)
        summary = None

        def after_step(info) -> None:
            self._progress = (info.index + 1, info.total)
            if self._any_rank(self._stop.is_set()):
                raise WorkerInterrupted(f"interrupted after step {info.index + 1} of {info.total}")

        try:
            with torch.inference_mode(), (self.engine.running() if self.engine else contextlib.nullcontext()), \
                    self._compiled(job.compile):
                out = sample_video(
                    ParallelDiT(self.model, self.groups), job.conditioning(), job.sigmas, job.noise,
                    latent=job.latent, denoise=job.denoise, cfg=job.cfg, embedded_guidance=job.embedded_guidance,
                    solver=job.solver, device=self.device, callback=after_step, batched_cfg=self.cfg_degree > 1,
                    step_cache=cache, image=ImageInput(**job.image) if job.image is not None else None,
                )
        except BaseException as exc:  # the frames the exception carries would keep the cache's tensors
            traceback.clear_frames(exc.__traceback__)
            raise
        finally:
            if cache is not None:
                self.decisions = {which: [(d.step, d.metric, d.accumulated, d.computed) for d in state.history]
                                  for which, state in cache.states.items()}
                summary, cache = cache.summary(), None
        if self.rank != 0:
            return None
        return out.cpu(), summary

    def _any_rank(self, flag: bool) -> bool:
        return any_rank(flag, self.device)

    def _compiled(self, settings: dict | None):
        """The Compile node's regional compile for this run (:mod:`hunyuan.dit.compile`); where this
        worker's device cannot compile, its ``eager_fallback`` decides (run eagerly, or fail)."""
        if settings is None or not usable(compile_settings := CompileSettings(**settings), self.device):
            return contextlib.nullcontext()
        return compiled_blocks(self.model, compile_settings)

    def compiled_graphs(self) -> int:
        """Graphs torch.compile has made in this worker so far (0: nothing compiled)."""
        return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])

    def cache_history(self) -> dict[str, list[tuple]] | None:
        """The last run's step cache decisions on this rank, per pass: (step, metric, accumulated,
        computed) each; None without a step cache."""
        return self.decisions

    def interrupt(self) -> None:
        self._stop.set()

    def progress(self) -> tuple[int, int]:
        return self._progress


class WorkerPool:
    """``settings.processes`` DiTWorker actors, started on first use and kept between runs."""

    def __init__(self, settings: PoolSettings, heads: int):
        check_degrees(settings.processes, settings.cfg_degree, heads)
        self.settings = settings
        self.actors: list = []
        self.pids: list[int] = []
        self._loaded = None  # (source, patches_id) the workers hold

    def start(self) -> None:
        import ray

        s = self.settings
        package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        actor_env = None
        if not ray.is_initialized():
            # the workers import this package as top-level ``hunyuan``, shipped to them by Ray (so
            # a worker on another machine needs no copy of the pack)
            local = {} if s.address else {"num_cpus": max(os.cpu_count() or 1, s.processes)}
            ray.init(address=s.address, include_dashboard=False, log_to_driver=False,
                     runtime_env={"py_modules": [package]}, **local)
        elif not any(package in str(m) for m in (ray.get_runtime_context().runtime_env or {}).get("py_modules", [])):
            actor_env = {"env_vars": {"PYTHONPATH": os.path.dirname(package)}}  # Ray started by someone else
        resources = {"num_gpus": 1, "num_cpus": 0} if s.device == "cuda" else {"num_cpus": 0}
        actor = ray.remote(DiTWorker).options(max_concurrency=2, runtime_env=actor_env, **resources)
        caps = s.memory_caps or (None,) * s.processes
        self.actors = [actor.remote(rank, s.processes, s.cfg_degree, s.device, caps[rank])
                       for rank in range(s.processes)]
        self.pids = ray.get([a.pid.remote() for a in self.actors])
        host, port = ray.get(self.actors[0].rendezvous.remote())
        ray.get([a.connect.remote(host, port) for a in self.actors])
        log.info("HunyuanVideo multi-device: %d %s workers (pids %s), CFG parallel %s, Ulysses degree %d",
                 s.processes, s.device, self.pids, s.cfg_parallel, s.processes // s.cfg_degree)

    def shutdown(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor)
        self.actors, self.pids, self._loaded = [], [], None

    def run(self, source: DiTSource, job: SampleJob, interrupted: Callable[[], bool] = lambda: False,
            progress: Callable[[int, int], None] = lambda done, total: None, patches=(),
            patches_id: str | None = None) -> torch.Tensor:
        """The sampled latent; WorkerInterrupted or WorkerFailed (with the pool shut down) otherwise.

        ``patches``: :class:`WeightPatch` list every worker adds to its DiT (e.g. LoRAs), sent and
        applied only when ``patches_id`` changes."""
        if not self.actors:
            check_host_memory(self.settings, source)
            self.start()
        try:
            wanted = (source, patches_id)
            payload = ray_put_once(patches if wanted != self._loaded else ())  # unchanged: the workers skip
            plan = job.plan()
            chosen = self._wait([a.load.remote(source, payload, patches_id, plan) for a in self.actors],
                                interrupted, None)
            self._loaded = wanted
            for line in filter(None, chosen):
                log.info("HunyuanVideo multi-device %s", line)
            latent, cache = self._wait([a.sample.remote(job) for a in self.actors], interrupted, progress)[0]
            if cache is not None:
                log.info("HunyuanVideo step cache (rank 0 of the workers) %s", cache)
            return latent
        except WorkerInterrupted:
            raise
        except _CallerStopped as stop:  # every worker stopped cleanly; the caller's own exception goes on
            raise stop.original from None
        except Exception as exc:
            self.shutdown()
            cause = getattr(exc, "cause", None)  # what a worker raised (Ray wraps it in a RayTaskError)
            shown = cause if isinstance(cause, Exception) else exc
            first = (str(shown).strip().splitlines() or [""])[0][:300]
            raise WorkerFailed(f"a multi-device worker failed ({type(shown).__name__}: {first}); "
                               "the workers are restarted on the next run") from None

    def _wait(self, refs: list, interrupted, progress) -> list:
        """Every ref's result. ``interrupted`` or ``progress`` raising (ComfyUI's progress bar raises
        on an interrupt) also stops every worker at the same step, then that exception goes on."""
        import ray

        results, pending, stopping, caller_error = {}, list(refs), False, None
        while pending:
            done, pending = ray.wait(pending, num_returns=1, timeout=0.25)
            for ref in done:
                try:
                    results[refs.index(ref)] = ray.get(ref)
                except ray.exceptions.RayTaskError as exc:
                    if isinstance(exc.cause, WorkerInterrupted):
                        stopping = True
                        continue
                    raise
            state = ray.get(self.actors[0].progress.remote()) if progress is not None and pending else None
            try:
                if not stopping and interrupted():
                    stopping = True
                elif state is not None and caller_error is None:
                    progress(*state)
            except Exception as exc:
                caller_error, stopping = exc, True
            if stopping:
                for actor in self.actors:
                    actor.interrupt.remote()
        if caller_error is not None:
            raise _CallerStopped(caller_error)
        if stopping:
            raise WorkerInterrupted("the run was interrupted; every worker stopped at the same step")
        return [results[i] for i in range(len(refs))]
