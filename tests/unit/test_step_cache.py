"""Step caches (hunyuan/dit/step_cache.py): exact where they must be, and each rule's decisions
equal an independent implementation written here from the published definitions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hunyuan.conditioning import RefinedConditioning, TextEmbeds
from hunyuan.dit import TINY, precompute_refined_text
from hunyuan.dit.checkpoint import load_dit
from hunyuan.dit.step_cache import KINDS, StepCacheRun, StepCacheSettings
from hunyuan.dit.tiny import random_state_dict
from hunyuan.sampling import flow_sigmas, seeded_noise
from hunyuan.sampling.pipeline import sample_video
from tests.checks import FP32_RTOL, rel_err

STEPS = 12
TEACACHE_POLY = [7.33226126e2, -4.01131952e2, 6.75869174e1, -3.14987800, 9.61237896e-2]


@pytest.fixture(scope="module")
def model():
    return load_dit(random_state_dict(TINY, seed=3), dtype=torch.float32)


@pytest.fixture(scope="module")
def conditioning(model):
    g = torch.Generator().manual_seed(1)
    states = torch.randn(1, 7, TINY.text_states_dim, generator=g)
    mask = torch.tensor([[True] * 5 + [False] * 2])
    pooled = torch.randn(1, TINY.text_states_dim_2, generator=g)
    sigmas = flow_sigmas(STEPS, 7.0, 1.0)

    def refine(text):
        return precompute_refined_text(model.txt_in, text, sigmas, device="cpu", dtype=torch.float32)

    with torch.inference_mode():
        positive, negative = refine(TextEmbeds(states, mask, pooled)), refine(TextEmbeds(-states, mask, pooled))
    return RefinedConditioning(positive, negative), sigmas


def sample(model, conditioning, cache=None, cfg=1.0):
    cond, sigmas = conditioning
    noise = seeded_noise(0, (1, 16, 2, 4, 4))
    with torch.inference_mode():
        return sample_video(model, cond, sigmas, noise, cfg=cfg, step_cache=cache)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_threshold_zero_is_the_uncached_output_bit_for_bit(model, conditioning, kind, cfg):
    run = StepCacheRun(StepCacheSettings(kind, 0.0))
    assert torch.equal(sample(model, conditioning, run, cfg), sample(model, conditioning, cfg=cfg))
    assert all(s.skipped == 0 and s.computed == STEPS for s in run.states.values())
    assert set(run.states) == ({"cond", "uncond"} if cfg != 1.0 else {"cond"})


@pytest.mark.parametrize("kind", KINDS)
def test_a_high_threshold_skips_steps_and_stays_close(model, conditioning, kind):
    run = StepCacheRun(StepCacheSettings(kind, HIGH[kind]))
    out = sample(model, conditioning, run)
    state = run.states["cond"]
    assert state.skipped > 0 and state.computed + state.skipped == STEPS
    assert state.history[0].computed and state.history[-1].computed  # first and last always computed
    assert torch.isfinite(out).all() and rel_err(out, sample(model, conditioning)) < 0.5
    assert f"{state.computed} computed, {state.skipped} skipped" in run.summary()


HIGH = {"teacache": 0.6, "first_block": 0.5, "easycache": 0.3}  # thresholds that skip some steps


@pytest.mark.parametrize("kind", KINDS)
def test_every_decision_is_the_agreed_one(model, conditioning, kind):
    """A distributed run's ``agree`` is asked each decision once, and its answer is the decision:
    answering "compute" (another process computes) overrides a skip, so every step is computed
    and the output is the uncached one; echoing leaves the one-process decisions."""
    alone = StepCacheRun(StepCacheSettings(kind, HIGH[kind]))
    sample(model, conditioning, alone)
    local = [d.computed for d in alone.states["cond"].history]
    assert not all(local)
    asked = []
    echoed = StepCacheRun(StepCacheSettings(kind, HIGH[kind]), agree=lambda compute: asked.append(compute) or compute)
    sample(model, conditioning, echoed)
    assert asked == local == [d.computed for d in echoed.states["cond"].history]
    forced = StepCacheRun(StepCacheSettings(kind, HIGH[kind]), agree=lambda compute: True)
    out = sample(model, conditioning, forced)
    assert forced.states["cond"].skipped == 0
    assert rel_err(out, sample(model, conditioning)) <= FP32_RTOL


# -- each rule against an implementation written from its definition ----------------------------

class FakeRun:
    """Stands in for the DiT's BlockRunner: block outputs the test chooses, and what ran."""

    shard = None  # one process: the tensors hold every video token

    def __init__(self, first_scale: float, rest_scale: float):
        self.first_scale, self.rest_scale, self.calls = first_scale, rest_scale, []

    def double(self, i, img, txt):
        self.calls.append(("double", i))
        return img * self.first_scale, txt

    def rest(self, start, img, txt):
        self.calls.append(("rest", start))
        return img * self.rest_scale + 1.0


