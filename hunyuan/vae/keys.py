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
_ATTN_TO_COMFY = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_ATTN_FROM_COMFY = {v: k for k, v in _ATTN_TO_COMFY.items()}
_LINEAR_ATTN = ("to_q", "to_k", "to_v", "to_out.0")


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
        new = key.replace("nin_shortcut", "conv_shortcut").replace("norm_out", "conv_norm_out")
        new = re.sub(r"^encoder\.down\.(\d+)\.block\.", r"encoder.down_blocks.\1.resnets.", new)
        new = re.sub(r"^encoder\.down\.(\d+)\.downsample\.", r"encoder.down_blocks.\1.downsamplers.0.", new)
        new = re.sub(
            r"^decoder\.up\.(\d+)\.(block|upsample)\.",
            lambda m: f"decoder.up_blocks.{levels - 1 - int(m.group(1))}."
            + ("resnets." if m.group(2) == "block" else "upsamplers.0."),
            new,
        )
        new = re.sub(r"\.mid\.block_(\d)\.", lambda m: f".mid_block.resnets.{int(m.group(1)) - 1}.", new)
        attn = re.match(r"^(encoder|decoder)\.mid\.attn_1\.(norm|q|k|v|proj_out)\.(weight|bias)$", new)
        if attn:
            part = _ATTN_FROM_COMFY[attn.group(2)]
            new = f"{attn.group(1)}.mid_block.attentions.0.{part}.{attn.group(3)}"
            if part in _LINEAR_ATTN and value.ndim > 2:
                value = value.reshape(value.shape[0], value.shape[1])
        out[new] = value
    return out


def diffusers_to_comfy(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a diffusers-layout state dict into the names ComfyUI's own VAE uses."""
    levels = _levels(sd, r"decoder\.up_blocks\.(\d+)\.")
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        new = key.replace("conv_shortcut", "nin_shortcut").replace("conv_norm_out", "norm_out")
        new = re.sub(r"^encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", new)
        new = re.sub(r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", new)
        new = re.sub(
            r"^decoder\.up_blocks\.(\d+)\.(resnets|upsamplers\.0)\.",
            lambda m: f"decoder.up.{levels - 1 - int(m.group(1))}."
            + ("block." if m.group(2) == "resnets" else "upsample."),
            new,
        )
        new = re.sub(r"\.mid_block\.resnets\.(\d)\.", lambda m: f".mid.block_{int(m.group(1)) + 1}.", new)
        attn = re.match(r"^(encoder|decoder)\.mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.(weight|bias)$", new)
        if attn:
            new = f"{attn.group(1)}.mid.attn_1.{_ATTN_TO_COMFY[attn.group(2)]}.{attn.group(3)}"
            if attn.group(2) in _LINEAR_ATTN and attn.group(3) == "weight":
                value = value.reshape(*value.shape, 1, 1, 1)
        out[new] = value
    return out
