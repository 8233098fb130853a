"""Reading checkpoint files safely.

Every loader in the pack reads through :func:`load_state_dict` or :func:`open_state_dict`:
:func:`open_state_dict` reads only a safetensors file's header, and :func:`read_stored` its
tensors later, a group at a time (as views of the file's memory map, or as copies read with plain
reads, which map nothing); pickle-based files (``.pt``, ``.pth``, ``.bin``, ``.ckpt``) are only
read with ``torch.load(weights_only=True)``, which refuses to run code hidden in a pickle.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import pickle
import re
import struct
import zipfile
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


def _memory_notes(size: int | None = None) -> tuple[int, list[str]]:
    """The host memory available and what to say about it: that figure, whether it is less than
    ``size`` (a file to map), and this process's address-space limit (ulimit -v) where one is set
    (none without the ``resource`` module: Windows)."""
    from .memory import device_free_bytes  # the one figure for the host memory left

    available = device_free_bytes("cpu")
    notes = [f"{available / 2**30:.2f} GiB of memory available"]
    if size is not None and available < size:
        notes.append("less than the file; without enough swap the kernel refuses the map")
    try:
        import resource
    except ImportError:
        return available, notes
    limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    if limit != resource.RLIM_INFINITY:
        notes.append(f"this process's address space is limited to {limit / 2**30:.2f} GiB (ulimit -v)")
    return available, notes


class MapRefused(CheckpointError):
    """The machine refused to memory-map a checkpoint: a map counts the whole file, and without
    enough memory plus swap for it (or under an address-space limit) the kernel says no."""

    def __init__(self, path: Path, advice: str):
        self.path, self.size = path, path.stat().st_size
        self.available, why = _memory_notes(self.size)
        super().__init__(
            f"checkpoint {str(path)!r} ({self.size / 2**30:.2f} GiB) cannot be memory-mapped: the system refused "
            f"a map that large ({'; '.join(why)}). {advice}"
        )


class HostMemoryError(CheckpointError):
    """Host memory ran out while a checkpoint's tensors were read into memory of their own: the
    memory is named, not the file (which is fine)."""

    def __init__(self, path: Path, name: str, nbytes: int):
        self.path = path
        self.available, why = _memory_notes()
        super().__init__(
            f"checkpoint {str(path)!r}: out of host memory while reading tensor {name!r} ({nbytes / 2**20:.0f} MiB; "
            f"{'; '.join(why)}). The file is readable; free memory (unload other models) or load fewer or smaller "
            "weights."
        )


def _out_of_memory(exc: BaseException) -> bool:
    """An allocation failure: MemoryError, torch's CPU allocator refusing (a RuntimeError: "can't
    allocate memory" on Linux and macOS, "not enough memory" on Windows), or a read failing with ENOMEM."""
    text = str(exc).lower()
    return (isinstance(exc, MemoryError) or getattr(exc, "errno", None) == errno.ENOMEM
            or "can't allocate memory" in text or "not enough memory" in text)


def _refused_map(exc: BaseException) -> bool:
    """Whether ``exc`` is the kernel refusing a memory map (ENOMEM), as torch and safetensors report it."""
    return isinstance(exc, MemoryError) or "Cannot allocate memory" in str(exc)


# name-0000K-of-0000N.safetensors: the shards Hugging Face's save_pretrained writes for large models
SHARD_NAME = re.compile(r"^(?P<stem>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.safetensors$")


def _all_present(folder: Path, names: list[str], what: str, where: str = "") -> list[Path]:
    """``folder / name`` for each of ``names``; a missing one is an error naming it, and so is a
    name that is not a plain file name (a model folder's index is data from whoever made it: a
    shard named ``../x`` or ``/x`` would read a file outside the folder the owner chose)."""
    outside = [n for n in names if not isinstance(n, str) or Path(n).name != n or n in ("", ".", "..")]
    if outside:
        raise CheckpointError(f"{what}, but {', '.join(map(repr, outside))} is not a file name inside {folder}{where}; "
                              "expected plain shard file names (e.g. model-00001-of-00002.safetensors)")
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
            if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
                raise TypeError("expected a mapping of tensor names to shard file names")
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
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
    start: int  # where its bytes begin in the file
    nbytes: int

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


