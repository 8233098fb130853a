"""Block-swap engine on the CPU: the CPU plays both the host and the device, with real copies
(CopyTransport), so every step of the machinery runs and can be checked."""

import logging

import pytest
import torch

from hunyuan.dit import TINY, HunyuanVideoDiT
from hunyuan.offload import (
    BlockSwapEngine,
    CopyTransport,
    SwapSettings,
    make_engine,
    module_bytes,
    resident_bytes,
)

CPU = torch.device("cpu")


def _model(seed=0):
    torch.manual_seed(seed)
    model = HunyuanVideoDiT(TINY).eval()
    for p in model.parameters():  # nothing zero-initialised: every block shapes the output
        p.data.normal_(0, 0.05)
    return model


def _inputs(seed=1, batch=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 16, 2, 4, 4, generator=g)
    text = torch.randn(batch, 5, TINY.text_states_dim, generator=g)
    mask = torch.tensor([[True] * 4 + [False]] * batch)
    pooled = torch.randn(batch, TINY.text_states_dim_2, generator=g)
    return {"x": x, "timestep": torch.full((batch,), 900.0), "text_mask": mask, "text_pooled": pooled,
            "guidance": torch.full((batch,), 6.0), "text_states": text}


def _engine(model, settings, **kw):
    return BlockSwapEngine(model, settings, CPU, transport=CopyTransport(CPU), **kw)


def _swapped_params(model, settings):
    out = []
    if settings.double_blocks:
        out += [p for b in model.double_blocks[: settings.double_blocks] for p in b.parameters()]
    if settings.single_blocks:
        out += [p for b in model.single_blocks[: settings.single_blocks] for p in b.parameters()]
    return out


SETTINGS = [
    SwapSettings(double_blocks=1, single_blocks=0, prefetch=1),
    SwapSettings(double_blocks=2, single_blocks=2, prefetch=1),
    SwapSettings(double_blocks=0, single_blocks=2, prefetch=0),
    SwapSettings(double_blocks=2, single_blocks=2, prefetch=3, offload_txt_in=True, offload_img_in=True),
    SwapSettings(double_blocks=9, single_blocks=9, prefetch=2),  # more than the model has
]


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: f"d{s.double_blocks}s{s.single_blocks}k{s.prefetch}")
def test_swap_on_and_off_give_identical_outputs(settings):
    model = _model()
    inputs = _inputs()
    with torch.no_grad():
        ref = [model(**inputs), model(**_inputs(seed=2))]
        with _engine(model, settings) as engine:
            out = [model(**inputs), model(**_inputs(seed=2))]  # 2nd forward uses the wrapped prefetch
            assert engine.stats["fetches"] > 0
    for a, b in zip(out, ref):
        assert torch.equal(a, b)


def test_swapped_blocks_compute_from_device_copies_and_are_released():
    model = _model()
    settings = SwapSettings(double_blocks=2, single_blocks=1, prefetch=1)
    engine = _engine(model, settings)
    block = model.double_blocks[1]
    seen = {}

    def record(module, args, output):
        seen.setdefault("ptr", module.img_attn_qkv.weight.data_ptr())

    block.register_forward_hook(record)
    with torch.no_grad(), engine:
        host_ptr = block.img_attn_qkv.weight.data_ptr()
        model(**_inputs())
        assert seen["ptr"] != host_ptr  # computed from a separate copy
        assert block.img_attn_qkv.weight.data_ptr() == host_ptr  # and pointed back afterwards
        # only the wrapped prefetch for the next forward stays alive between forwards
        assert engine.live_copies() == settings.prefetch
        assert engine.stats["max_live"] <= settings.prefetch + 1
        # the first forward had to load its first swapped block on use; the second did not
        loads = engine.stats["sync_loads"]
        model(**_inputs())
        assert engine.stats["sync_loads"] == loads == 1
    assert engine.live_copies() == 0


def test_prefetch_zero_loads_every_block_on_use():
    model = _model()
    engine = _engine(model, SwapSettings(double_blocks=2, single_blocks=2, prefetch=0))
    with torch.no_grad(), engine:
        model(**_inputs())
        assert engine.stats["sync_loads"] == 4 and engine.stats["max_live"] == 1
        assert engine.live_copies() == 0


class Interrupted(Exception):
    pass


