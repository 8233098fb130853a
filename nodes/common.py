"""What every stage node does the same way, written once: the model folders it lists, the dtype
choice it offers, loading a model for one call and offloading it after, and handing its result to
the next node on ComfyUI's intermediate device."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import comfy.model_management as mm
import comfy.utils
import folder_paths
import torch
from comfy_api.latest import io

from ..hunyuan.conditioning import moved
from ..hunyuan.dtypes import AUTO, PLAIN_DTYPES
from ..hunyuan.sampling.schedule import SIZE_MULTIPLE

# models/LLM: Hugging Face language-model folders (the text encoder's LLaVA-Llama-3, rewrite LMs)
LLM_FOLDER = "LLM"
folder_paths.add_model_folder_path(LLM_FOLDER, os.path.join(folder_paths.models_dir, LLM_FOLDER))

MAX_SIZE = 8192  # the largest video width or height the size widgets offer

# A dtype value that saved workflows may still carry, and what it means now.
LEGACY_DTYPES = {"default": AUTO}


def hf_folders(kind: str) -> dict[str, Path]:
    """Hugging Face model folders (with a config.json) directly inside every path of ``kind``."""
    found = {}
    for root in folder_paths.get_folder_paths(kind):
        if os.path.isdir(root):
            for entry in sorted(os.scandir(root), key=lambda e: e.name):
                if entry.is_dir() and os.path.isfile(os.path.join(entry.path, "config.json")):
                    found.setdefault(entry.name, Path(entry.path))
    return found


def dtype_input(name: str, tooltip: str, extra: tuple[str, ...] = ()) -> io.Combo.Input:
    """The dtype dropdown: auto, the plain dtypes, then ``extra`` (a loader's fp8 choices)."""
    return io.Combo.Input(name, options=[AUTO, *PLAIN_DTYPES, *extra], default=AUTO, tooltip=tooltip)


def dtype_label(value: str) -> str:
    """A dtype dropdown's value as today's label (a saved workflow's old one translated)."""
    return LEGACY_DTYPES.get(value, value)


def plain_dtype(value: str) -> torch.dtype | None:
    """The dtype a plain label names; None for auto (the loader picks)."""
    return PLAIN_DTYPES.get(dtype_label(value))


def size_input(name: str, default: int, tooltip: str) -> io.Int.Input:
    """A video width or height widget: multiples of the DiT's size step, up to MAX_SIZE."""
    return io.Int.Input(name, default=default, min=SIZE_MULTIPLE, max=MAX_SIZE, step=SIZE_MULTIPLE, tooltip=tooltip)


def progress_bar(total: int) -> Callable[[int, int], None]:
    """A ``(done, total)`` callback that moves a new ComfyUI progress bar of ``total`` steps."""
    bar = comfy.utils.ProgressBar(total)
    return lambda done, steps: bar.update_absolute(done, steps)


@contextlib.contextmanager
def loaded(patchers: list, memory_required: int) -> Iterator[torch.device]:
    """Load whole models through ComfyUI's model management for one call (plain HF modules have
    no lowvram casting), yield the device, then move them back to their offload device; they
    stay in ComfyUI's manager."""
    mm.load_models_gpu(patchers, memory_required=memory_required, force_full_load=True)
    try:
        yield patchers[0].load_device
    finally:
        for patcher in patchers:
            patcher.detach(unpatch_all=True)


def handed_on(value):
    """A stage's result (a conditioning dataclass) on ComfyUI's intermediate device."""
    return moved(value, mm.intermediate_device())
