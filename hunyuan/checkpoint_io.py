"""Reading checkpoint files safely.

Every loader in the pack goes through :func:`load_state_dict`: safetensors files are opened
memory-mapped, and pickle-based files (``.pt``, ``.pth``, ``.bin``, ``.ckpt``) are only read with
``torch.load(weights_only=True)``, which refuses to run code hidden in a pickle.
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

log = logging.getLogger(__name__)

SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


class CheckpointError(ValueError):
    """A checkpoint the user pointed at cannot be used; the message says which and why."""


def load_state_dict(path: str | os.PathLike, *, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Read a whole state dict from ``path``.

    safetensors tensors are read through the file's memory map; ``.pt``-style files are read
    with ``weights_only=True`` and memory-mapped when the zip format allows it.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist (expected a .safetensors or .pt file)")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {str(path)!r} is empty (0 bytes)")
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        return _load_safetensors(path, device)
    if suffix in PICKLE_SUFFIXES:
        return _load_pickle(path, device)
    raise CheckpointError(
        f"checkpoint {str(path)!r} has suffix {suffix!r}; expected one of "
        f"{', '.join(SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES)}"
    )


def _load_safetensors(path: Path, device) -> dict[str, torch.Tensor]:
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise CheckpointError(f"checkpoint {str(path)!r} is not a readable safetensors file: {exc}") from exc


def _load_pickle(path: Path, device) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(str(path), map_location=device, weights_only=True, mmap=True)
    except RuntimeError as exc:
        if "mmap" not in str(exc):
            raise _read_error(path, exc) from exc
        obj = _torch_load_plain(path, device)
    except Exception as exc:  # never retried unsafely
        raise _read_error(path, exc) from exc
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"checkpoint {str(path)!r} holds a {type(obj).__name__}, expected a dict of tensors")
    return dict(obj)


def _torch_load_plain(path: Path, device):
    """Old (non-zip) .pt files cannot be memory-mapped; read them fully, still weights-only."""
    try:
        return torch.load(str(path), map_location=device, weights_only=True)
    except Exception as exc:
        raise _read_error(path, exc) from exc


def _read_error(path: Path, exc: Exception) -> CheckpointError:
    """A refusal by the weights-only unpickler says so; a damaged file is not blamed on pickle safety."""
    if isinstance(exc, pickle.UnpicklingError):
        return CheckpointError(
            f"checkpoint {str(path)!r} was refused by torch.load(weights_only=True): {exc}. "
            "Only plain tensors are accepted; convert the file to .safetensors."
        )
    size = path.stat().st_size
    return CheckpointError(
        f"checkpoint {str(path)!r} ({size} bytes) cannot be read; it looks truncated or damaged "
        f"(a partial download?): {exc.__class__.__name__}: {str(exc)[:300]}"
    )


def unwrap(sd: Mapping[str, object], wrappers: Iterable[str] = ("state_dict", "module", "model")) -> dict:
    """Descend into common single-key wrappers such as ``{"module": {...}}``."""
    current = sd
    while True:
        for key in wrappers:
            inner = current.get(key) if isinstance(current, Mapping) else None
            if isinstance(inner, Mapping) and not isinstance(inner, torch.Tensor):
                current = inner
                break
        else:
            return dict(current)


def strip_prefix(sd: Mapping[str, torch.Tensor], prefixes: Iterable[str]) -> dict[str, torch.Tensor]:
    """Remove the first of ``prefixes`` that every key carrying any of them starts with.

    Keys without the prefix are dropped when at least one key has it (ComfyUI files bundle
    other models' weights next to the one we want).
    """
    for prefix in prefixes:
        hits = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
        if hits:
            return hits
    return dict(sd)
