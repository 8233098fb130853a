"""The block-swap engine: stream DiT blocks from host memory to the device just ahead of use.

The engine works from outside the DiT: it needs only the ``double_blocks`` / ``single_blocks``
ModuleLists (and optionally ``txt_in`` / ``img_in``) and drives them with forward hooks:

* before block p: check for interruption, make sure block p is on the device (waiting for its
  prefetch, or loading it now), then start copying the next ``prefetch`` swapped blocks in
  execution order, wrapping around to the next forward (the CFG branch or the next step);
* after block p (even when it raised): point its parameters back at the host copies and free
  the device copies.

Parameters keep their identity; only ``param.data`` is re-pointed, so the DiT code and any
reference to its parameters stay valid. Any failure mid-forward leaves every swapped block
in host memory and no device copy alive (see :meth:`BlockSwapEngine.release_all`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from .settings import SwapSettings
from .transport import CopyTransport, Ticket, make_transport

log = logging.getLogger(__name__)


@dataclass
class _Unit:
    """One swappable module: where each of its tensors lives in the module, and its host copy."""

    name: str
    module: nn.Module
    slots: list[tuple[nn.Module, str, bool]]  # (owner module, attribute, is_parameter)
    host: dict[str, torch.Tensor] = field(default_factory=dict)
    ticket: Ticket | None = None

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.host.values())


def _slots_direct(owner: nn.Module) -> list[tuple[nn.Module, str, bool]]:
    params = [(owner, n, True) for n, p in owner._parameters.items() if p is not None]
    return params + [(owner, n, False) for n, b in owner._buffers.items() if b is not None]


def _slots(module: nn.Module) -> list[tuple[nn.Module, str, bool]]:
    return [slot for owner in module.modules() for slot in _slots_direct(owner)]


def _get(slot) -> torch.Tensor:
    owner, name, is_param = slot
    return owner._parameters[name] if is_param else owner._buffers[name]


def _bind(unit: _Unit, tensors: dict[str, torch.Tensor]) -> None:
    for i, slot in enumerate(unit.slots):
        owner, name, is_param = slot
        if is_param:
            owner._parameters[name].data = tensors[str(i)]
        else:
            owner._buffers[name] = tensors[str(i)]


def _move_slot(slot, device: torch.device) -> None:
    owner, name, is_param = slot
    tensor = _get(slot)
    if is_param:
        tensor.data = tensor.data.to(device)
    else:
        owner._buffers[name] = tensor.to(device)


def swap_units(model: nn.Module, settings: SwapSettings) -> tuple[list[tuple[str, nn.Module]], list[tuple[str, nn.Module]]]:
    """(swapped blocks in execution order, on-demand units) named as in the state dict."""
    doubles, singles = list(model.double_blocks), list(model.single_blocks)
    blocks = [(f"double_blocks.{i}", doubles[i]) for i in range(min(settings.double_blocks, len(doubles)))]
    blocks += [(f"single_blocks.{i}", singles[i]) for i in range(min(settings.single_blocks, len(singles)))]
    on_demand = []
    for name, wanted in (("txt_in", settings.offload_txt_in), ("img_in", settings.offload_img_in)):
        module = getattr(model, name, None)
        if wanted and module is not None:  # a detached refiner is already outside the tree
            on_demand.append((name, module))
    return blocks, on_demand


def module_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


def resident_bytes(model: nn.Module, settings: SwapSettings) -> int:
    """Device bytes the DiT's weights take with these settings (:meth:`SwapSettings.resident`)."""
    blocks, on_demand = swap_units(model, settings)
    sizes = [module_bytes(m) for _, m in blocks], [module_bytes(m) for _, m in on_demand]
    return settings.resident(module_bytes(model), *sizes)