@pytest.mark.parametrize("fail_at", [0, 1, 2, 3])
def test_interrupt_mid_forward_leaves_every_block_where_it_belongs(fail_at):
    model = _model()
    settings = SwapSettings(double_blocks=2, single_blocks=2, prefetch=2, offload_txt_in=True)
    calls = []

    def on_block():
        calls.append(1)
        if len(calls) == fail_at + 1:
            raise Interrupted

    engine = _engine(model, settings, on_block=on_block)
    with torch.no_grad(), engine:
        host = {id(p): p.data_ptr() for p in _swapped_params(model, settings)}
        with pytest.raises(Interrupted):
            model(**_inputs())
        assert engine.live_copies() == 0
        assert all(p.data_ptr() == host[id(p)] for p in _swapped_params(model, settings))
        calls.append("done")  # no more interrupts: the next forward is correct
        out = model(**_inputs())
    with torch.no_grad():
        assert torch.equal(out, model(**_inputs()))


def test_exception_inside_a_swapped_block_releases_its_copy():
    model = _model()
    settings = SwapSettings(double_blocks=2, single_blocks=2, prefetch=1)
    engine = _engine(model, settings)
    real_forward = model.single_blocks[0].forward

    def broken(*args, **kwargs):
        assert model.single_blocks[0].linear1.weight.data_ptr() != host_ptr
        raise RuntimeError("out of memory (simulated)")

    with torch.no_grad(), engine:
        host_ptr = model.single_blocks[0].linear1.weight.data_ptr()
        model.single_blocks[0].forward = broken
        with pytest.raises(RuntimeError, match="simulated"):
            model(**_inputs())
        assert engine.live_copies() == 0
        assert model.single_blocks[0].linear1.weight.data_ptr() == host_ptr
        model.single_blocks[0].forward = real_forward
    assert not engine.attached and not model.single_blocks[0]._forward_hooks


def test_base_exception_is_cleaned_up_by_the_context_manager():
    model = _model()
    engine = _engine(model, SwapSettings(double_blocks=2, single_blocks=2, prefetch=1))

    def stop():
        raise KeyboardInterrupt  # not an Exception: torch's always-call hooks do not see it

    engine.on_block = stop
    with pytest.raises(KeyboardInterrupt), torch.no_grad(), engine:
        model(**_inputs())
    assert engine.live_copies() == 0 and not engine.attached


def test_resident_bytes_counts_unswapped_weights_and_buffers_in_flight():
    model = _model()
    total = module_bytes(model)
    d, s = module_bytes(model.double_blocks[0]), module_bytes(model.single_blocks[0])
    assert resident_bytes(model, SwapSettings()) == total
    settings = SwapSettings(double_blocks=2, single_blocks=1, prefetch=1)
    assert resident_bytes(model, settings) == total - 2 * d - s + 2 * d
    settings = SwapSettings(double_blocks=1, single_blocks=2, prefetch=0)
    assert resident_bytes(model, settings) == total - d - 2 * s + d
    txt = module_bytes(model.txt_in)
    settings = SwapSettings(offload_txt_in=True, prefetch=1)
    assert resident_bytes(model, settings) == total  # on-demand unit still needs its own room
    settings = SwapSettings(double_blocks=2, single_blocks=2, prefetch=1, offload_txt_in=True)
    assert resident_bytes(model, settings) == total - 2 * d - 2 * s - txt + max(2 * d, d + txt)


def test_make_engine_is_a_logged_noop_on_cpu(caplog):
    model = _model()
    with caplog.at_level(logging.INFO, logger="hunyuan.offload.engine"):
        assert make_engine(model, SwapSettings(double_blocks=2), CPU) is None
    assert "no-op" in caplog.text
    assert make_engine(model, SwapSettings(), torch.device("cuda", 0)) is None  # nothing to swap


def test_detached_refiner_is_skipped():
    model = _model()
    model.detach_refiner()
    engine = _engine(model, SwapSettings(offload_txt_in=True, double_blocks=1))
    assert [u.name for u in engine._on_demand] == []


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(double_blocks=-1), "double_blocks=-1"),
        (dict(prefetch=1.5), "prefetch=1.5"),
        (dict(mode="fast"), "mode='fast'"),
    ],
)
def test_settings_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SwapSettings(**kwargs)


def test_place_then_running_scopes_the_hooks_to_one_run():
    model = _model()
    engine = _engine(model, SwapSettings(double_blocks=1, single_blocks=1, prefetch=1))
    engine.place()
    assert not engine.attached and not model.double_blocks[0]._forward_pre_hooks
    seen = []
    with torch.no_grad():
        ref = model(**_inputs())  # placed but inactive: plain forward on the host copies
        with engine.running(on_block=lambda: seen.append(1)):
            assert engine.attached
            out = model(**_inputs())
    assert torch.equal(out, ref) and len(seen) == len(model.double_blocks) + len(model.single_blocks)
    assert not engine.attached and engine.live_copies() == 0 and engine.on_block is None
    with pytest.raises(RuntimeError, match="before place"):
        _engine(model, SwapSettings(double_blocks=1)).activate()
