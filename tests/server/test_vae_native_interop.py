"""Our VAE nodes and ComfyUI's native ones read and write the same LATENT, in a real server.

ComfyUI's native VAE builds the network with hard-coded real widths, so this module writes a
REAL-width random VAE in ComfyUI's key layout (~490 MB, ``hunyuan.vae.tiny.write_native_interop``)
into the server's ``models/vae`` and loads that one file with both loaders, in fp32 on both sides.

What can be equal and what cannot:

* ComfyUI's native mid-block attention is not causal (every frame attends to every frame);
  Tencent's, diffusers' and ours are. For a one-latent-frame clip the two are the same, so
  single-frame latents must decode to the same pixels (PNG, so within one 8-bit level) and
  encode to the same latent (max relative error 1e-5, fp32 on both sides).
* For several latent frames the native decode differs by design; there we check the frame count
  and size only.
* Native tiled decode has its own seams: it must be as close to our untiled decode as to its own
  untiled decode, and our tiled decode at the same tile size must seam no more than it does.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from hunyuan.vae.tiny import NATIVE_NAME, write_native_interop

pytestmark = pytest.mark.server

IMAGE = "hyvid_interop_input.png"
TILES_OFF = {"tiling": "off", "tile_size": 256, "tile_overlap": 64, "temporal_chunk": 1, "shared_norm": True}


@pytest.fixture(scope="module")
def interop(comfy):
    """The real-width VAE file and a 128x128 test picture in the server's folders; removed afterwards."""
    path = write_native_interop(comfy.base_dir / "models", seed=3)
    y, x = np.mgrid[0:128, 0:128]
    picture = np.stack([x * 2, y * 2, (x + y) % 256], axis=-1).astype(np.uint8)  # smooth ramps + a sawtooth
    picture[40:90, 30:100] = [230, 40, 60]  # a hard-edged block
    Image.fromarray(picture).save(comfy.base_dir / "input" / IMAGE)
    yield path
    path.unlink(missing_ok=True)


def _graph(size: int) -> dict:
    """Nodes shared by every case: both loaders on the same file, and the picture at ``size`` px."""
    return {
        "1": {"class_type": "VAELoader", "inputs": {"vae_name": NATIVE_NAME}},
        "2": {"class_type": "HunyuanVideoVAELoader", "inputs": {"vae_name": NATIVE_NAME, "dtype": "fp32"}},
        "3": {"class_type": "LoadImage", "inputs": {"image": IMAGE}},
        "4": {"class_type": "ImageScale", "inputs": {"image": ["3", 0], "upscale_method": "nearest-exact",
                                                       "width": size, "height": size, "crop": "disabled"}},
    }


def _frames(comfy, entry: dict, prefix: str) -> np.ndarray:
    files = sorted(p for p in comfy.output_files(entry) if p.suffix == ".png" and p.name.startswith(prefix))
    assert files, f"no PNG saved under {prefix}"
    return np.stack([np.asarray(Image.open(f).convert("RGB"), dtype=np.int16) for f in files])


def _latent(comfy, entry: dict, prefix: str) -> torch.Tensor:
    files = [p for p in comfy.output_files(entry) if p.suffix == ".latent" and p.name.startswith(prefix)]
    assert len(files) == 1, files
    return load_file(str(files[0]))["latent_tensor"].float()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def test_both_encoders_give_the_same_latent_and_both_decoders_the_same_pixels(comfy, interop):
    """Ours encodes -> native decodes, native encodes -> ours decodes, each against the other side."""
    graph = _graph(64)
    graph.update({
        "10": {"class_type": "VAEEncode", "inputs": {"pixels": ["4", 0], "vae": ["1", 0]}},
        "11": {"class_type": "HunyuanVideoVAEEncode", "inputs": {"vae": ["2", 0], "pixels": ["4", 0], **TILES_OFF}},
        "12": {"class_type": "SaveLatent", "inputs": {"samples": ["10", 0], "filename_prefix": "interop/native_enc"}},
        "13": {"class_type": "SaveLatent", "inputs": {"samples": ["11", 0], "filename_prefix": "interop/ours_enc"}},
        # our LATENT through the native decoder, and the native LATENT through ours
        "20": {"class_type": "VAEDecode", "inputs": {"samples": ["11", 0], "vae": ["1", 0]}},
        "21": {"class_type": "HunyuanVideoVAEDecode", "inputs": {"vae": ["2", 0], "samples": ["10", 0], **TILES_OFF}},
        # and each decoder on its own side's latent, as the reference
        "22": {"class_type": "HunyuanVideoVAEDecode", "inputs": {"vae": ["2", 0], "samples": ["11", 0], **TILES_OFF}},
        "23": {"class_type": "VAEDecode", "inputs": {"samples": ["10", 0], "vae": ["1", 0]}},
    })
    for node, name in (("20", "ours_lat_native_dec"), ("21", "native_lat_ours_dec"),
                       ("22", "ours_lat_ours_dec"), ("23", "native_lat_native_dec")):
        graph[f"3{node}"] = {"class_type": "SaveImage", "inputs": {"images": [node, 0], "filename_prefix": f"interop/{name}"}}
    entry = comfy.run(graph)

    native, ours = _latent(comfy, entry, "native_enc"), _latent(comfy, entry, "ours_enc")
    assert ours.shape == native.shape == (1, 16, 1, 8, 8)
    assert _rel(ours, native) <= 1e-5, f"latents differ: rel {_rel(ours, native):.2e}"

    for a, b in (("ours_lat_native_dec", "ours_lat_ours_dec"), ("native_lat_ours_dec", "native_lat_native_dec")):
        fa, fb = _frames(comfy, entry, a), _frames(comfy, entry, b)
        assert fa.shape == fb.shape == (1, 64, 64, 3)
        assert np.abs(fa - fb).max() <= 1, f"{a} vs {b}: max {np.abs(fa - fb).max()} levels"
        assert fa.std() > 5, "the decoded picture is flat: the comparison would prove nothing"


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = (((a - b) / 255.0) ** 2).mean()
    return float(10 * np.log10(1 / max(mse, 1e-12)))


