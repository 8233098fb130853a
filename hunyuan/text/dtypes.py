"""Weight storage / compute dtype choices, including fp8 weight storage.

fp8 storage keeps every ``nn.Linear`` weight of the decoder layers in ``float8_e4m3fn`` (half
the bytes of bf16) and casts it to the compute dtype inside ``forward``; embeddings and norms
stay in the compute dtype. Weights from ComfyUI's fp8_scaled files keep their per-tensor scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..dtypes import AUTO, FP8, PLAIN_DTYPES
from ..ops import Linear


@dataclass(frozen=True)
class DtypeChoice:
    """storage: dtype the weights live in (None = keep the file's); compute: dtype of activations."""

    storage: torch.dtype | None
    compute: torch.dtype | None

    @property
    def fp8(self) -> bool:
        return self.storage == FP8


DTYPE_CHOICES = {
    AUTO: DtypeChoice(None, None),
    **{name: DtypeChoice(dtype, dtype) for name, dtype in PLAIN_DTYPES.items()},
    "fp8_e4m3fn (bf16 compute)": DtypeChoice(FP8, torch.bfloat16),
    "fp8_e4m3fn (fp16 compute)": DtypeChoice(FP8, torch.float16),
}


def parse_dtype(name: str) -> DtypeChoice:
    if name not in DTYPE_CHOICES:
        raise ValueError(f"dtype={name!r} is unknown; expected one of {', '.join(DTYPE_CHOICES)}")
    return DTYPE_CHOICES[name]


def resolve(choice: DtypeChoice, file_dtype: torch.dtype) -> DtypeChoice:
    """Fill in ``auto``: keep the file's dtype (zero-copy); fp8 files compute in bf16."""
    if choice.storage is not None:
        return choice
    if file_dtype == FP8:
        return DtypeChoice(FP8, torch.bfloat16)
    return DtypeChoice(file_dtype, file_dtype)


def converting_choices(file_dtypes) -> list[str]:
    """The dtype choices that keep none of a file's tensors as they are (neither storage nor
    compute is one of ``file_dtypes``), 16 bits or narrower: a loader reads every tensor of such a
    file with plain reads and maps nothing."""
    return [name for name, choice in DTYPE_CHOICES.items()
            if choice.storage is not None and choice.compute.itemsize <= 2
            and not {choice.storage, choice.compute} & set(file_dtypes)]


def make_fp8_linears(model: nn.Module, under: str = "layers.") -> set[str]:
    """Turn the plain Linear modules whose name starts with ``under`` into the pack's fp8-capable
    :class:`~hunyuan.ops.Linear` with a unit scale (still on meta; the file's scale loads over it).

    Returns the parameter names (``<module>.weight``) that must be stored in fp8.
    """
    names = set()
    for name, module in model.named_modules():
        if type(module) is nn.Linear and name.startswith(under):
            module.__class__ = Linear
            module.register_buffer("weight_scale", torch.ones((), dtype=torch.float32))  # saved and loaded
            names.add(f"{name}.weight")
    return names
