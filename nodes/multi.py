"""Multi-device sampling: a node that marks a DiT to be sampled by worker processes, and the
sampler's path that runs the job on them (hunyuan/parallel/workers.py).

The workers are Ray actors that import the library as top-level ``hunyuan`` (Ray ships the
package to them). ComfyUI imports this pack under its folder name, so the worker classes are
imported once more under the top-level name here, and only plain tensors and those classes
travel to the workers. Where the Ray cluster is (another machine) is the server owner's setting,
``HYVID_RAY_ADDRESS`` in the server's environment: a workflow cannot name a host.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import logging
import os
import sys
from pathlib import Path

import comfy.model_management as mm
import torch
from comfy.weight_adapter.lora import LoRAAdapter
from comfy_api.latest import io

from ..hunyuan.parallel.sequence import check_degrees
from .blockswap import SWAP_KEY
from .common import progress_bar
from .types import CATEGORY, CheckedNode, DiT, option, with_option

log = logging.getLogger(__name__)
MULTI_KEY = "hyvid_multi_device"  # a with_option() key: PoolSettings
SOURCE_KEY = "hyvid_dit_source"  # set by the DiT loader: DiTSource
ADDRESS_ENV = "HYVID_RAY_ADDRESS"
ROOT = Path(__file__).resolve().parents[1]

_pool = None  # the one worker pool of this server, kept between runs


@functools.cache
def workers_module():
    """hunyuan.parallel.workers imported under the top-level name the workers use."""
    existing = sys.modules.get("hunyuan")
    if existing is not None and Path(existing.__file__).resolve().parent != ROOT / "hunyuan":
        raise RuntimeError(f"another package named 'hunyuan' is imported ({existing.__file__}); "
                           "multi-device sampling needs that name for this pack's library")
    try:
        import ray  # noqa: F401
    except ImportError:
        raise RuntimeError("multi-device sampling needs Ray: pip install ray (in ComfyUI's Python)") from None
    sys.path.insert(0, str(ROOT))
    try:
        return importlib.import_module("hunyuan.parallel.workers")
    finally:
        sys.path.remove(str(ROOT))


def record_source(patcher, path: str, dtype: torch.dtype, weight_dtype: torch.dtype | None, attention: str) -> None:
    """The DiT loader notes where its weights came from, so workers can load the same."""
    source = (path, str(dtype).removeprefix("torch."), str(weight_dtype).removeprefix("torch.") if weight_dtype
              else None, attention)
    patcher.model_options.setdefault("transformer_options", {})[SOURCE_KEY] = source


class HunyuanVideoMultiDevice(CheckedNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HunyuanVideoMultiDevice",
            display_name="HunyuanVideo Multi-Device",
            category=CATEGORY,
            description="Samples one video on several devices: worker processes (Ray), each holding the whole DiT, "
            "split the video tokens between them (Ulysses sequence parallel) and, with true CFG, the two passes. "
            "LoRAs, Block Swap (auto: each worker for its own device), Step Cache, Compile and image-to-video run "
            "on the workers.",
            inputs=[
                DiT.Input("dit", tooltip="The DiT from HunyuanVideo DiT Loader (each worker loads the same file)."),
                io.Int.Input("processes", default=2, min=2, max=16,
                             tooltip="Worker processes, one per device. With cfg_parallel off it must divide the "
                             "24 attention heads (2, 3, 4, 6, 8); with it on, half of it must."),
                io.Combo.Input("device", options=["cuda", "cpu"], default="cuda",
                               tooltip="cuda: one GPU per worker (NCCL). cpu: CPU processes (gloo), for tests; each holds "
                               "the whole DiT in system memory, and a count that does not fit is refused."),
                io.Boolean.Input("cfg_parallel", default=False,
                                 tooltip="With true CFG (cfg > 1): the prompt and the negative prompt run on different "
                                 "halves of the workers. Without true CFG, or with a Step Cache (which runs the "
                                 "two passes one after the other), each half repeats the other's work."),
            ],
            outputs=[DiT.Output(display_name="dit", tooltip="The DiT, marked to be sampled by the workers.")],
        )

    @classmethod
    def execute(cls, dit, processes, device, cfg_parallel) -> io.NodeOutput:
        check_degrees(processes, 2 if cfg_parallel else 1, dit.model.config.num_heads)
        if option(dit, SOURCE_KEY) is None:
            raise ValueError("dit did not come from HunyuanVideo DiT Loader, so the workers cannot load it; "
                             "connect the loader (or nodes that pass its DiT on)")
        if device == "cuda" and not os.environ.get(ADDRESS_ENV) and torch.cuda.device_count() < processes:
            raise ValueError(f"processes={processes} with device 'cuda' needs {processes} GPUs; this machine has "
                             f"{torch.cuda.device_count()}")
        return io.NodeOutput(with_option(dit, MULTI_KEY, (processes, device, cfg_parallel)))


def plain_patches(dit, patch_class) -> list:
    """The DiT's weight patches (LoRA Loader nodes) as plain tensors the workers can apply: a LoRA
    layer's up, down and alpha/rank, or a diff. Other kinds (LoHa, LoKr, ...) are refused by name."""
    out = []
    for key, entries in dit.patches.items():
        for strength, value, strength_model, offset, function in entries:
            common = {"key": key, "strength": float(strength), "strength_model": float(strength_model),
                      "offset": tuple(offset) if offset is not None else None}
            if function is None and isinstance(value, LoRAAdapter) and all(v is None for v in value.weights[3:]):
                up, down, alpha = value.weights[:3]
                scale = float(alpha) / down.shape[0] if alpha is not None else 1.0
                out.append(patch_class(**common, up=up, down=down, scale=scale))
            elif function is None and isinstance(value, tuple) and len(value) in (1, 2):
                diff = value[0] if len(value) == 1 else (value[1][0] if value[0] == "diff" else None)
                if diff is None:
                    raise ValueError(f"dit carries a {value[0]!r} patch on {key}, which the multi-device workers "
                                     "cannot apply yet; remove it or the Multi-Device node")
                out.append(patch_class(**common, diff=diff))
            else:
                raise ValueError(f"dit carries a {type(value).__name__} patch on {key} (e.g. LoHa, LoKr or DoRA), "
                                 "which the multi-device workers cannot apply yet; remove it or the Multi-Device node")
    return out