def test_native_tiled_decode_of_our_latent(comfy, interop):
    """Native VAE Decode (Tiled) reads our LATENT as it reads its own, and our tiles seam less at the same size."""
    graph = _graph(128)
    tiles = {"tiling": "custom", "tile_size": 64, "tile_overlap": 32, "temporal_chunk": 1, "shared_norm": True}
    graph.update({
        "11": {"class_type": "HunyuanVideoVAEEncode", "inputs": {"vae": ["2", 0], "pixels": ["4", 0], **TILES_OFF}},
        "20": {"class_type": "VAEDecodeTiled", "inputs": {"samples": ["11", 0], "vae": ["1", 0], "tile_size": 64,
                                                          "overlap": 32, "temporal_size": 64, "temporal_overlap": 8}},
        "21": {"class_type": "HunyuanVideoVAEDecode", "inputs": {"vae": ["2", 0], "samples": ["11", 0], **TILES_OFF}},
        "22": {"class_type": "VAEDecode", "inputs": {"samples": ["11", 0], "vae": ["1", 0]}},
        "23": {"class_type": "HunyuanVideoVAEDecode", "inputs": {"vae": ["2", 0], "samples": ["11", 0], **tiles}},
    })
    for node, name in (("20", "native_tiled"), ("21", "ours_whole"), ("22", "native_whole"), ("23", "ours_tiled")):
        graph[f"3{node}"] = {"class_type": "SaveImage", "inputs": {"images": [node, 0], "filename_prefix": f"interop/{name}"}}
    entry = comfy.run(graph)
    frames = {n: _frames(comfy, entry, n) for n in ("native_tiled", "ours_whole", "native_whole", "ours_tiled")}
    assert {f.shape for f in frames.values()} == {(1, 128, 128, 3)}
    native_vs_ours = _psnr(frames["native_tiled"], frames["ours_whole"])
    native_vs_native = _psnr(frames["native_tiled"], frames["native_whole"])
    ours_vs_ours = _psnr(frames["ours_tiled"], frames["ours_whole"])
    print(f"\nseams at 64 px tiles, overlap 32 (random real-width weights): native tiled vs our untiled "
          f"{native_vs_ours:.2f} dB, vs native untiled {native_vs_native:.2f} dB; ours tiled {ours_vs_ours:.2f} dB")
    # a LATENT convention mismatch (scaling, channel or frame layout) would move the first far from the second
    assert abs(native_vs_ours - native_vs_native) < 0.1
    assert ours_vs_ours >= native_vs_native


def test_multi_frame_latents_have_the_same_frame_count(comfy, interop):
    """Five frames -> 2 latent frames -> 5 frames on both sides (pixels differ: native attention is not causal)."""
    graph = _graph(64)
    graph["5"] = {"class_type": "RepeatImageBatch", "inputs": {"image": ["4", 0], "amount": 5}}
    graph.update({
        "11": {"class_type": "HunyuanVideoVAEEncode", "inputs": {"vae": ["2", 0], "pixels": ["5", 0], **TILES_OFF}},
        "20": {"class_type": "VAEDecode", "inputs": {"samples": ["11", 0], "vae": ["1", 0]}},
        "21": {"class_type": "HunyuanVideoVAEDecode", "inputs": {"vae": ["2", 0], "samples": ["11", 0], **TILES_OFF}},
        "30": {"class_type": "GetImageSize", "inputs": {"image": ["20", 0]}},
        "31": {"class_type": "GetImageSize", "inputs": {"image": ["21", 0]}},
        "40": {"class_type": "PreviewAny", "inputs": {"source": ["30", 2]}},
        "41": {"class_type": "PreviewAny", "inputs": {"source": ["31", 2]}},
    })
    outputs = comfy.run(graph)["outputs"]
    assert outputs["40"]["text"] == ["5"] and outputs["41"]["text"] == ["5"], outputs
