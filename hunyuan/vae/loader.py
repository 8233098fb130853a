"""Loading the causal VAE from any of the layouts it is shipped in.

Accepted: the Tencent/diffusers file (``pytorch_model.pt`` / ``diffusion_pytorch_model.safetensors``),
the same wrapped in ``state_dict`` / ``module`` or prefixed with ``vae.`` / ``first_stage_model.``,
and the LDM-style names ComfyUI uses internally and saves. The shape of the model (widths,
layers per block, latent channels) is read from the weights; the model is built on the meta
device and the tensors are assigned, so no throw-away random initialisation is ever allocated.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping

import torch

from ..checkpoint_io import CheckpointError, load_state_dict, strip_prefix, unwrap
from .config import VAEConfig, groups_for
from .keys import comfy_to_diffusers, detect_layout
from .model import CausalVAE

log = logging.getLogger(__name__)

PREFIXES = ("vae.", "first_stage_model.", "model.vae.")


def _count(sd: Mapping[str, torch.Tensor], pattern: str) -> int:
    found = {int(m.group(1)) for k in sd if (m := re.match(pattern, k))}
    return max(found) + 1 if found else 0


def infer_config(sd: Mapping[str, torch.Tensor], name: str = "state dict") -> VAEConfig:
    """Read a :class:`VAEConfig` from a diffusers-layout state dict."""
    levels = _count(sd, r"encoder\.down_blocks\.(\d+)\.")
    needed = ["decoder.conv_in.conv.weight", "encoder.conv_in.conv.weight"]
    needed += [f"encoder.down_blocks.{i}.resnets.0.conv1.conv.weight" for i in range(max(levels, 1))]
    missing = [k for k in needed if k not in sd]
    if missing:
        raise CheckpointError(f"{name} is not a HunyuanVideo VAE: missing {', '.join(missing)}")
    chans = tuple(int(sd[f"encoder.down_blocks.{i}.resnets.0.conv1.conv.weight"].shape[0]) for i in range(levels))
    try:
        return VAEConfig(
            block_channels=chans,
            layers_per_block=_count(sd, r"encoder\.down_blocks\.0\.resnets\.(\d+)\."),
            latent_channels=int(sd["decoder.conv_in.conv.weight"].shape[1]),
            image_channels=int(sd["encoder.conv_in.conv.weight"].shape[1]),
            norm_groups=groups_for(chans),
            spatial_ratio=8,  # "884": a file with another depth is not this VAE
            mid_attention="decoder.mid_block.attentions.0.to_q.weight" in sd,
        )
    except ValueError as exc:
        raise CheckpointError(f"{name}: the weights describe an unsupported VAE shape: {exc}") from exc


def to_diffusers_layout(sd: Mapping[str, object], name: str = "state dict") -> dict[str, torch.Tensor]:
    """Unwrap, strip prefixes and rename into the diffusers layout; raise if not this VAE."""
    sd = strip_prefix(unwrap(sd), PREFIXES)
    layout = detect_layout(sd)
    if layout is None:
        sample = ", ".join(sorted(sd)[:5]) or "no keys"
        raise CheckpointError(
            f"{name} is not a HunyuanVideo VAE: no key 'decoder.up_blocks.0.resnets.0.norm1.weight' "
            f"(diffusers/Tencent) or 'decoder.mid.block_1.norm1.weight' (ComfyUI); first keys: {sample}"
        )
    log.debug("%s: VAE layout %s", name, layout)
    return comfy_to_diffusers(sd) if layout == "comfy" else dict(sd)


def load_vae(
    source: str | os.PathLike | Mapping[str, object],
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> CausalVAE:
    """Build a :class:`CausalVAE` from a file path or an in-memory state dict."""
    name = repr(str(source)) if isinstance(source, (str, os.PathLike)) else "VAE state dict"
    raw = load_state_dict(source) if isinstance(source, (str, os.PathLike)) else source
    sd = to_diffusers_layout(raw, name)
    cfg = infer_config(sd, name)
    with torch.device("meta"):
        model = CausalVAE(cfg)
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd]
    if missing:
        shown = ", ".join(missing[:8]) + (f" (+{len(missing) - 8} more)" if len(missing) > 8 else "")
        raise CheckpointError(f"{name} is missing {len(missing)} VAE tensors for {cfg}: {shown}")
    for key, ref in expected.items():
        if tuple(sd[key].shape) != tuple(ref.shape):
            raise CheckpointError(
                f"{name}: tensor {key} has shape {tuple(sd[key].shape)}, expected {tuple(ref.shape)}"
            )
    extra = sorted(set(sd) - set(expected))
    if extra:
        log.info("%s: ignoring %d tensors that are not part of the VAE (e.g. %s)", name, len(extra), extra[0])
    weights = {k: sd[k].to(device=device, dtype=dtype) for k in expected}
    model.load_state_dict(weights, assign=True)
    return model.eval().requires_grad_(False)
