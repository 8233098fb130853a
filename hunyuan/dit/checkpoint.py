"""Loading a DiT checkpoint in any of the known layouts, without ever holding two copies.

Accepted: Tencent bare keys (``.safetensors``, or ``.pt`` holding ``{"module": ...}``), ComfyUI
files (``model.diffusion_model.`` / ``model.model.`` prefixes, Tencent or ComfyUI-internal names),
diffusers ``HunyuanVideoTransformer3DModel`` weights, and fp8 (e4m3fn) weights, either plain or
with per-tensor scales: Tencent ships them next to the weights as ``<name>_map.pt`` (a dict from
Linear module name, e.g. ``double_blocks.0.img_attn_qkv``, to its scale); ComfyUI "scaled fp8"
files carry ``<module>.scale_weight`` tensors. fp8 weights stay fp8 in memory and are upcast to
the compute dtype one layer at a time.

The model is built on the meta device from the file's header (layout, config, key check on meta
tensors); the weights are then read one block at a time and cast, as copies (never views of the
file's memory map), so loading holds the model plus one block. A state dict given in memory is
assigned, not copied, where no cast is needed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from ..checkpoint_io import (
    CheckpointError,
    StoredTensor,
    load_state_dict,
    open_state_dict,
    read_stored,
    shard_files,
    strip_prefix,
    unwrap,
)
from ..ops import DefaultOps, Operations
from .config import DiTConfig, infer_config
from .keymap import PREFIXES, detect_layout, to_tencent
from .model import HunyuanVideoDiT

log = logging.getLogger(__name__)

FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
OPS_SCALE_SUFFIX = ".scale_weight"  # ComfyUI's scaled fp8 files, and where its scaled fp8 Linear keeps it
SCALE_SUFFIXES = (OPS_SCALE_SUFFIX, ".weight_scale")
FP8_MAP_SUFFIX = "_map.pt"


def _read(src, source: str) -> dict[str, torch.Tensor | StoredTensor]:
    """The checkpoint's tensors by name. safetensors files are only indexed here (their tensors
    are read a block at a time by :func:`_stream`); ``.pt`` files are memory-mapped whole."""
    if isinstance(src, Mapping):
        sd = dict(src)
    else:
        sd = {}
        for part in shard_files(Path(src)):
            sd.update(open_state_dict(part))
    sd = unwrap(sd)
    return strip_prefix(sd, PREFIXES)


BLOCK_KEY = re.compile(r"^((?:single_)?(?:double_blocks|single_blocks|transformer_blocks)\.\d+)\.")


def _by_block(keys) -> list[list[str]]:
    """``keys`` grouped by DiT block (every layout numbers its blocks), the rest in one group:
    a fused tensor's parts (diffusers' q/k/v, ...) are always in the same group."""
    groups: dict[str, list[str]] = {}
    for key in keys:
        match = BLOCK_KEY.match(key)
        groups.setdefault(match.group(1) if match else "", []).append(key)
    return list(groups.values())


def _meta(value: torch.Tensor | StoredTensor) -> torch.Tensor:
    return value.meta() if isinstance(value, StoredTensor) else torch.empty_like(value, device="meta")


def _stream(model, sd: dict, layout: str, **cast) -> dict[str, torch.Tensor]:
    """Read, rename and cast ``sd`` one block at a time (each tensor dropped from ``sd`` once
    cast), so loading holds the finished model plus one block, not the file as well.

    A safetensors block is read into memory of its own (no map of the file, which a machine with
    less memory than the 25.6 GB bf16 file refuses). Tensors already in memory, and a ``.pt``
    file's tensors (views of the one map ``torch.load(mmap=True)`` makes of it), are assigned as
    they are where no cast is needed: Tencent's fp8 ``.pt`` loaded as fp8 stays in the page cache."""
    out = {}
    for keys in _by_block(list(sd)):
        part = to_tencent(read_stored({k: sd.pop(k) for k in keys}, copy=True), layout)
        out.update(_place(model, part, **cast))
    return out


def fp8_map_path(path: Path) -> Path:
    """Tencent's scale file for ``x.pt`` is ``x_map.pt`` (``mp_rank_00_model_states_fp8_map.pt``)."""
    return path.with_name(path.stem + FP8_MAP_SUFFIX)


