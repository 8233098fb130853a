"""Reading checkpoint files safely.

Every loader in the pack reads through :func:`load_state_dict` or :func:`open_state_dict`:
:func:`open_state_dict` reads only a safetensors file's header, and :func:`read_stored` its
tensors later, a group at a time (as views of the file's memory map, or as copies read with plain
reads, which map nothing); pickle-based files (``.pt``, ``.pth``, ``.bin``, ``.ckpt``) are only
read with ``torch.load(weights_only=True)``, which refuses to run code hidden in a pickle.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
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
    _check_file(path)
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        return _load_safetensors(path, device)
    if suffix in PICKLE_SUFFIXES:
        return _load_pickle(path, device)
    raise CheckpointError(
        f"checkpoint {str(path)!r} has suffix {suffix!r}; expected one of "
        f"{', '.join(SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES)}"
    )


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist (expected a .safetensors or .pt file)")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {str(path)!r} is empty (0 bytes)")


def _load_safetensors(path: Path, device) -> dict[str, torch.Tensor]:
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise CheckpointError(f"checkpoint {str(path)!r} is not a readable safetensors file: {exc}") from exc


# safetensors dtype names (the header's) -> torch dtypes
SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "I64": torch.int64, "I32": torch.int32,
    "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}


@dataclass(frozen=True)
class StoredTensor:
    """One tensor of a safetensors file, known by its header (shape, dtype) and not read yet."""

    path: Path
    key: str
    shape: tuple[int, ...]
    dtype_name: str  # the header's (F16, BF16, F8_E4M3, ...)
    start: int = 0  # where its bytes begin in the file
    nbytes: int = 0

    @property
    def dtype(self) -> torch.dtype:
        """The torch dtype; a dtype the pack does not read is refused here, when the tensor is used
        (a file may bundle tensors of other kinds that the loader drops by name)."""
        if self.dtype_name not in SAFETENSORS_DTYPES:
            raise CheckpointError(f"checkpoint {str(self.path)!r}: tensor {self.key!r} has dtype {self.dtype_name}, "
                                  f"which the pack does not read (expected one of {', '.join(SAFETENSORS_DTYPES)})")
        return SAFETENSORS_DTYPES[self.dtype_name]

    def meta(self) -> torch.Tensor:
        """A stand-in with this shape and dtype on the meta device (no memory)."""
        return torch.empty(self.shape, dtype=self.dtype, device="meta")


MAX_HEADER = 100 * 2**20  # safetensors' own limit on a header's size


def index_safetensors(path: str | os.PathLike) -> dict[str, StoredTensor]:
    """Every tensor of a safetensors file as a :class:`StoredTensor`, from its header alone (read
    with plain reads: mapping a file larger than the machine's memory can be refused)."""
    path = Path(path)
    _check_file(path)
    size = path.stat().st_size

    def bad(why: str) -> CheckpointError:
        return CheckpointError(f"checkpoint {str(path)!r} is not a readable safetensors file: {why}")

    try:
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8).ljust(8, b"\0"))
            if not 2 <= length <= min(MAX_HEADER, size - 8):
                raise bad(f"its header length {length} does not fit the file ({size} bytes)")
            header = json.loads(f.read(length))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise bad(f"{exc.__class__.__name__}: {exc}") from exc
    if not isinstance(header, dict):
        raise bad("its header is not a JSON object")
    index = {}
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        try:
            dtype_name, shape, (begin, end) = entry["dtype"], tuple(entry["shape"]), entry["data_offsets"]
            ok = all(isinstance(n, int) and n >= 0 for n in (*shape, begin, end)) and begin <= end
        except (TypeError, KeyError, ValueError):
            ok = False
        if not ok:
            raise bad(f"tensor {key!r} has a malformed header entry {str(entry)[:200]}")
        if 8 + length + end > size:
            raise bad(f"tensor {key!r} ends at byte {8 + length + end}, past the file's end ({size} bytes); "
                      "the file looks truncated (a partial download?)")
        item = StoredTensor(path, key, shape, dtype_name, 8 + length + begin, end - begin)
        if dtype_name in SAFETENSORS_DTYPES and item.nbytes != item.meta().numel() * item.meta().element_size():
            raise bad(f"tensor {key!r} has {item.nbytes} bytes for shape {list(shape)} of {dtype_name}")
        index[key] = item
    return index


def open_state_dict(path: str | os.PathLike) -> dict[str, StoredTensor | torch.Tensor]:
    """A checkpoint's tensors by name, without reading a safetensors file's data: its tensors come
    as :class:`StoredTensor` (read them with :func:`read_stored`, a group at a time); other files
    are read as :func:`load_state_dict` reads them."""
    path = Path(path)
    return index_safetensors(path) if path.suffix.lower() in SAFETENSORS_SUFFIXES else load_state_dict(path)


def read_stored(items: Mapping[str, StoredTensor | torch.Tensor], *, copy: bool = False) -> dict[str, torch.Tensor]:
    """The tensors of ``items`` (a name for each); values that are already tensors pass through.

    ``copy=False``: views of one memory map of each file (no copy). A view keeps its map, with
    every page read through it, alive as long as it lives, and each opening counts the whole file
    in the address space: for tensors kept as they are, read together.

    ``copy=True``: tensors of their own, read with plain reads, no map at all: for a loader that
    converts what it reads (its memory then holds the converted model plus one group, never the
    file as well), and for files larger than the machine's memory, whose mapping can be refused.
    """
    out: dict[str, torch.Tensor] = {}
    by_file: dict[Path, list[tuple[str, StoredTensor]]] = {}
    for name, item in items.items():
        if isinstance(item, StoredTensor):
            by_file.setdefault(item.path, []).append((name, item))
        else:
            out[name] = item
    for path, group in by_file.items():
        try:
            if copy:
                with open(path, "rb") as f:
                    for name, item in group:
                        out[name] = _read_into(f, item)
            else:
                with safe_open(str(path), framework="pt") as f:
                    for name, item in group:
                        out[name] = f.get_tensor(item.key)
        except (SafetensorError, OSError, RuntimeError) as exc:
            raise CheckpointError(f"checkpoint {str(path)!r} is not a readable safetensors file: {exc}") from exc
    return out


def _read_into(f, item: StoredTensor) -> torch.Tensor:
    """One tensor's bytes read from the open file into memory of its own (little-endian, as stored)."""
    data = torch.empty(item.nbytes, dtype=torch.uint8)
    f.seek(item.start)
    if item.nbytes and f.readinto(memoryview(data.numpy())) != item.nbytes:
        raise OSError(f"tensor {item.key!r}: the file ended before its {item.nbytes} bytes")
    return data.view(item.dtype).reshape(item.shape)


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
