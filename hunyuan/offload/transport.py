"""How swapped weights travel from host memory to the compute device.

Two transports share one small interface (``fetch`` -> ticket, ``wait`` -> tensors,
``release``):

* :class:`StreamTransport` (CUDA): copies from pinned host memory on a side stream, so the copy
  of the next block overlaps the compute of the current one; the compute stream waits on an
  event before use, and released tensors are tied to the compute stream so the caching
  allocator never reuses them while a kernel still reads them.
* :class:`CopyTransport` (anything else, including CPU -> CPU): synchronous copies. On the CPU
  it is what lets tests run every step of the swap machinery with real, separate storage.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def _normal_tensors():
    """Device copies made while sampling (under inference_mode) are made as ordinary tensors, like
    the resident weights: a compiled block then sees one kind of parameter whichever of its
    instances is swapped, instead of recompiling for the inference-tensor kind."""
    return torch.inference_mode(False)


@dataclass
class Ticket:
    """Device copies of one unit's tensors, plus the event that says they are complete."""

    tensors: dict[str, torch.Tensor]
    event: object | None = None


class CopyTransport:
    """Synchronous copies (always real copies, even when host and device are the same)."""

    pin_host = False

    def __init__(self, device: torch.device):
        self.device = torch.device(device)

    def fetch(self, host: dict[str, torch.Tensor]) -> Ticket:
        with _normal_tensors():
            return Ticket({k: t.to(self.device, copy=True) for k, t in host.items()})

    def wait(self, ticket: Ticket) -> dict[str, torch.Tensor]:
        return ticket.tensors

    def release(self, ticket: Ticket) -> None:
        ticket.tensors.clear()


class StreamTransport:
    """Asynchronous host -> CUDA copies on a dedicated side stream."""

    pin_host = True

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.stream = torch.cuda.Stream(device=self.device)

    def fetch(self, host: dict[str, torch.Tensor]) -> Ticket:
        # No wait on the compute stream: memory freed by earlier units is safe to reuse because
        # release() tied it to the compute stream (record_stream).
        with torch.cuda.stream(self.stream), _normal_tensors():
            tensors = {k: t.to(self.device, non_blocking=True) for k, t in host.items()}
            event = torch.cuda.Event()
            event.record(self.stream)
        return Ticket(tensors, event)

    def wait(self, ticket: Ticket) -> dict[str, torch.Tensor]:
        torch.cuda.current_stream(self.device).wait_event(ticket.event)
        return ticket.tensors

    def release(self, ticket: Ticket) -> None:
        compute = torch.cuda.current_stream(self.device)
        for tensor in ticket.tensors.values():
            tensor.record_stream(compute)
        ticket.tensors.clear()


def make_transport(device: torch.device):
    """The fastest transport for a compute device."""
    device = torch.device(device)
    if device.type == "cuda":
        return StreamTransport(device)
    return CopyTransport(device)
