"""Training-free step caches: skip most of the DiT on steps where its output barely changes.

Three published rules, each as its authors define it for HunyuanVideo:

* **TeaCache** (Liu et al. 2024, TeaCache4HunyuanVideo): the relative L1 change of the first
  double block's modulated video input, ``mean|m_t - m_prev| / mean|m_prev|``, is mapped through
  the fitted HunyuanVideo polynomial and accumulated; while the sum stays below the threshold
  the whole block stack is replaced by the video-token residual it added on the last computed
  step. The first and last steps are always computed; computing resets the sum.
* **First Block Cache** (ParaAttention): run the first double block; if its video-token
  residual differs from the one of the last computed step by less than the threshold
  (``mean|r - r_prev| / mean|r_prev|``, not accumulated), add the cached residual of the
  remaining blocks instead of running them.
* **EasyCache** (Zhou et al. 2025, EasyCache4HunyuanVideo): at the model's input and output.
  On a computed step ``k = mean|v_t - v_last| / mean|x_t - x_last|`` (``_last``: the last
  computed step); on the others ``k * mean|x_t - x_prev| / mean|v_last|`` (``x_prev``: the
  previous step's input, computed or not) is accumulated and, while below the threshold, the
  output is ``x_t + (v_last - x_last)``. Warm-up steps (before ``start``) and the last step are
  always computed; computing resets the sum.

Every rule has its own state for each pass (conditional / unconditional) and for each run:
the sampler makes fresh states (:meth:`StepCacheSettings.new_state`) per run, so nothing
survives an interrupt. ``start``/``end`` are fractions of the schedule: outside them every step
is computed. A state records each decision (``history``) so tests can check the rule.

With sequence parallelism (:mod:`hunyuan.parallel`) each process holds a share of the video
tokens: TeaCache's and First Block Cache's metric is then summed over every process's share
(:func:`rel_l1`; when CFG parallel splits the batch between two groups of processes, over both
groups' batch elements), and EasyCache's inputs and outputs are whole on every process, so every
process takes each decision as one process would. Those sums can still round differently on
different devices, so a distributed run also gives its :class:`StepCacheRun` an ``agree``
callable (:func:`hunyuan.parallel.sequence.any_rank`): each decision is then "compute" on every
process when it is on any, and no process is left waiting in a collective the others skipped.
One process passes none and pays nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .layers import layer_norm, modulate

# TeaCache's fitted polynomial for HunyuanVideo, highest power first.
TEACACHE_COEFFICIENTS = (7.33226126e2, -4.01131952e2, 6.75869174e1, -3.14987800, 9.61237896e-2)
KINDS = ("teacache", "first_block", "easycache")
# The published settings: TeaCache 0.15 (2.1x; 0.1 gives 1.6x), First Block Cache 0.06 (1.62x),
# EasyCache 0.025 with 5 of 50 warm-up steps (2.2x).
DEFAULTS = {"teacache": (0.15, 0.0), "first_block": (0.06, 0.0), "easycache": (0.025, 0.1)}


def rel_l1(now: torch.Tensor, before: torch.Tensor, shard=None) -> float:
    """``mean|now - before| / mean|before|`` in fp32. ``shard``: a
    :class:`~hunyuan.parallel.sequence.SequenceShard` when the tensors [B, N, ...] hold one rank's
    share of the video tokens; the means are then over every rank's tokens (summed across the
    ranks), so every rank takes the decision one process would."""
    now, before = now.float(), before.float()
    if shard is None:
        return float((now - before).abs().mean() / before.abs().mean())
    change, size = shard.sums((now - before).abs(), before.abs())  # equal counts: a ratio of sums
    return float(change / size)


def teacache_rescale(x: float) -> float:
    result = 0.0
    for c in TEACACHE_COEFFICIENTS:
        result = result * x + c
    return result


@dataclass(frozen=True)
class StepCacheSettings:
    """Which rule, its threshold, and the part of the schedule (fractions of the steps) it acts in."""

    kind: str
    threshold: float
    start: float = 0.0
    end: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"step cache kind={self.kind!r} is unknown; expected one of {', '.join(KINDS)}")
        if not (self.threshold >= 0 and self.threshold < float("inf")):
            raise ValueError(f"threshold={self.threshold} must be a finite number >= 0")
        if not 0.0 <= self.start <= self.end <= 1.0:
            raise ValueError(f"start={self.start}, end={self.end}: expected 0 <= start <= end <= 1")

    def new_state(self) -> StepCacheState:
        return {"teacache": TeaCache, "first_block": FirstBlockCache, "easycache": EasyCache}[self.kind](self)


class StepCacheRun:
    """The states of one sampling run, one per pass ("cond", "uncond"), made on first use.

    ``agree``: with several processes, takes this process's decision (True: compute) and returns
    the one every process takes; None for one process."""

    def __init__(self, settings: StepCacheSettings, agree: Callable[[bool], bool] | None = None):
        self.settings, self.agree = settings, agree
        self.states: dict[str, StepCacheState] = {}

    def state(self, which: str) -> StepCacheState:
        if which not in self.states:
            self.states[which] = self.settings.new_state()
            self.states[which].agree = self.agree
        return self.states[which]

    def summary(self) -> str:
        parts = [f"{which}: {s.computed} computed, {s.skipped} skipped" for which, s in self.states.items()]
        return f"{self.settings.kind} (threshold {self.settings.threshold:g}): " + "; ".join(parts)


@dataclass
class Decision:
    step: int
    metric: float | None  # what the rule compared (None: no comparison was possible or needed)
    accumulated: float | None
    computed: bool


@dataclass
class StepCacheState:
    settings: StepCacheSettings
    step: int = 0
    total: int = 1
    history: list[Decision] = field(default_factory=list)
    agree: Callable[[bool], bool] | None = None  # StepCacheRun's: every process's one decision

    def begin(self, step: int, total: int) -> None:
        self.step, self.total = step, total

    def in_window(self) -> bool:
        """Inside start..end and not the first or last step (those are always computed)."""
        if self.step == 0 or self.step >= self.total - 1:
            return False
        return self.settings.start * self.total <= self.step < self.settings.end * self.total

    @property
    def computed(self) -> int:
        return sum(d.computed for d in self.history)

    @property
    def skipped(self) -> int:
        return sum(not d.computed for d in self.history)

    def _note(self, metric, accumulated, computed: bool) -> bool:
        if self.agree is not None:  # every call of every process comes here once: the collectives match
            computed = self.agree(computed)
        self.history.append(Decision(self.step, metric, accumulated, computed))
        return computed

    # Hooks the DiT calls; a rule overrides the one it acts in.
    def blocks(self, model, img, txt, vec, run) -> torch.Tensor:
        """Video tokens after the block stack (``run``: the model's BlockRunner for this forward)."""
        return run.rest(0, img, txt)

    def model_call(self, x: torch.Tensor, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        return compute()


class TeaCache(StepCacheState):
    def __init__(self, settings: StepCacheSettings):
        super().__init__(settings)
        self.accumulated = 0.0
        self.previous_probe: torch.Tensor | None = None
        self.residual: torch.Tensor | None = None

    def blocks(self, model, img, txt, vec, run):
        first = model.double_blocks[0]
        attn_mod = first.img_mod(vec)[0]
        probe = modulate(layer_norm(img), attn_mod.shift, attn_mod.scale)
        metric = None if self.previous_probe is None else rel_l1(probe, self.previous_probe, run.shard)
        self.previous_probe = probe
        compute = True
        if self.in_window() and metric is not None and self.residual is not None:
            self.accumulated += teacache_rescale(metric)
            compute = self.accumulated >= self.settings.threshold
        if not self._note(metric, self.accumulated, compute):
            return img + self.residual
        self.accumulated = 0.0
        before = img.clone()
        out = run.rest(0, img, txt)
        self.residual = out - before
        return out


class FirstBlockCache(StepCacheState):
    def __init__(self, settings: StepCacheSettings):
        super().__init__(settings)
        self.first_residual: torch.Tensor | None = None
        self.rest_residual: torch.Tensor | None = None

    def blocks(self, model, img, txt, vec, run):
        before = img.clone()
        img, txt = run.double(0, img, txt)
        residual = img - before
        metric = None if self.first_residual is None else rel_l1(residual, self.first_residual, run.shard)
        compute = not (self.in_window() and metric is not None and self.rest_residual is not None
                       and metric < self.settings.threshold)
        if not self._note(metric, None, compute):
            return img + self.rest_residual
        self.first_residual = residual
        after_first = img.clone()
        out = run.rest(1, img, txt)
        self.rest_residual = out - after_first
        return out


class EasyCache(StepCacheState):
    def __init__(self, settings: StepCacheSettings):
        super().__init__(settings)
        self.accumulated = 0.0
        self.k: float | None = None
        self.previous_input: torch.Tensor | None = None  # the previous call's
        self.last_input: torch.Tensor | None = None  # the last computed call's
        self.last_output: torch.Tensor | None = None
        self.cached_change: torch.Tensor | None = None

    def in_window(self) -> bool:
        # Before ``start`` is EasyCache's warm-up; the first step is inside it whenever start > 0.
        if self.step >= self.total - 1:
            return False
        return self.settings.start * self.total <= self.step < self.settings.end * self.total

    def model_call(self, x, compute):
        compute_now, metric = True, None
        if self.in_window() and self.previous_input is not None and self.k is not None:
            input_change = float((x.float() - self.previous_input.float()).abs().mean())
            metric = self.k * input_change / float(self.last_output.float().abs().mean())
            self.accumulated += metric
            compute_now = self.accumulated >= self.settings.threshold
        self.previous_input = x
        if not self._note(metric, self.accumulated, compute_now):
            return x + self.cached_change
        self.accumulated = 0.0
        out = compute()
        if self.last_output is not None:
            input_change = float((x.float() - self.last_input.float()).abs().mean())
            if input_change > 0:
                self.k = float((out.float() - self.last_output.float()).abs().mean()) / input_change
        self.cached_change = out - x
        self.last_input, self.last_output = x, out
        return out
