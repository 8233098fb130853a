"""Regional torch.compile: each DiT block's forward is compiled, never the whole model.

Compiling block by block keeps everything around a block in eager Python: the block-swap
engine's hooks (which re-point a block's parameters at device copies), step caches (which decide
whether the blocks run at all) and weight patches all work unchanged. Every double block shares
one compiled graph and every single block another (parameters are graph inputs, so moving or
patching them recompiles nothing); a recompile happens only when a shape changes (another video
size, or a text mask appearing). ``dynamic`` is off by default: a video size is fixed for a run.

:func:`compiled_blocks` swaps the compiled forwards in for one sampling run and puts the eager
ones back afterwards, so a DiT shared with graphs that do not compile stays eager there.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import shutil
import types
from collections.abc import Iterator
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)

# No CUDA-graph modes ("reduce-overhead"): graphs replay fixed addresses, and block swap re-points
# a block's parameters at new device copies every step.
MODES = ("default", "max-autotune-no-cudagraphs")
_COMPILED: dict[tuple, object] = {}


@dataclass(frozen=True)
class CompileSettings:
    mode: str = "default"
    dynamic: bool = False
    recompile_limit: int = 8  # per block kind; past it torch runs that block eagerly and warns
    eager_fallback: bool = True  # where compile cannot run: warn and run eagerly instead of failing

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"compile mode={self.mode!r} is unknown; expected one of {', '.join(MODES)}")
        if self.recompile_limit < 1:
            raise ValueError(f"recompile_limit={self.recompile_limit} must be >= 1")


def check_can_compile(device: torch.device | str) -> None:
    """Raise RuntimeError saying why inductor cannot compile for ``device`` here."""
    device = torch.device(device)
    if device.type == "cpu":
        if not any(shutil.which(cc) for cc in ("cc", "gcc", "clang", "g++", "c++")):
            raise RuntimeError("torch.compile on the CPU needs a C/C++ compiler (gcc or clang), and none is on PATH; "
                               "install one (e.g. apt-get install gcc g++) or remove the Compile node")
    elif device.type == "cuda":
        if importlib.util.find_spec("triton") is None:
            raise RuntimeError("torch.compile on CUDA needs Triton, which is not installed; pip install triton "
                               "(triton-windows on Windows) or remove the Compile node")
    else:
        raise RuntimeError(f"torch.compile is not supported on device {device} by this pack; remove the Compile node")


def usable(settings: CompileSettings, device: torch.device | str) -> bool:
    """Whether to compile on ``device``: True, or False after a warning (``eager_fallback``);
    without the fallback, the reason is raised."""
    try:
        check_can_compile(device)
    except RuntimeError as exc:
        if not settings.eager_fallback:
            raise
        log.warning("%s. Running the DiT eagerly (uncompiled) instead.", exc)
        return False
    return True


def _compiled_forward(cls: type, settings: CompileSettings):
    key = (cls, settings)
    if key not in _COMPILED:
        _COMPILED[key] = torch.compile(cls.forward, mode=settings.mode, dynamic=settings.dynamic)
    return _COMPILED[key]


@contextlib.contextmanager
def compiled_blocks(model: torch.nn.Module, settings: CompileSettings) -> Iterator[None]:
    """For the duration of the block: every double and single block runs its compiled forward."""
    blocks = [*model.double_blocks, *model.single_blocks]
    limit_name = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"
    previous = getattr(torch._dynamo.config, limit_name)
    setattr(torch._dynamo.config, limit_name, settings.recompile_limit)
    for block in blocks:
        block.forward = types.MethodType(_compiled_forward(type(block), settings), block)
    try:
        yield
    finally:
        for block in blocks:
            block.__dict__.pop("forward", None)  # back to the class's eager forward
        setattr(torch._dynamo.config, limit_name, previous)
