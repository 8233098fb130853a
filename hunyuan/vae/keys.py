"""The VAE's on-disk key layouts and the conversions between them.

Two layouts exist for the same weights:

* "diffusers" -- the Tencent release and diffusers' ``AutoencoderKLHunyuanVideo`` (identical
  names): ``decoder.up_blocks.{i}.resnets.{j}``, ``mid_block.attentions.0.to_q`` (Linear).
* "comfy" -- what ComfyUI builds and saves (LDM-style): ``decoder.up.{n-1-i}.block.{j}`` (up
  levels numbered from the full-resolution end), ``down.{i}.block.{j}``, ``mid.block_1/2``,
  ``mid.attn_1.{norm,q,k,v,proj_out}`` (1x1x1 Conv3d weights), ``nin_shortcut``, ``norm_out``.

Our model uses the diffusers names, so loading a ComfyUI file means renaming into them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

DIFFUSERS_MARKER = "decoder.up_blocks.0.resnets.0.norm1.weight"
COMFY_MARKER = "decoder.mid.block_1.norm1.weight"

# The renames as (comfy, diffusers) templates: literal text, an optional "^" anchor and at most one
# "{slot}" standing for a number. Every pair that matches is applied, in this order, and both
# directions come from this one table. A slot's number is kept, except: {up} counts the decoder's
# up levels from the other end, {mid} counts the mid-block resnets from 1 in ComfyUI, 0 in diffusers.
_PAIRS: list[tuple[str, str]] = [
    (".nin_shortcut.", ".conv_shortcut."),
    (".norm_out.", ".conv_norm_out."),
    ("^encoder.down.{n}.block.", "^encoder.down_blocks.{n}.resnets."),
    ("^encoder.down.{n}.downsample.", "^encoder.down_blocks.{n}.downsamplers.0."),
    ("^decoder.up.{up}.block.", "^decoder.up_blocks.{up}.resnets."),
    ("^decoder.up.{up}.upsample.", "^decoder.up_blocks.{up}.upsamplers.0."),
    (".mid.block_{mid}.", ".mid_block.resnets.{mid}."),
    (".mid.attn_1.norm.", ".mid_block.attentions.0.group_norm."),
    (".mid.attn_1.q.", ".mid_block.attentions.0.to_q."),
    (".mid.attn_1.k.", ".mid_block.attentions.0.to_k."),
    (".mid.attn_1.v.", ".mid_block.attentions.0.to_v."),
    (".mid.attn_1.proj_out.", ".mid_block.attentions.0.to_out.0."),
]
# slot -> (ComfyUI number -> diffusers number, the inverse), given the number of up levels
_NUMBERS = {
    "n": (lambda n, levels: n, lambda n, levels: n),
    "up": (lambda n, levels: levels - 1 - n, lambda n, levels: levels - 1 - n),
    "mid": (lambda n, levels: n - 1, lambda n, levels: n + 1),
}
# the mid-block attention's q/k/v/out: Linear in diffusers, 1x1x1 Conv3d in ComfyUI
_LINEAR_ATTN = re.compile(r"\.mid_block\.attentions\.0\.(to_q|to_k|to_v|to_out\.0)\.weight$")


def _rule(src: str, dst: str, to_diffusers: bool):
    """(regex, replacement template, slot, number conversion) for one direction of a pair."""
    slot = re.search(r"\{(\w+)\}", src)
    name = slot.group(1) if slot else None
    pattern = ("^" if src.startswith("^") else "") + re.escape(src.removeprefix("^"))
    if name:
        pattern = pattern.replace(re.escape("{" + name + "}"), r"(\d+)")
    convert = _NUMBERS[name][0 if to_diffusers else 1] if name else None
    return re.compile(pattern), dst.removeprefix("^"), name, convert


_TO_DIFFUSERS = [_rule(c, d, True) for c, d in _PAIRS]
_TO_COMFY = [_rule(d, c, False) for c, d in _PAIRS]


def _rename(key: str, rules, levels: int) -> str:
    for pattern, template, name, convert in rules:
        found = pattern.search(key)
        if found:
            new = template.replace("{" + name + "}", str(convert(int(found.group(1)), levels))) if name else template
            key = key[: found.start()] + new + key[found.end():]
    return key


def detect_layout(sd: Mapping[str, torch.Tensor]) -> str | None:
    """'diffusers', 'comfy', or None when neither VAE layout is recognised."""
    if DIFFUSERS_MARKER in sd:
        return "diffusers"
    if COMFY_MARKER in sd or any(k.startswith("decoder.up.0.block.") for k in sd):
        return "comfy"
    return None


def _levels(sd: Mapping[str, torch.Tensor], pattern: str) -> int:
    found = [int(m.group(1)) for k in sd if (m := re.match(pattern, k))]
    return max(found) + 1 if found else 0


def comfy_to_diffusers(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a ComfyUI (LDM-style) HunyuanVideo VAE state dict into the diffusers layout."""
    levels = _levels(sd, r"decoder\.up\.(\d+)\.")
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        new = _rename(key, _TO_DIFFUSERS, levels)
        if _LINEAR_ATTN.search(new) and value.ndim > 2:
            value = value.reshape(value.shape[0], value.shape[1])
        out[new] = value
    return out


def diffusers_to_comfy(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a diffusers-layout state dict into the names ComfyUI's own VAE uses."""
    levels = _levels(sd, r"decoder\.up_blocks\.(\d+)\.")
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if _LINEAR_ATTN.search(key):
            value = value.reshape(*value.shape, 1, 1, 1)
        out[_rename(key, _TO_COMFY, levels)] = value
    return out
