"""Reading checkpoint files safely.

Every loader in the pack goes through :func:`load_state_dict`: safetensors files are opened
memory-mapped, and pickle-based files (``.pt``, ``.pth``, ``.bin``, ``.ckpt``) are only read with
``torch.load(weights_only=True)``, which refuses to run code hidden in a pickle.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

log = logging.getLogger(__name__)

SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


class CheckpointError(ValueError):
    """A checkpoint the user pointed at cannot be used; the message says which and why."""


# name-0000K-of-0000N.safetensors: the shards Hugging Face's save_pretrained writes for large models
SHARD_NAME = re.compile(r"^(?P<stem>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.safetensors$")


def _all_present(folder: Path, names: list[str], what: str, where: str = "") -> list[Path]:
    """``folder / name`` for each of ``names``; a missing one is an error naming it."""
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        verb = "is" if len(missing) == 1 else "are"
        raise CheckpointError(f"{what}, but {', '.join(missing)} {verb} missing from {folder}{where}; "
                              "re-download or re-copy the checkpoint")
    return [folder / n for n in names]


def shard_files(path: Path) -> list[Path]:
    """``path`` alone, or every shard of the set it belongs to (by its :data:`SHARD_NAME`): picking
    any one shard reads them all."""
    match = SHARD_NAME.match(path.name)
    if match is None:
        return [path]
    count = int(match["count"])
    names = [f"{match['stem']}-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]
    return _all_present(path.parent, names, f"checkpoint {str(path)!r} is shard {int(match['index'])} of {count}")


def weight_files(folder: Path, wanted=None) -> list[Path]:
    """The weight files of a Hugging Face model folder, via its index when there is one.

    ``wanted(key) -> bool`` limits the result to shards that hold at least one wanted key.
    Without an index: its .safetensors files, else its pickle-format ones.
    """
    indexes = sorted(folder.glob("*.safetensors.index.json")) + sorted(folder.glob("*.bin.index.json"))
    if indexes:
        index = indexes[0]
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as exc:
            raise CheckpointError(f"index {str(index)!r} has no readable 'weight_map': {exc}") from exc
        names = sorted({shard for key, shard in weight_map.items() if wanted is None or wanted(key)})
        return _all_present(folder, names, f"folder {str(folder)!r} has {len(set(weight_map.values()))} shards",
                            f" (listed in its index {index.name!r})")
    for suffixes in (SAFETENSORS_SUFFIXES, PICKLE_SUFFIXES):
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in suffixes)
        if files:
            return files
    raise CheckpointError(f"model folder {str(folder)!r} has no weights; expected model.safetensors (or other "
                          ".safetensors files), shards with their *.index.json, or pytorch_model.bin")


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
