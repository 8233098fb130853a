"""What the GPU check's stages share: the run context, errors, DiT inputs, timing and comparisons.

See scripts/gpu_check.py for the stages and README "GPU check" for how it is run.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from hunyuan.sampling import latent_shape

GIB = 2**30


class CheckFailed(AssertionError):
    """A real failure: the property a stage checks does not hold on this device."""


class Skipped(Exception):
    """The stage cannot run here (a package, a device or the time budget is missing); the message says which."""


@dataclass
class Ctx:
    device: torch.device
    dry_run: bool
    work: Path
    deadline: float
    findings: list[str] = field(default_factory=list)
    kept: dict = field(default_factory=dict)  # what a later stage reuses (weights, outputs)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def need(self, seconds: float, what: str) -> None:
        if self.left() < seconds:
            raise Skipped(f"{what}: needs about {seconds:.0f} s, {max(self.left(), 0):.0f} s of the budget left")

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def reset_peak(self) -> None:
        if self.cuda:
            self.sync()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)

    def peaks(self) -> tuple[float | None, float | None]:
        """(max_memory_allocated, max_memory_reserved) in GiB since reset_peak; the second is what the
        caching allocator held, its reserve included. (None, None) on the CPU: no device allocator."""
        if not self.cuda:
            return None, None
        return (torch.cuda.max_memory_allocated(self.device) / GIB, torch.cuda.max_memory_reserved(self.device) / GIB)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| over the whole tensor, in fp32 on the CPU."""
    a, b = a.detach().float().cpu(), b.detach().float().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def expect(ok: bool, message: str) -> None:
    if not ok:
        raise CheckFailed(message)


def within(name: str, err: float, tol: float) -> dict:
    expect(err <= tol and err == err, f"{name}: relative error {err:.2e} exceeds the tolerance {tol:.0e}")
    return {"rel_err": err, "tolerance": tol}


def finite(name: str, t: torch.Tensor) -> None:
    expect(bool(torch.isfinite(t).all()), f"{name}: output has NaN/inf")


def timed(ctx: Ctx, fn, repeats: int = 1) -> tuple[float, object]:
    """Median seconds of ``repeats`` calls after one warm-up call, and the warm-up's output."""
    out = fn()
    ctx.sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        ctx.sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


@dataclass(frozen=True)
class DiTInputs:
    """One DiT call's inputs (refined text given, so txt_in never runs), on the CPU in fp32."""

    x: torch.Tensor
    refined: torch.Tensor
    mask: torch.Tensor
    pooled: torch.Tensor

    @classmethod
    def make(cls, config, width: int, height: int, frames: int, text_tokens: int, seed: int = 0) -> DiTInputs:
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(latent_shape(1, width, height, frames, config.in_channels), generator=g)
        refined = torch.randn(1, text_tokens, config.hidden_size, generator=g)
        mask = torch.ones(1, text_tokens, dtype=torch.bool)
        return cls(x, refined, mask, torch.randn(1, config.text_states_dim_2, generator=g))

    def run(self, model, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        with torch.no_grad():
            return model(self.x.to(device), torch.tensor([900.0], device=device), self.mask.to(device),
                         self.pooled.to(device), torch.tensor([6.0], device=device),
                         refined_text=self.refined.to(device, dtype))


def planner_gib(config, inputs_size: dict, swap, weight_dtype=torch.bfloat16, compute_dtype=torch.bfloat16) -> float:
    """The planner's prediction for one DiT forward (weights + activations, no sampler state)."""
    from hunyuan.memory import estimate_sampling_memory

    e = estimate_sampling_memory(config, steps=1, swap=swap, weight_dtype=weight_dtype, compute_dtype=compute_dtype,
                                 **inputs_size)
    return (e.weights_bytes + e.activation_bytes + e.text_bytes) / GIB


def memory_row(ctx: Ctx, peaks: tuple[float | None, float | None], predicted: float) -> dict:
    """Measured peak (ctx.peaks()) next to the planner; a ratio outside 0.8-1.2 is a finding (not a failure)."""
    measured, reserved = peaks
    row = {"peak_gib": measured, "reserved_peak_gib": reserved, "planner_gib": predicted}
    if measured is not None:
        row["measured_over_planner"] = measured / predicted
        if not 0.8 <= measured / predicted <= 1.2:
            ctx.findings.append(f"planner off: measured {measured:.2f} GiB vs predicted {predicted:.2f} GiB")
    return row