MAX_HEADER = 100_000_000  # the safetensors library's limit on a header's size
MAX_DIMS = 64
# bytes per element of each dtype name a safetensors header may carry (the pack reads fewer)
ITEM_SIZE = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
             "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


def _count(value) -> bool:
    return type(value) is int and 0 <= value < 2**63


def _unique(pairs: list[tuple[str, object]]) -> dict:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"duplicate names in the header: {sorted({k for k in keys if keys.count(k) > 1})[:5]}")
    return dict(pairs)


def index_safetensors(path: str | os.PathLike) -> dict[str, StoredTensor]:
    """Every tensor of a safetensors file as a :class:`StoredTensor`, from its header alone, read
    with plain reads (a machine can refuse to map a file larger than its memory) and checked as
    strictly as the safetensors library checks it: the tensors must tile the data exactly, so
    no header can make a small file claim more bytes than it holds."""
    path = Path(path)
    _check_file(path)
    size = path.stat().st_size

    def bad(why: str) -> CheckpointError:
        return CheckpointError(f"checkpoint {str(path)!r} is not a readable safetensors file: {why}")

    try:
        with open(path, "rb") as f:
            head = f.read(8)
            length = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
            text = f.read(length) if 2 <= length <= min(MAX_HEADER, size - 8) else None
    except OSError as exc:
        raise bad(f"{exc.__class__.__name__}: {exc}") from exc
    if text is None:
        raise bad(f"its header length {length} does not fit the file ({size} bytes)")
    try:
        header = json.loads(text.decode("utf-8"), object_pairs_hook=_unique)
    except (ValueError, RecursionError) as exc:  # also UnicodeDecodeError, JSONDecodeError
        raise bad(f"its header is not JSON: {exc.__class__.__name__}: {str(exc)[:200]}") from exc
    if not isinstance(header, dict):
        raise bad("its header is not a JSON object")
    data_size = size - 8 - length
    index, spans = {}, []
    for key, entry in header.items():
        if key == "__metadata__":
            if not isinstance(entry, dict) or not all(isinstance(v, str) for v in entry.values()):
                raise bad("its __metadata__ is not a map of strings")
            continue
        entry = entry if isinstance(entry, dict) else {}
        dtype_name, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if not (isinstance(dtype_name, str) and isinstance(shape, list) and len(shape) <= MAX_DIMS
                and all(map(_count, shape)) and isinstance(offsets, list) and len(offsets) == 2
                and all(map(_count, offsets)) and offsets[0] <= offsets[1]):
            raise bad(f"tensor {key!r} has a malformed header entry {str(entry)[:200]}")
        begin, end = offsets
        if end > data_size:
            raise bad(f"tensor {key!r} ends at byte {8 + length + end}, past the file's end ({size} bytes); "
                      "the file looks truncated (a partial download?)")
        if dtype_name in ITEM_SIZE and end - begin != math.prod(shape) * ITEM_SIZE[dtype_name]:
            raise bad(f"tensor {key!r} has {end - begin} bytes for shape {shape} of {dtype_name}")
        spans.append((begin, end, key))
        index[key] = StoredTensor(path, key, tuple(shape), dtype_name, 8 + length + begin, end - begin)
    position = 0
    for begin, end, key in sorted(spans):
        if begin != position:
            raise bad(f"tensor {key!r} starts at data byte {begin}, expected {position} (tensors overlap or leave "
                      "a gap)")
        position = end
    if position != data_size:
        raise bad(f"its tensors end at data byte {position}, but it holds {data_size} data bytes")
    return index


