"""Fixtures shared by the unit tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def pretend_device(monkeypatch):
    """ComfyUI on this machine runs on the CPU, where block swap is a no-op: the DiT's patcher is
    made to believe it has a separate device and the engine copies CPU -> CPU, so the placement
    path that a GPU takes runs for real."""
    import torch

    from tests.pack import pack_module

    blockswap, offload = pack_module("nodes.blockswap"), pack_module("hunyuan.offload")
    cpu = torch.device("cpu")
    monkeypatch.setattr(blockswap.BlockSwapPatcher, "_separate_device", lambda self: True)

    def engine(model, settings, device, offload_device):
        return offload.BlockSwapEngine(model, settings, cpu, transport=offload.CopyTransport(cpu))

    monkeypatch.setattr(blockswap, "make_engine", engine)
