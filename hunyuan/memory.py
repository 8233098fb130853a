"""Memory planner: predict the peak device memory of sampling, and pick swap counts that fit.

The estimate has four parts (bytes):

* weights: every DiT weight that is resident (not swapped), plus the swapped blocks in flight
  (the one computing and ``prefetch`` ahead), plus a compute-dtype copy of the largest Linear
  weight when weights are stored narrower (fp8 upcasts one layer at a time);
* activations: the peak inside one forward. Read off the block code (``hunyuan/dit/blocks.py``):
  the single-stream block peaks at ``linear2``, holding the residual stream and the carried-over
  double-stream outputs (2), the fused ``linear1`` output (3D+M, GELU applied in place on its
  MLP part), q and k (2, rotated in place), the attention output (1), its concatenation with
  the MLP activation (D+M), the ``linear2`` output (1) and the attention kernel's head-major
  working copies (2): 12D + 2M. CPU peak-RSS measurements of the real code give 19-23 [N, D]
  tensors across widths, so the planner uses 13D + 2M (= 21 D for the released MLP ratio 4);
  tests/unit/test_memory_planner.py fails if the DiT code drifts more than 20% from it. Plus the
  fp32 RoPE tables, plus the attention matrix when the backend materialises it
  (``attention="math"``: scores and probabilities, heads x N x N);
* sampler state: the fp32 latent, noise, velocities, x0 predictions (a handful of latents);
* text: the refined tokens for every step (positive, and negative with true CFG).

It does not include the CUDA context (~0.3-0.5 GB outside PyTorch's allocator).
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass

import torch

from .dit.config import REAL, DiTConfig
from .dit.model import HunyuanVideoDiT
from .dtypes import FP8, PLAIN_DTYPES
from .offload.settings import SwapSettings
from .sampling.schedule import check_video_size, latent_shape, video_size

LATENT_COPIES = 8  # x, noise, velocity (x2 with CFG), x0, previous x0, Heun predictor, output
ATTENTION_MATRICES = 2  # scores and probabilities when attention is materialised
DTYPES = {**PLAIN_DTYPES, "fp8": FP8}
# Block swap "auto" plans with a device's free memory less a reserve for what it does not count.
# In ComfyUI's process the sampler subtracts ComfyUI's own reserve (mm.extra_reserved_memory():
# 400 MiB on Linux, more on Windows, or its --reserve-vram); a multi-device worker does not import
# ComfyUI and keeps back ComfyUI's Linux default, plus on CUDA an allowance (assumed, not measured)
# for what NCCL's communicators (one per process group, made at their first collective) and
# cuBLAS's workspaces take outside PyTorch's allocator.
WORKER_RESERVE_BYTES = 400 * 2**20
CUDA_COLLECTIVE_BYTES = 512 * 2**20
ATTENTION_KINDS = ("flash", "math")


@dataclass(frozen=True)
class MemoryEstimate:
    weights_bytes: int
    activation_bytes: int
    attention_bytes: int
    state_bytes: int
    text_bytes: int
    video_tokens: int
    text_tokens: int

    @property
    def peak_bytes(self) -> int:
        return self.weights_bytes + self.activation_bytes + self.state_bytes + self.text_bytes

    def as_dict(self) -> dict:
        return {**asdict(self), "peak_bytes": self.peak_bytes}


@dataclass(frozen=True)
class _Sizes:
    """Parameter counts of the DiT's parts (from a meta-device model: exact, no memory)."""

    total: int
    double: int
    single: int
    txt_in: int
    img_in: int
    largest_linear: int