def _split_scales(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Pop per-layer scale tensors (``<module>.scale_weight``) and the ``scaled_fp8`` marker."""
    scales = {}
    for key in [k for k in sd if k.endswith(SCALE_SUFFIXES)]:
        scales[key.rsplit(".", 1)[0]] = sd.pop(key)
    sd.pop("scaled_fp8", None)
    return scales


def _read_scale_map(path: Path | None, scale_map) -> dict[str, torch.Tensor]:
    if isinstance(scale_map, Mapping):
        return {k: torch.as_tensor(v) for k, v in scale_map.items()}
    candidate = Path(scale_map) if scale_map is not None else (fp8_map_path(path) if path else None)
    if candidate is None or not candidate.is_file():
        if scale_map is not None:
            raise CheckpointError(f"fp8 scale map {str(candidate)!r} does not exist")
        return {}
    raw = unwrap(load_state_dict(candidate))
    log.info("DiT: using fp8 scale map %s (%d entries)", candidate, len(raw))
    return {k: torch.as_tensor(v) for k, v in raw.items()}


def _is_block_linear_weight(model: HunyuanVideoDiT, key: str) -> bool:
    return key.startswith(("double_blocks.", "single_blocks.")) and key.endswith(".weight") and (
        isinstance(model.get_submodule(key.rsplit(".", 1)[0]), torch.nn.Linear)
    )


def _place(model, sd, *, device, dtype, weight_dtype) -> dict[str, torch.Tensor]:
    """Cast each tensor to what it should be stored as, one at a time, onto ``device`` (no copy
    where it already is)."""
    out = {}
    for key in list(sd):
        t = sd.pop(key)
        if key.endswith(OPS_SCALE_SUFFIX):
            target = torch.float32
        elif t.dtype in FP8_DTYPES and key.endswith(".weight") and t.ndim == 2:
            target = t.dtype  # keep fp8 storage as shipped
        elif weight_dtype in FP8_DTYPES and _is_block_linear_weight(model, key):
            target = weight_dtype
        else:
            target = dtype
        out[key] = t.to(device=device, dtype=target)
    return out


def _check_keys(model, sd, source: str, layout: str) -> None:
    expected = set(model.state_dict().keys())
    missing, unexpected = sorted(expected - set(sd)), sorted(set(sd) - expected)
    if missing or unexpected:
        raise CheckpointError(
            f"{source} ({layout} layout) does not match a HunyuanVideo DiT of the inferred config: "
            f"missing {missing[:8]}{'...' if len(missing) > 8 else ''}, "
            f"unexpected {unexpected[:8]}{'...' if len(unexpected) > 8 else ''}"
        )


def _scale_shape(scale: torch.Tensor, module, name: str, source: str) -> torch.Tensor:
    """A per-tensor scale becomes a scalar; a per-output-row scale [out] becomes [out, 1]."""
    if scale.numel() == 1:
        return scale.reshape(())
    if scale.numel() == module.weight.shape[0]:
        return scale.reshape(-1, 1)
    raise CheckpointError(
        f"{source}: fp8 scale for {name!r} has shape {tuple(scale.shape)}, expected one value "
        f"or one per output row ({module.weight.shape[0]})"
    )


def _scales_as_parameters(model, sd, scales: dict[str, torch.Tensor], source: str) -> None:
    """Operations whose Linear keeps its scale as a ``scale_weight`` parameter (ComfyUI's scaled
    fp8 ops) load it with the weights: one value per layer, 1 for layers the file has none for."""
    for key in model.state_dict():
        if key.endswith(OPS_SCALE_SUFFIX):
            name = key[: -len(OPS_SCALE_SUFFIX)]
            scale = scales.pop(name, None)
            if scale is not None and scale.numel() != 1:
                raise CheckpointError(
                    f"{source}: fp8 scale for {name!r} has shape {tuple(scale.shape)}; the chosen operations "
                    "take one value per layer (load it with the pack's default operations)"
                )
            sd[key] = torch.ones(()) if scale is None else scale.reshape(())


def _attach_scales(model, scales: dict[str, torch.Tensor], *, device, source: str) -> None:
    """Scales for the pack's own :class:`~hunyuan.ops.Linear`, kept in its ``weight_scale``."""
    for name, scale in scales.items():
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise CheckpointError(f"{source}: fp8 scale given for {name!r}, which is not a layer of the DiT") from None
        if "weight_scale" not in module._buffers:
            raise CheckpointError(f"{source}: {name!r} has an fp8 scale, but its layer class "
                                  f"{type(module).__qualname__} takes none (choose scaled-fp8 operations)")
        module.weight_scale = _scale_shape(scale.to(device=device, dtype=torch.float32), module, name, source)
    if scales:
        log.info("DiT: %d fp8 layers carry a per-tensor scale", len(scales))


ROPE_CONFIG_KEYS = ("rope_axes_dim", "rope_dim_list")  # diffusers' config.json, Tencent's argument name


def _with_rope_split(config: DiTConfig, path: Path | None, source: str) -> DiTConfig:
    """The RoPE split of each head: from a ``config.json`` beside the weights when it has one
    (diffusers' ``rope_axes_dim``), else the released model's for head width 128, else a guess
    that is logged. The weights themselves do not record it."""
    settings = path.parent / "config.json" if path is not None else None
    if settings is not None and settings.is_file():
        try:
            values = json.loads(settings.read_text())
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{settings} beside {source} is not readable JSON: {exc}") from None
        axes = next((values[k] for k in ROPE_CONFIG_KEYS if isinstance(values, dict) and k in values), None)
        if axes is not None:
            try:
                return dataclasses.replace(config, rope_axes=tuple(int(a) for a in axes))
            except (TypeError, ValueError) as exc:
                raise CheckpointError(f"{settings}: RoPE split {axes!r} does not fit this DiT: {exc}") from None
    if config.head_dim != 128:
        log.warning("DiT %s: head width %d, RoPE split (t, h, w) = %s guessed (the weights do not store it); put "
                    "the model's config.json with rope_axes_dim beside the weights to set it",
                    source, config.head_dim, config.rope_axes)
    return config


@dataclass(frozen=True)
class StoredWeights:
    """What a checkpoint holds, known before the model is built: the caller picks operations by it.

    weight_dtype: storage dtype of the block Linear weights; compute_dtype: of the activations;
    scales: ``"none"``, ``"per_layer"`` (one fp8 scale per Linear) or ``"per_row"`` (per output row).
    """

    weight_dtype: torch.dtype
    compute_dtype: torch.dtype
    scales: str


def _stored(sd, scales, dtype, weight_dtype) -> StoredWeights:
    fp8 = next((t.dtype for t in sd.values() if t.dtype in FP8_DTYPES), weight_dtype)
    kind = "none" if not scales else "per_layer" if all(s.numel() == 1 for s in scales.values()) else "per_row"
    return StoredWeights(fp8 if fp8 in FP8_DTYPES else dtype, dtype, kind)


def _open(src) -> tuple[Path | None, str, dict, str]:
    """(path or None, how to name it in errors, its tensors by name, its layout)."""
    path = None if isinstance(src, Mapping) else Path(src)
    source = "state dict" if path is None else f"checkpoint {str(path)!r}"
    sd = _read(src, source)
    layout = detect_layout(sd)
    if layout == "unknown":
        raise CheckpointError(
            f"{source} is not a HunyuanVideo DiT: none of img_in./double_blocks./txt_in. "
            f"(Tencent), x_embedder./transformer_blocks. (diffusers) found; first keys: {sorted(sd)[:5]}"
        )
    return path, source, sd, layout


def _meta_config(sd: dict, layout: str, path: Path | None, source: str) -> tuple[dict, DiTConfig]:
    """The tensors (scales already split off) as meta tensors under Tencent's names, and the config."""
    meta = to_tencent({k: _meta(v) for k, v in sd.items()}, layout)  # names and shapes, no data
    return meta, _with_rope_split(infer_config(meta, source=source), path, source)


def read_config(src: str | os.PathLike | Mapping[str, torch.Tensor]) -> DiTConfig:
    """The config of the DiT in ``src`` (a file or a state dict) from its names and shapes alone:
    no weight is read (e.g. to plan block swap before loading)."""
    path, source, sd, layout = _open(src)
    _split_scales(sd)
    return _meta_config(sd, layout, path, source)[1]


def load_dit(
    src: str | os.PathLike | Mapping[str, torch.Tensor],
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.bfloat16,
    weight_dtype: torch.dtype | None = None,
    scale_map: str | os.PathLike | Mapping | None = None,
    operations: Operations | Callable[[StoredWeights], Operations | None] | None = None,
) -> HunyuanVideoDiT:
    """Build a :class:`HunyuanVideoDiT` from a file or state dict in any supported layout.

    dtype: compute dtype (and storage dtype of every non-fp8 tensor). weight_dtype: set to
    ``torch.float8_e4m3fn`` to store the block Linear weights as fp8 (upcast per layer when used).
    scale_map: fp8 per-tensor scales (path or dict); by default ``<file>_map.pt`` is used if present.
    operations: the layer classes (default :class:`~hunyuan.ops.DefaultOps`), or a function that
    picks them from the :class:`StoredWeights` found (None from it = the defaults).
    """
    path, source, sd, layout = _open(src)
    scales = read_stored(_split_scales(sd), copy=True)
    meta, config = _meta_config(sd, layout, path, source)
    if any(t.dtype in FP8_DTYPES for t in meta.values()):
        scales.update(_read_scale_map(path, scale_map))
    if operations is not None and not hasattr(operations, "Linear"):
        operations = operations(_stored(meta, scales, dtype, weight_dtype))
    with torch.device("meta"):
        model = HunyuanVideoDiT(config, dtype=dtype, operations=operations or DefaultOps)
    scale_params: dict[str, torch.Tensor] = {}  # scales the chosen operations keep as parameters
    _scales_as_parameters(model, scale_params, scales, source)
    _check_keys(model, {**meta, **scale_params}, source, layout)
    placed = _stream(model, sd, layout, device=device, dtype=dtype, weight_dtype=weight_dtype)
    placed.update(_place(model, scale_params, device=device, dtype=dtype, weight_dtype=weight_dtype))
    model.load_state_dict(placed, assign=True)
    _attach_scales(model, scales, device=device, source=source)
    model.compute_dtype = dtype
    model.eval().requires_grad_(False)
    log.info("DiT: loaded %s (%s layout, hidden %d, %d+%d blocks; %s)", source, layout,
             config.hidden_size, config.depth_double, config.depth_single, config.describe())
    return model
