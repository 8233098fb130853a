"""The real 13B preset has exactly the tensors of diffusers' and ComfyUI's real-config models.

All three are built on the meta device (no memory); each peer's state dict is mapped to our
(Tencent) layout with the loader's own key maps. Equal keys and shapes mean a real file in any
of the three layouts loads into our module.
"""

from __future__ import annotations

import torch

from hunyuan.dit import REAL, HunyuanVideoDiT, infer_config
from hunyuan.dit.keymap import detect_layout, from_comfy, from_diffusers


def shapes(sd) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in sd.items()}


def ours_real() -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        return shapes(HunyuanVideoDiT(REAL).state_dict())


def test_real_preset_matches_diffusers_real_config():
    from diffusers import HunyuanVideoTransformer3DModel

    with torch.device("meta"):
        peer = HunyuanVideoTransformer3DModel()  # its defaults are the released model's config
    sd = peer.state_dict()
    assert detect_layout(sd) == "diffusers"
    mapped = from_diffusers(sd)
    assert shapes(mapped) == ours_real()
    assert infer_config(mapped) == REAL


def test_real_preset_matches_comfy_real_config():
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    import comfy.ldm.hunyuan_video.model as hv
    import comfy.ops

    with torch.device("meta"):
        peer = hv.HunyuanVideo(
            in_channels=16, out_channels=16, vec_in_dim=768, context_in_dim=4096, hidden_size=3072,
            mlp_ratio=4.0, num_heads=24, depth=20, depth_single_blocks=40, axes_dim=[16, 56, 56],
            theta=256, patch_size=[1, 2, 2], qkv_bias=True, guidance_embed=True, byt5=False,
            meanflow=False, use_cond_type_embedding=False, vision_in_dim=None,
            operations=comfy.ops.disable_weight_init,
        )
    sd = peer.state_dict()
    assert detect_layout(sd) == "comfy"
    mapped = from_comfy(sd)
    assert shapes(mapped) == ours_real()
    assert infer_config(mapped) == REAL


def test_real_preset_size():
    with torch.device("meta"):
        model = HunyuanVideoDiT(REAL)
    total = sum(p.numel() for p in model.parameters())
    refiner = sum(p.numel() for p in model.txt_in.parameters())
    assert 12.8e9 < total < 12.9e9
    assert 300e6 < refiner < 320e6  # ~309M, the part the sampler never needs on the device