class BlockSwapEngine:
    """Keeps the swapped blocks of ``model`` in host memory and streams them to ``device``.

    Use as a context manager (or attach()/detach()). ``on_block`` runs before every block and
    may raise (e.g. a user interrupt); the engine cleans up either way.
    """

    def __init__(
        self,
        model: nn.Module,
        settings: SwapSettings,
        device: torch.device,
        *,
        offload_device: torch.device | str = "cpu",
        transport=None,
        on_block: Callable[[], None] | None = None,
    ):
        self.model, self.settings = model, settings
        self.device, self.offload_device = torch.device(device), torch.device(offload_device)
        self.transport = transport if transport is not None else make_transport(self.device)
        self.on_block = on_block
        blocks, on_demand = swap_units(model, settings)
        self._order = list(model.double_blocks) + list(model.single_blocks)
        by_module = {id(m): _Unit(n, m, _slots(m)) for n, m in blocks}
        self._ring = [i for i, m in enumerate(self._order) if id(m) in by_module]
        self._units = {i: by_module[id(self._order[i])] for i in self._ring}
        self._on_demand = [_Unit(n, m, _slots(m)) for n, m in on_demand]
        self._handles: list = []
        self._placed = False
        self.stats = {"fetches": 0, "sync_loads": 0, "max_live": 0}

    # -- placement and activation ----------------------------------------------------------
    def place(self) -> BlockSwapEngine:
        """Move swapped units to host memory (pinned for CUDA), everything else to the device."""
        if self._placed:
            return self
        units = list(self._units.values()) + self._on_demand
        swapped_ids = {id(m) for u in units for m in u.module.modules()}
        for owner in self.model.modules():
            if id(owner) not in swapped_ids:
                for slot in _slots_direct(owner):
                    _move_slot(slot, self.device)
        pin = getattr(self.transport, "pin_host", False)
        for unit in units:
            for i, slot in enumerate(unit.slots):
                host = _get(slot).detach().to(self.offload_device)
                unit.host[str(i)] = host.pin_memory() if pin and not host.is_pinned() else host
            _bind(unit, unit.host)
        self._placed = True
        log.info(
            "block swap: %d block(s) + %d other unit(s) in host memory (%.1f MiB), prefetch %d, device %s",
            len(self._ring), len(self._on_demand), sum(u.nbytes for u in units) / 2**20, self.settings.prefetch,
            self.device,
        )
        return self

    def activate(self) -> BlockSwapEngine:
        """Install the hooks that stream the swapped units in and out around each use."""
        if not self._placed:
            raise RuntimeError("BlockSwapEngine.activate() before place(): the swapped blocks are not in host memory")
        if not self._handles:
            self._install_hooks()
        return self

    def deactivate(self) -> None:
        """Free every device copy and remove the hooks; swapped weights stay in host memory."""
        self.release_all()
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def attach(self) -> BlockSwapEngine:
        return self.place().activate()

    def detach(self) -> None:
        self.deactivate()

    @contextlib.contextmanager
    def running(self, on_block: Callable[[], None] | None = None):
        """Hooks on for the duration of a sampling run; always off (and copies freed) after it."""
        previous, self.on_block = self.on_block, on_block
        self.activate()
        try:
            yield self
        finally:
            self.deactivate()
            self.on_block = previous

    def __enter__(self) -> BlockSwapEngine:
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.detach()

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def release_all(self) -> None:
        """Point every swapped unit back at its host copy and drop all device copies."""
        for unit in list(self._units.values()) + self._on_demand:
            self._release(unit)

    def live_copies(self) -> int:
        return sum(u.ticket is not None for u in list(self._units.values()) + self._on_demand)

    def resident_bytes(self) -> int:
        return resident_bytes(self.model, self.settings)

    # -- hooks -------------------------------------------------------------------------------
    def _install_hooks(self) -> None:
        for pos, block in enumerate(self._order):
            self._handles.append(block.register_forward_pre_hook(self._pre_hook(pos)))
            if pos in self._units:
                post = self._post_hook(self._units[pos])
                self._handles.append(block.register_forward_hook(post, always_call=True))
        for unit in self._on_demand:
            self._handles.append(unit.module.register_forward_pre_hook(self._demand_hook(unit)))
            self._handles.append(unit.module.register_forward_hook(self._post_hook(unit), always_call=True))
        self._handles.append(self.model.register_forward_hook(self._model_done, always_call=True))

    def _pre_hook(self, pos: int):
        def hook(module, args):
            if self.on_block is not None:
                self.on_block()
            if pos in self._units:
                self._use(self._units[pos])
            self._prefetch_after(pos)

        return hook

    def _demand_hook(self, unit: _Unit):
        def hook(module, args):
            self._use(unit)

        return hook

    def _post_hook(self, unit: _Unit):
        def hook(module, args, output):
            self._release(unit)

        return hook

    def _model_done(self, module, args, output):
        if output is None:  # the forward raised: nothing stays on the device
            self.release_all()

    # -- mechanics ---------------------------------------------------------------------------
    def _fetch(self, unit: _Unit) -> None:
        unit.ticket = self.transport.fetch(unit.host)
        self.stats["fetches"] += 1
        self.stats["max_live"] = max(self.stats["max_live"], self.live_copies())

    def _use(self, unit: _Unit) -> None:
        if unit.ticket is None:
            self.stats["sync_loads"] += 1
            self._fetch(unit)
        _bind(unit, self.transport.wait(unit.ticket))

    def _release(self, unit: _Unit) -> None:
        if unit.ticket is None:
            return
        _bind(unit, unit.host)
        self.transport.release(unit.ticket)
        unit.ticket = None

    def _prefetch_after(self, pos: int) -> None:
        """Keep exactly the next ``prefetch`` swapped blocks (cyclically after ``pos``) in flight."""
        ring = self._ring
        if not ring:
            return
        later = [q for q in ring if q > pos] + [q for q in ring if q < pos]
        window = later[: self.settings.prefetch]
        keep = set(window) | {pos}
        for q in ring:
            if q not in keep:
                self._release(self._units[q])
        for q in window:
            if self._units[q].ticket is None:
                self._fetch(self._units[q])


def make_engine(
    model: nn.Module,
    settings: SwapSettings,
    device: torch.device,
    *,
    offload_device: torch.device | str = "cpu",
    on_block: Callable[[], None] | None = None,
) -> BlockSwapEngine | None:
    """An engine for a real device, or None (with a log line) when swapping cannot save memory:
    nothing to swap, or the compute device is the offload device (e.g. CPU-only runs)."""
    device, offload_device = torch.device(device), torch.device(offload_device)
    if not settings.swaps_anything:
        return None
    if device == offload_device or device.type == offload_device.type == "cpu":
        log.info("block swap: compute device %s is the offload device; swap is a no-op", device)
        return None
    return BlockSwapEngine(model, settings, device, offload_device=offload_device, on_block=on_block)


__all__ = ["BlockSwapEngine", "CopyTransport", "make_engine", "module_bytes", "resident_bytes", "swap_units"]