@functools.lru_cache(maxsize=8)
def _sizes(config: DiTConfig) -> _Sizes:
    with torch.device("meta"):
        model = HunyuanVideoDiT(config)

    def count(m):
        return sum(p.numel() for p in m.parameters())

    linears = [m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear)]
    return _Sizes(
        total=count(model),
        double=count(model.double_blocks[0]) if config.depth_double else 0,
        single=count(model.single_blocks[0]) if config.depth_single else 0,
        txt_in=count(model.txt_in),
        img_in=count(model.img_in),
        largest_linear=max(linears),
    )


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def weight_bytes(config: DiTConfig, weight_dtype: torch.dtype, swap: SwapSettings, compute_dtype: torch.dtype) -> int:
    """Resident weight bytes during sampling (refined text given, so txt_in never runs)."""
    s, w = _sizes(config), _itemsize(weight_dtype)
    swap = swap.clamp(config.depth_double, config.depth_single)
    blocks = [s.double] * swap.double_blocks + [s.single] * swap.single_blocks
    on_demand = [size for size, wanted in ((s.txt_in, swap.offload_txt_in), (s.img_in, swap.offload_img_in)) if wanted]
    upcast = s.largest_linear * _itemsize(compute_dtype) if weight_dtype != compute_dtype else 0
    return swap.resident(s.total, blocks, on_demand) * w + upcast