def _walk(n, seed):
    """A sequence of inputs that changes by varying amounts, like a denoising trajectory."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 8, TINY.hidden_size, generator=g)
    steps = [x]
    for t in range(n - 1):
        x = x + (0.02 + 0.3 * (t % 4 == 0)) * torch.randn(x.shape, generator=g)
        steps.append(x)
    return steps


def test_teacache_decisions_and_skipped_outputs(model):
    settings = StepCacheSettings("teacache", 0.15)
    state = settings.new_state()
    vec = torch.randn(1, TINY.hidden_size, generator=torch.Generator().manual_seed(5))
    inputs = _walk(STEPS, 7)
    # the definition: modulated input of the first double block's video stream
    mod = model.double_blocks[0].img_mod.linear
    shift, scale = F.linear(F.silu(vec), mod.weight, mod.bias)[:, None].chunk(6, dim=-1)[:2]
    probes = [F.layer_norm(x, (x.shape[-1],), eps=1e-6) * (1 + scale) + shift for x in inputs]
    expected, acc = [], 0.0
    for t, p in enumerate(probes):
        if t == 0 or t == STEPS - 1:
            expected.append(True)
            acc = 0.0
            continue
        rel = ((p - probes[t - 1]).abs().mean() / probes[t - 1].abs().mean()).item()
        acc += np.polyval(TEACACHE_POLY, rel)
        if acc < settings.threshold:
            expected.append(False)
        else:
            expected.append(True)
            acc = 0.0
    got, residual = [], None
    with torch.inference_mode():
        for t, x in enumerate(inputs):
            state.begin(t, STEPS)
            run = FakeRun(1.0, 1.5 + 0.01 * t)
            out = state.blocks(model, x.clone(), None, vec, run)
            computed = bool(run.calls)
            got.append(computed)
            if computed:
                residual = out - x
            else:
                assert torch.equal(out, x + residual)  # the skipped step: input + cached residual
    assert got == expected and False in got and got.count(True) > 2


def test_first_block_cache_decisions_and_skipped_outputs():
    settings = StepCacheSettings("first_block", 0.06)
    state = settings.new_state()
    inputs = _walk(STEPS, 8)
    scales = [1.1 + 0.003 * t + 0.2 * (t % 5 == 0) for t in range(STEPS)]  # how block 0 changes its input
    expected, reference, rest = [], None, None
    for t, (x, a) in enumerate(zip(inputs, scales)):
        r = x * a - x
        use = (0 < t < STEPS - 1 and reference is not None
               and ((r - reference).abs().mean() / reference.abs().mean()).item() < settings.threshold)
        expected.append(not use)
        if not use:
            reference = r  # the reference residual moves only on computed steps
    got = []
    with torch.inference_mode():
        for t, (x, a) in enumerate(zip(inputs, scales)):
            state.begin(t, STEPS)
            run = FakeRun(a, 2.0)
            out = state.blocks(None, x.clone(), torch.zeros(1), None, run)
            computed = ("rest", 1) in run.calls
            assert run.calls[0] == ("double", 0)  # block 0 always runs
            got.append(computed)
            if computed:
                rest = out - x * a
            else:
                assert torch.equal(out, x * a + rest)
    assert got == expected and False in got


def test_easycache_decisions_and_skipped_outputs():
    settings = StepCacheSettings("easycache", 0.05, start=0.25)
    state = settings.new_state()
    inputs = _walk(STEPS, 9)

    def f(x):
        return torch.tanh(x) * 3.0

    expected, acc, k, prev_x, last_x, last_v = [], 0.0, None, None, None, None
    for t, x in enumerate(inputs):
        compute = True
        if settings.start * STEPS <= t < STEPS - 1 and prev_x is not None and k is not None:
            acc += k * (x - prev_x).abs().mean().item() / last_v.abs().mean().item()
            compute = acc >= settings.threshold
        prev_x = x
        expected.append(compute)
        if compute:
            acc = 0.0
            v = f(x)
            if last_v is not None:
                k = (v - last_v).abs().mean().item() / (x - last_x).abs().mean().item()
            last_x, last_v = x, v
    got, change = [], None
    for t, x in enumerate(inputs):
        state.begin(t, STEPS)
        calls = []
        out = state.model_call(x, lambda x=x, calls=calls: calls.append(1) or f(x))
        got.append(bool(calls))
        if calls:
            change = out - x
        else:
            assert torch.equal(out, x + change)
    assert got == expected and False in got
    assert all(got[: int(settings.start * STEPS)])  # warm-up steps are computed


def test_settings_are_checked():
    with pytest.raises(ValueError, match="kind="):
        StepCacheSettings("deepcache", 0.1)
    with pytest.raises(ValueError, match="threshold="):
        StepCacheSettings("teacache", float("nan"))
    with pytest.raises(ValueError, match="start="):
        StepCacheSettings("teacache", 0.1, start=0.8, end=0.2)


@pytest.mark.parametrize("kind", KINDS)
def test_a_skipped_step_copies_no_blocks_under_block_swap(model, conditioning, kind):
    """Every block swapped (CPU -> CPU copies, so the engine's real fetch path runs): a computed
    step copies all four blocks; a step that teacache or easycache skips copies none, and one that
    first_block skips copies one (block 0, which it runs)."""
    from hunyuan.offload import BlockSwapEngine, CopyTransport, SwapSettings

    cpu = torch.device("cpu")
    threshold = {"teacache": 0.6, "first_block": 0.5, "easycache": 0.3}[kind]
    run, per_step = StepCacheRun(StepCacheSettings(kind, threshold)), []
    engine = BlockSwapEngine(model, SwapSettings(double_blocks=2, single_blocks=2, prefetch=1), cpu,
                             transport=CopyTransport(cpu))
    cond, sigmas = conditioning
    with engine, engine.running(), torch.inference_mode():
        uncached = sample_video(model, cond, sigmas, seeded_noise(0, (1, 16, 2, 4, 4)))
        fetched = [engine.stats["fetches"]]
        out = sample_video(model, cond, sigmas, seeded_noise(0, (1, 16, 2, 4, 4)), step_cache=run,
                           callback=lambda info: fetched.append(engine.stats["fetches"]))
    per_step = [b - a for a, b in zip(fetched, fetched[1:])]
    decisions = [d.computed for d in run.states["cond"].history]
    assert False in decisions and len(per_step) == len(decisions) == STEPS
    skipped = {n for n, computed in zip(per_step, decisions) if not computed}
    assert skipped == ({1} if kind == "first_block" else {0})
    assert all(n >= 4 - 1 for n, computed in zip(per_step, decisions) if computed)  # one may come prefetched
    assert sum(per_step) <= 4 * decisions.count(True) + decisions.count(False)
    assert rel_err(out, uncached) < 0.5 and torch.isfinite(out).all()
