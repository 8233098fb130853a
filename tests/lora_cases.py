"""Random LoRAs in every HunyuanVideo LoRA layout, with their hand-merged weight deltas (tests)."""

from __future__ import annotations

import torch

from hunyuan.dit.keymap import to_comfy, to_diffusers

# layout: (names, key format, (up, down) suffixes, with alpha, the layout the node should report)
UP_DOWN, PEFT = (".lora_up.weight", ".lora_down.weight"), (".lora_B.weight", ".lora_A.weight")
FORMATS = {
    "comfy_diffusion_model": ("comfy", "diffusion_model.{}", UP_DOWN, True, "comfy"),
    "comfy_bare": ("comfy", "{}", PEFT, True, "comfy"),
    "comfy_lora_unet": ("comfy", "lora_unet_{_}", UP_DOWN, True, "comfy"),
    "diffusion_pipe": ("tencent", "transformer.{}", PEFT, False, "tencent"),
    "musubi_converted": ("tencent", "diffusion_model.{}", PEFT, False, "tencent"),
    "musubi": ("tencent", "lora_unet_{_}", UP_DOWN, True, "musubi"),
    "diffusers_peft": ("diffusers", "transformer.{}", PEFT, False, "diffusers"),
    "peft_save_pretrained": ("diffusers", "base_model.model.{}", PEFT, False, "diffusers"),
    "kohya_onetrainer": ("diffusers", "lora_transformer_{_}", UP_DOWN, True, "kohya"),
}

def layers(sd, names: str, select=lambda key: True) -> dict[str, tuple[str, torch.Tensor]]:
    """LoRA layer name (dots) -> (Tencent weight key, the Tencent rows its output covers)."""
    keys = [k for k, v in sd.items() if v.ndim == 2 and not k.startswith("txt_in.") and select(k)]
    if names == "tencent":
        return {k[:-7]: (k, torch.arange(sd[k].shape[0])) for k in keys}
    if names == "comfy":
        return {next(iter(to_comfy({k: 0})))[:-7]: (k, torch.arange(sd[k].shape[0])) for k in keys}
    probe = dict(sd)  # row numbers, tagged with the key they come from, pushed through the renames
    for i, k in enumerate(keys):
        probe[k] = (i * 1_000_000 + torch.arange(sd[k].shape[0], dtype=torch.float64))[:, None]
    out = {}
    for name, value in to_diffusers(probe).items():
        if value.dtype == torch.float64:
            tags = value[:, 0].long()
            out[name[: -len(".weight")]] = (keys[int(tags[0]) // 1_000_000], tags % 1_000_000)
    return out

def random_lora(sd, layout: str, seed=0, select=lambda key: True, rank0=2, fixed_rank: int | None = None):
    """(LoRA state dict in ``layout``, hand-merged deltas {Tencent key: delta at strength 1}).

    With ``sd`` on the meta device the factors are meta tensors too (real shapes, no memory) and
    there are no deltas.
    """
    names, fmt, (up, down), with_alpha, _ = FORMATS[layout]
    g = torch.Generator().manual_seed(seed)
    lora, deltas = {}, {}
    for i, (name, (key, rows)) in enumerate(sorted(layers(sd, names, select).items())):
        rank = fixed_rank or rank0 + i % 3  # ranks differ per layer
        alpha = float(rank) * 1.5 if with_alpha else float(rank)  # PEFT files carry no alpha: scale 1
        prefix = fmt.replace("{_}", name.replace(".", "_")) if "{_}" in fmt else fmt.format(name)
        if with_alpha:
            lora[prefix + ".alpha"] = torch.tensor(alpha)
        if sd[key].is_meta:
            lora[prefix + up] = torch.empty(len(rows), rank, device="meta")
            lora[prefix + down] = torch.empty(rank, sd[key].shape[1], device="meta")
            continue
        a = torch.randn(rank, sd[key].shape[1], generator=g) * 0.2
        b = torch.randn(len(rows), rank, generator=g) * 0.2
        lora[prefix + up], lora[prefix + down] = b, a
        delta = deltas.setdefault(key, torch.zeros_like(sd[key]))
        delta[rows] += (alpha / rank) * (b @ a)
    return lora, deltas