def estimate_sampling_memory(
    config: DiTConfig = REAL,
    *,
    width: int,
    height: int,
    frames: int,
    text_tokens: int = 256,
    batch: int = 1,
    steps: int = 50,
    cfg: bool = False,
    weight_dtype: torch.dtype = torch.bfloat16,
    compute_dtype: torch.dtype | None = None,
    swap: SwapSettings | None = None,
    attention: str = "flash",
    batched_cfg: bool = False,
    sequence_parallel: int = 1,
) -> MemoryEstimate:
    """Peak device bytes for sampling one video (see the module docstring for the model).

    ``batched_cfg``: true CFG's two passes run as one forward of twice the batch, so the
    activations double (off: they run one after the other and reuse the same memory).
    ``sequence_parallel``: the bytes of one of that many Ulysses ranks (:mod:`hunyuan.parallel`),
    which holds the whole DiT and 1/P of the video tokens (rounded up; the text whole), plus the
    attention inputs and output of the whole sequence for its 1/P of the heads and the
    all-to-all send and receive buffers."""
    check_video_size(width, height, frames)
    if attention not in ATTENTION_KINDS:
        raise ValueError(f"attention={attention!r} is not one of {ATTENTION_KINDS}")
    compute_dtype = compute_dtype or (weight_dtype if weight_dtype.itemsize >= 2 else torch.bfloat16)
    swap = swap or SwapSettings()
    e = _itemsize(compute_dtype)
    shape = latent_shape(batch, width, height, frames, config.in_channels)
    pt, ph, pw = config.patch_size
    n_img = (shape[2] // pt) * (shape[3] // ph) * (shape[4] // pw)
    if sequence_parallel < 1 or config.num_heads % sequence_parallel:
        raise ValueError(f"sequence_parallel={sequence_parallel} must divide the DiT's {config.num_heads} heads")
    local = -(-n_img // sequence_parallel)  # this rank's video tokens
    n = local + text_tokens
    d, m = config.hidden_size, config.mlp_hidden
    per_token = (13 * d + 2 * m) * e  # = 21 [N, D] tensors at mlp ratio 4 (module docstring)
    forward_batch = batch * (2 if cfg and batched_cfg else 1)
    activations = forward_batch * n * per_token + local * config.head_dim * 4 * 2
    if sequence_parallel > 1:  # q, k, v, out over the whole sequence for 1/P of the heads; send + receive
        whole = local * sequence_parallel + text_tokens
        activations += forward_batch * (4 * whole * d // sequence_parallel + 2 * local * d) * e
    attention_bytes = 0
    if attention == "math":
        attention_bytes = ATTENTION_MATRICES * forward_batch * config.num_heads * n * n * e
    state = LATENT_COPIES * math.prod(shape) * 4
    text = (2 if cfg else 1) * steps * batch * text_tokens * d * e
    return MemoryEstimate(
        weights_bytes=weight_bytes(config, weight_dtype, swap, compute_dtype),
        activation_bytes=activations + attention_bytes,
        attention_bytes=attention_bytes,
        state_bytes=state,
        text_bytes=text,
        video_tokens=n_img,
        text_tokens=text_tokens,
    )


def _fits(config: DiTConfig, free_bytes: int, swap: SwapSettings, kwargs: dict) -> tuple[bool, int]:
    peak = estimate_sampling_memory(config, swap=swap, **kwargs).peak_bytes
    return peak <= free_bytes, peak


def auto_swap(config: DiTConfig, free_bytes: int, base: SwapSettings | None = None, **kwargs) -> SwapSettings:
    """The swap counts with the least swapped weight (least copying per step) whose predicted
    peak fits in ``free_bytes``; ties go to fewer blocks. ``kwargs`` as for
    :func:`estimate_sampling_memory`. Raises ValueError when even swapping everything does not fit.
    """
    base = base or SwapSettings()
    s = _sizes(config)
    best = None
    for nd in range(config.depth_double + 1):
        for ns in range(config.depth_single + 1):
            cost = (nd * s.double + ns * s.single, nd + ns)
            if best is not None and cost >= best[0]:
                continue
            if _fits(config, free_bytes, base.with_counts(nd, ns), kwargs)[0]:
                best = (cost, nd, ns)
    if best is None:
        _, peak = _fits(config, free_bytes, base.with_counts(config.depth_double, config.depth_single), kwargs)
        raise ValueError(
            f"sampling needs about {peak / 2**30:.1f} GiB even with every block swapped, but only "
            f"{free_bytes / 2**30:.1f} GiB is free; lower width/height/frames or free memory"
        )
    return base.with_counts(best[1], best[2])


def sampling_sizes(shape: tuple[int, ...], *, text_tokens: int, steps: int, cfg: bool,
                   batched_cfg: bool = False) -> dict:
    """A run's size as :func:`estimate_sampling_memory` takes it, from the latent ``shape``
    [B, C, T, H, W], the refined text's token count, the steps the schedule has and whether true
    CFG (and batched CFG) runs: the one way the sampler and the multi-device workers describe a run."""
    return {**video_size(shape), "batch": shape[0], "text_tokens": text_tokens, "steps": steps, "cfg": cfg,
            "batched_cfg": batched_cfg}


def plan_swap(config: DiTConfig, free_bytes: int, base: SwapSettings, *, held: SwapSettings | None = None,
              **sizes) -> tuple[SwapSettings, str]:
    """Block swap "auto" for one run: the counts :func:`auto_swap` picks in ``free_bytes``, and a
    log line saying why (the counts, the predicted peak, the video size, the bytes planned with).

    ``held``: the counts of the DiT loaded now (same file and patches), kept when they still fit,
    so that a run of another size does not reload it. ``sizes`` as for
    :func:`estimate_sampling_memory` (:func:`sampling_sizes` plus the dtypes). Raises ValueError
    ("block swap auto: ...") when even swapping every block does not fit."""
    try:
        chosen = auto_swap(config, free_bytes, base=base, **sizes)
    except ValueError as exc:
        raise ValueError(f"block swap auto: {exc}") from None
    peak = estimate_sampling_memory(config, swap=chosen, **sizes).peak_bytes
    how = ""
    if held is not None and held != chosen:
        held_peak = estimate_sampling_memory(config, swap=held, **sizes).peak_bytes
        if held_peak <= free_bytes:
            how = (f" (the loaded counts, which still fit; {chosen.double_blocks} double + "
                   f"{chosen.single_blocks} single would need a reload)")
            chosen, peak = held, held_peak
    shards = sizes.get("sequence_parallel", 1)
    over = f" over {shards} sequence shards" if shards > 1 else ""
    batch = f" x{sizes['batch']}" if sizes.get("batch", 1) > 1 else ""
    return chosen, (f"block swap auto: {chosen.double_blocks} double + {chosen.single_blocks} single blocks{how}; "
                    f"predicted peak {peak / 2**30:.3f} GiB for {sizes['width']}x{sizes['height']}x{sizes['frames']}"
                    f"{batch}{over}, {free_bytes / 2**30:.3f} GiB to plan with")


def device_free_bytes(device: torch.device | str) -> int:
    """Bytes this process could use on ``device`` if it let go of its own tensors: on a GPU the
    driver's free memory plus all that this process's caching allocator holds (tensors in use
    included: a multi-device worker's DiT is freed before it reloads with other counts; ComfyUI's
    own figure counts only the allocator's unused blocks), on the CPU the system's available
    memory. No reserve is taken off: see :func:`worker_plan_bytes`."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device))
    if device.type == "cpu":
        import psutil  # ComfyUI's own dependency, so present wherever the pack runs

        return int(psutil.virtual_memory().available)
    raise ValueError(f"device {device} has no free-memory query here; expected cuda or cpu")


def worker_plan_bytes(device: torch.device | str) -> int:
    """What block swap "auto" on a multi-device worker plans with on ``device``:
    :func:`device_free_bytes` less ``WORKER_RESERVE_BYTES`` and, on CUDA, ``CUDA_COLLECTIVE_BYTES``
    (0 when that leaves nothing)."""
    device = torch.device(device)
    reserve = WORKER_RESERVE_BYTES + (CUDA_COLLECTIVE_BYTES if device.type == "cuda" else 0)
    return max(0, device_free_bytes(device) - reserve)


_REQUEST_INTS = {
    "width": 1280, "height": 720, "frames": 129, "double_blocks": 0, "single_blocks": 0,
    "prefetch": 1, "text_tokens": 256, "batch": 1, "steps": 50,
}
_REQUEST_FLAGS = {"cfg": False, "offload_txt_in": False, "offload_img_in": False}
_REQUEST_CHOICES = {"weight_dtype": ("bf16", tuple(DTYPES)), "attention": ("flash", ATTENTION_KINDS)}


def _parse_int(name: str, value) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={value!r} is not a number") from None
    if not number.is_integer() or number < 0:
        raise ValueError(f"{name}={value!r} must be a whole number >= 0")
    return int(number)


def _parse_flag(name: str, value) -> bool:
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"{name}={value!r} is not a boolean (true/false)")


def estimate_for_request(params: dict) -> dict:
    """The planner for the web UI: string or number parameters in, a JSON-able dict out.

    Known keys (all optional): width, height, frames, double_blocks, single_blocks, prefetch,
    text_tokens, batch, steps, cfg, offload_txt_in, offload_img_in, weight_dtype
    (fp32/bf16/fp16/fp8), attention (flash/math). Always the released 13B model. Bad values
    raise ValueError naming the parameter.
    """
    unknown = sorted(set(params) - set(_REQUEST_INTS) - set(_REQUEST_FLAGS) - set(_REQUEST_CHOICES))
    if unknown:
        known = sorted([*_REQUEST_INTS, *_REQUEST_FLAGS, *_REQUEST_CHOICES])
        raise ValueError(f"unknown parameter(s) {', '.join(unknown)}; expected some of {', '.join(known)}")
    ints = {k: _parse_int(k, params.get(k, d)) for k, d in _REQUEST_INTS.items()}
    flags = {k: _parse_flag(k, params.get(k, d)) for k, d in _REQUEST_FLAGS.items()}
    choices = {}
    for key, (default, allowed) in _REQUEST_CHOICES.items():
        choices[key] = str(params.get(key, default))
        if choices[key] not in allowed:
            raise ValueError(f"{key}={choices[key]!r} is not one of {', '.join(allowed)}")
    for key in ("batch", "steps", "text_tokens"):
        if ints[key] < 1:
            raise ValueError(f"{key}={ints[key]} must be >= 1")
    swap = SwapSettings(
        double_blocks=min(ints["double_blocks"], REAL.depth_double),
        single_blocks=min(ints["single_blocks"], REAL.depth_single),
        prefetch=ints["prefetch"],
        offload_txt_in=flags["offload_txt_in"],
        offload_img_in=flags["offload_img_in"],
    )
    estimate = estimate_sampling_memory(
        REAL, width=ints["width"], height=ints["height"], frames=ints["frames"], text_tokens=ints["text_tokens"],
        batch=ints["batch"], steps=ints["steps"], cfg=flags["cfg"], weight_dtype=DTYPES[choices["weight_dtype"]],
        swap=swap, attention=choices["attention"],
    )
    return {**estimate.as_dict(), "model": "HunyuanVideo 13B", "inputs": {**ints, **flags, **choices}}
