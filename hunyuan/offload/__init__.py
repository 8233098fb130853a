"""Block swap: keep some DiT blocks in host memory and stream them in just ahead of use."""

from .engine import BlockSwapEngine, make_engine, module_bytes, resident_bytes, swap_units
from .settings import SWAP_MODES, SwapSettings
from .transport import CopyTransport, StreamTransport, make_transport

__all__ = [
    "SWAP_MODES",
    "BlockSwapEngine",
    "CopyTransport",
    "StreamTransport",
    "SwapSettings",
    "make_engine",
    "make_transport",
    "module_bytes",
    "resident_bytes",
    "swap_units",
]