def worker_swap(dit, settings_class):
    """The Block Swap node's settings as the workers' own class (they import the library under
    its top-level name), or None. Each worker resolves "auto" itself, for its own device's free
    memory and its share of the video tokens."""
    settings = option(dit, SWAP_KEY)
    if settings is None or not settings.swaps_anything and settings.mode == "manual":
        return None
    return settings_class(**dataclasses.asdict(settings))


def _pool_for(dit, settings):
    global _pool
    if _pool is not None and _pool.settings == settings:
        return _pool
    if _pool is not None:
        _pool.shutdown()
    _pool = workers_module().WorkerPool(settings, heads=dit.model.config.num_heads)
    return _pool


def sample_on_workers(dit, conditioning, sigmas, noise, **options) -> torch.Tensor:
    """The sampler's run on the worker pool: the latent [B,16,T,H,W] float32 (raw VAE space).
    ``options``: sample_video's, with ``step_cache`` a StepCacheRun (its settings travel; each
    worker keeps its own states) and ``image`` an ImageInput."""
    from .dit import COMPILE_KEY  # (nodes/dit.py imports this module)

    cache = options.pop("step_cache", None)
    options["step_cache"] = cache.settings if cache is not None else None
    options["compile"] = option(dit, COMPILE_KEY)
    if options.get("image") is not None:  # travels like the noise: from host memory
        options["image"] = dataclasses.replace(options["image"], raw=options["image"].raw.cpu())
    workers = workers_module()
    processes, device, cfg_parallel = option(dit, MULTI_KEY)
    pool = _pool_for(dit, workers.PoolSettings(processes, device, cfg_parallel, os.environ.get(ADDRESS_ENV)))
    source = workers.DiTSource(*option(dit, SOURCE_KEY), swap=worker_swap(dit, workers.SwapSettings))
    patches = plain_patches(dit, workers.WeightPatch)
    if patches and source.weight_dtype:
        raise ValueError("a LoRA on an fp8 DiT does not run on multi-device workers yet; load the DiT in bf16")
    job = workers.SampleJob.of(conditioning, sigmas.cpu(), noise.cpu(), **options)
    try:
        return pool.run(source, job, interrupted=mm.processing_interrupted, patches=patches,
                        patches_id=str(dit.patches_uuid) if patches else None, progress=progress_bar(len(sigmas) - 1))
    except workers.WorkerInterrupted:
        mm.throw_exception_if_processing_interrupted()
        raise


NODES = [HunyuanVideoMultiDevice]