def open_state_dict(path: str | os.PathLike) -> dict[str, StoredTensor | torch.Tensor]:
    """A checkpoint's tensors by name, without reading a safetensors file's data: its tensors come
    as :class:`StoredTensor` (read them with :func:`read_stored`, a group at a time); other files
    are read as :func:`load_state_dict` reads them."""
    path = Path(path)
    return index_safetensors(path) if path.suffix.lower() in SAFETENSORS_SUFFIXES else load_state_dict(path)


def read_stored(items: Mapping[str, StoredTensor | torch.Tensor], *, copy: bool = False) -> dict[str, torch.Tensor]:
    """The tensors of ``items`` (a name for each); values that are already tensors (a ``.pt``
    file's, views of its map) pass through as they are, whatever ``copy`` says.

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
        reading = None  # (name, bytes) of the tensor being read with plain reads
        try:
            if copy:
                with open(path, "rb") as f:
                    for name, item in group:
                        reading = (name, item.nbytes)
                        out[name] = _read_into(f, item)
            else:
                with safe_open(str(path), framework="pt") as f:
                    for name, item in group:
                        out[name] = f.get_tensor(item.key)
        except (SafetensorError, OSError, RuntimeError, MemoryError) as exc:
            if not copy and _refused_map(exc):
                raise MapRefused(path, "Read it with plain reads instead (a loader that converts the tensors "
                                 "does), or free memory, or add swap.") from exc
            if copy and reading is not None and _out_of_memory(exc):  # the memory, not the file: say so
                raise HostMemoryError(path, *reading) from exc
            if isinstance(exc, MemoryError):
                raise
            raise CheckpointError(f"checkpoint {str(path)!r} is not a readable safetensors file: {exc}") from exc
    return out


def _read_into(f, item: StoredTensor) -> torch.Tensor:
    """One tensor's bytes read from the open file into memory of its own (the file's byte order,
    little-endian, taken as it is: torch runs on little-endian machines)."""
    dtype = item.dtype  # an unreadable dtype is refused before anything is allocated
    data = torch.empty(item.nbytes, dtype=torch.uint8)
    f.seek(item.start)
    if item.nbytes and f.readinto(memoryview(data.numpy())) != item.nbytes:
        raise OSError(f"tensor {item.key!r}: the file ended before its {item.nbytes} bytes")
    return data.view(dtype).reshape(item.shape)


def _load_pickle(path: Path, device) -> dict[str, torch.Tensor]:
    """A zip-format ``.pt`` (what torch has written since 1.6) is memory-mapped; an older one
    cannot be and is read whole. A map refused for its size is an error, never a whole read."""
    mapped = zipfile.is_zipfile(path)
    try:
        if mapped:
            obj = torch.load(str(path), map_location=device, weights_only=True, mmap=True)
        else:
            obj = torch.load(str(path), map_location=device, weights_only=True)
    except Exception as exc:  # never retried unsafely
        raise _read_error(path, exc, mapped) from exc
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"checkpoint {str(path)!r} holds a {type(obj).__name__}, expected a dict of tensors")
    return dict(obj)


def _read_error(path: Path, exc: Exception, mapped: bool) -> CheckpointError:
    """A refusal by the weights-only unpickler says so; a damaged file is not blamed on pickle
    safety; running out of memory is a refused map only when the file was being mapped."""
    if isinstance(exc, pickle.UnpicklingError):
        return CheckpointError(
            f"checkpoint {str(path)!r} was refused by torch.load(weights_only=True): {exc}. "
            "Only plain tensors are accepted; convert the file to .safetensors."
        )
    if _refused_map(exc):
        if mapped:
            return MapRefused(path, "Convert it to .safetensors, which the pack reads a block at a time, or add swap.")
        return CheckpointError(f"checkpoint {str(path)!r} ({path.stat().st_size / 2**30:.2f} GiB, an old non-zip .pt "
                               f"read whole) does not fit in the memory available: {exc}. Convert it to .safetensors, "
                               "which the pack reads a block at a time.")
    return CheckpointError(
        f"checkpoint {str(path)!r} ({path.stat().st_size} bytes) cannot be read; it looks truncated or damaged "
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
