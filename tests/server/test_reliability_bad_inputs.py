"""Issue 10: bad inputs queued through POST /prompt come back as clear errors, and the server recovers.

Every case is one job. It must fail at validation (``node_errors``) or at execution with a message
that names the input, the value and what was expected (checked by substrings per case). After each
case the server still answers and a small valid job succeeds. Files for the loader cases are
written by the test into the server's ``models/`` folders under fresh names (ComfyUI lists model
folders per request, so they show up as combo options at once).

Endpoint failures (HTTP 500, a hanging endpoint, non-JSON replies, connection refused, a missing
key variable) are covered by tests/server/test_rewrite_server.py; here only the input checks of the
endpoint node are added. An interrupt during sampling is tests/server/test_interrupt.py; an
interrupt during decode is at the end of this file.
"""

from __future__ import annotations

import json
import random
import shutil
import time
import uuid
from pathlib import Path

import pytest
import torch

from hunyuan.rewrite.tiny import TINY_NAME
from hunyuan.tools.make_tiny_models import REAL_NAMES
from scripts.comfy_server import ROOT, JobFailed
from scripts.smoke_size import shrink
from tests.harness import owner_endpoints

pytestmark = pytest.mark.server

DIT_FILE = REAL_NAMES["diffusion_models/hunyuan_video_t2v_720p_bf16.safetensors"]
VAE_FILE = REAL_NAMES["vae/hunyuan_video_vae_bf16.safetensors"]
LLM_FILE = REAL_NAMES["text_encoders/llava_llama3_fp16.safetensors"]
CLIP_FILE = REAL_NAMES["text_encoders/clip_l.safetensors"]
REWRITE_DIR = REAL_NAMES["LLM/Qwen2.5-1.5B-Instruct"]
assert REWRITE_DIR.endswith(TINY_NAME)


def base_graph(seed: int | None = None) -> dict:
    """The t2v example at the smallest size (1 step, 16x16, 1 frame), previewed instead of saved."""
    graph = shrink(json.loads((ROOT / "workflows" / "t2v_basic_api.json").read_text()))
    graph["4"]["inputs"]["steps"] = 1
    graph["6"]["inputs"].update(width=16, height=16, frames=1, seed=random.randrange(2**31) if seed is None else seed)
    for node in ("9", "10"):
        del graph[node]
    graph["11"] = {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}}
    return graph


def rewrite_graph(model_name: str, prompt: str = "a fox") -> dict:
    return {"1": {"class_type": "HunyuanVideoRewriteModelLoader", "inputs": {"model_name": model_name, "dtype": "fp32"}},
            "2": {"class_type": "HunyuanVideoPromptRewrite",
                  "inputs": {"rewrite_model": ["1", 0], "prompt": prompt, "mode": "Normal", "temperature": 0.7,
                             "top_p": 0.9, "max_new_tokens": 4, "seed": random.randrange(2**31)}}}


def endpoint_graph(prompt: str = "a fox", **overrides) -> dict:
    inputs = {"endpoint_url": "http://127.0.0.1:9/v1", "model": "m", "timeout_s": 1.0,
              "max_retries": 0, **overrides}
    graph = rewrite_graph("x", prompt)
    graph["1"] = {"class_type": "HunyuanVideoRewriteEndpoint", "inputs": inputs}
    return graph


# -- bad model files -------------------------------------------------------------------------------

def _tiny(comfy, rel: str) -> Path:
    return comfy.base_dir / "models" / rel


def write_bad(comfy, folder: str, kind: str, source: str, other: str) -> str:
    """A new file in models/<folder>/ of the given kind; returns its name (as the combo lists it)."""
    name = f"hyvid_bad_{kind}_{uuid.uuid4().hex[:8]}" + (".pt" if kind == "pt" else ".safetensors")
    path = comfy.base_dir / "models" / folder / name
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        data = _tiny(comfy, source).read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "other":
        shutil.copyfile(_tiny(comfy, other), path)
    elif kind == "pt":
        torch.save({"unrelated.weight": torch.zeros(3, 3)}, path)
    elif kind != "missing":
        raise ValueError(kind)
    return name


def write_bad_rewrite(comfy, kind: str) -> str:
    """A new models/LLM/<folder> with the tiny LM's config and a bad weights file."""
    name = f"hyvid_bad_{kind}_{uuid.uuid4().hex[:8]}"
    folder = comfy.base_dir / "models" / "LLM" / name
    shutil.copytree(_tiny(comfy, REWRITE_DIR), folder, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    weights = folder / "model.safetensors"
    if kind == "missing":
        pass
    elif kind == "empty":
        weights.write_bytes(b"")
    elif kind == "truncated":
        data = (_tiny(comfy, REWRITE_DIR) / "model.safetensors").read_bytes()
        weights.write_bytes(data[: len(data) // 2])
    elif kind == "other":
        shutil.copyfile(_tiny(comfy, VAE_FILE), weights)
    elif kind == "pt":
        torch.save({"unrelated.weight": torch.zeros(3, 3)}, folder / "pytorch_model.bin")
    return name


# Expected message parts for each kind of bad file ({name} is replaced by the file's name).
FILE_EXPECT = {
    "missing": ["{name}", ("not found", "neither a model folder nor a file", "is not one of the choices")],
    "empty": ["{name}", "empty"],
    "truncated": ["{name}", "safetensors"],
    "other": ["{name}", ("expected", "is not a HunyuanVideo")],
    "pt": ["{name}", ("expected", "is not a HunyuanVideo")],
}
REWRITE_EXPECT = {
    "missing": ["{name}", "no weights", "expected model.safetensors"],
    "empty": ["{name}", "empty"],
    "truncated": ["{name}", "safetensors"],
    "other": ["{name}", "expected"],
    "pt": ["{name}", "expected"],
}
LOADERS = {  # loader -> (models folder, tiny file, another model's tiny file, how to put the name in the graph)
    "dit": ("diffusion_models", DIT_FILE, VAE_FILE, lambda g, n: g["3"]["inputs"].update(dit_name=n)),
    "vae": ("vae", VAE_FILE, DIT_FILE, lambda g, n: g["7"]["inputs"].update(vae_name=n)),
    "llm": ("text_encoders", LLM_FILE, DIT_FILE, lambda g, n: g["1"]["inputs"].update(llm=n)),
    "clip": ("text_encoders", CLIP_FILE, DIT_FILE, lambda g, n: g["1"]["inputs"].update(clip=n)),
}
KINDS = ("missing", "empty", "truncated", "other", "pt")


def loader_case(comfy, loader: str, kind: str) -> tuple[dict, list[str]]:
    if loader == "rewrite":
        name = write_bad_rewrite(comfy, kind)
        return rewrite_graph(name), [s.format(name=name) for s in REWRITE_EXPECT[kind]]
    folder, source, other, put = LOADERS[loader]
    name = write_bad(comfy, folder, kind, source, other)
    graph = base_graph()
    put(graph, name)
    return graph, _fill(FILE_EXPECT[kind], name)


def _fill(expected: list, name: str) -> list:
    return [s.format(name=name) if isinstance(s, str) else s for s in expected]


# -- bad values ---------------------------------------------------------------------------------------

def _set(node: str, **inputs):
    def build(comfy):
        graph = base_graph()
        graph[node]["inputs"].update(inputs)
        return graph
    return build


def _sigmas_mismatch(comfy):
    graph = base_graph()
    graph["41"] = {"class_type": "HunyuanVideoScheduler", "inputs": {"steps": 2, "shift": 7.0, "denoise": 1.0}}
    graph["6"]["inputs"]["sigmas"] = ["41", 0]
    return graph


def _image_latent_into_decode(comfy):
    graph = base_graph()
    graph["40"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}
    graph["8"]["inputs"]["samples"] = ["40", 0]
    return graph


def _image_latent_into_sampler(comfy):
    graph = base_graph()
    graph["40"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 16, "height": 16, "batch_size": 1}}
    graph["6"]["inputs"].update(latent=["40", 0], denoise=0.5)
    return graph


VALUE_CASES = {  # id -> (graph builder, expected substrings of the error)
    "frames_not_4k+1": (_set("6", frames=30), ["frames=30", "4k+1", "29", "33"]),
    "width_not_16x": (_set("6", width=100), ["width", "100", "16"]),
    "height_not_16x": (_set("6", height=40), ["height", "40", "16"]),
    "width_zero": (_set("6", width=0), ["width", "0", "min"]),
    "frames_negative": (_set("6", frames=-3), ["frames", "-3", "min"]),
    "frames_huge": (_set("6", frames=10**6), ["frames", "1000000", "max"]),
    "size_huge": (_set("6", width=10**6), ["width", "1000000", "max"]),
    "steps_zero": (_set("4", steps=0), ["steps", "0", "min"]),
    "steps_negative": (_set("4", steps=-5), ["steps", "-5", "min"]),
    "shift_negative": (_set("4", shift=-1.0), ["shift", "-1", "min"]),
    "seed_negative": (_set("6", seed=-1), ["seed", "-1", "min"]),
    "guidance_huge": (_set("6", embedded_guidance=1e9), ["embedded_guidance", "max"]),
    "cfg_zero": (_set("6", cfg=0.0), ["cfg", "0", "min"]),
    "tile_size_zero": (_set("8", tiling="custom", tile_size=0), ["tile_size", "0", "min"]),
    "skip_layer_huge": (_set("2", hidden_state_skip_layer=1000), ["hidden_state_skip_layer", "1000", "max"]),
    "unknown_solver": (_set("6", solver="dpm++"), ["solver", "dpm++", "expected one of"]),
    "sigmas_refiner_vs_sampler": (_sigmas_mismatch, ["refined for 1 steps", "sigmas"]),
    "image_latent_into_decode": (_image_latent_into_decode, ["samples has shape", "(1, 4, 8, 8)", "[B, 16, T"]),
    "image_latent_into_sampler": (_image_latent_into_sampler, ["latent has shape", "(1, 4, 1, 2, 2)", "4 channels"]),
    "rewrite_empty_prompt": (lambda c: rewrite_graph(TINY_NAME, prompt="   "), ["prompt", "empty"]),
    "endpoint_url_not_http": (lambda c: endpoint_graph(endpoint_url="ftp://x"), ["endpoint_url", "ftp://x", "http"]),
    "endpoint_model_empty": (lambda c: endpoint_graph(model=""), ["model", "empty", "expected"]),
    "endpoint_timeout_zero": (lambda c: endpoint_graph(timeout_s=0.0), ["timeout_s", "0", "min"]),
}


def assert_recovers(comfy) -> None:
    """The server answers and a small valid job (new seed: nothing cached) succeeds."""
    assert comfy.alive()
    entry = comfy.run(base_graph(), timeout=120)
    assert entry["status"]["status_str"] == "success"


def check_message(message: str, expected: list) -> None:
    """Every item must occur in ``message``; a tuple item means any one of its strings."""
    missing = [s for s in expected if not any(alt in message for alt in (s if isinstance(s, tuple) else (s,)))]
    assert not missing, f"error message lacks {missing}:\n{message[:3000]}"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("loader", [*LOADERS, "rewrite"])
def test_bad_model_file(comfy, loader, kind):
    graph, expected = loader_case(comfy, loader, kind)
    check_message(comfy.run_expect_error(graph, timeout=120), expected)
    assert_recovers(comfy)


@pytest.mark.parametrize("case", list(VALUE_CASES))
def test_bad_value(comfy, case):
    build, expected = VALUE_CASES[case]
    # The endpoint cases name an endpoint the owner allows, so the value under test is what fails.
    allowed = [{"url": "http://127.0.0.1:9/v1"}] if case.startswith("endpoint_") else []
    with owner_endpoints(comfy, allowed):
        check_message(comfy.run_expect_error(build(comfy), timeout=120), expected)
    assert_recovers(comfy)


def test_empty_prompt_runs(comfy):
    """An empty prompt is a legitimate (unconditional-looking) request: it succeeds."""
    graph = base_graph()
    graph["2"]["inputs"]["prompt"] = ""
    assert comfy.run(graph, timeout=120)["status"]["status_str"] == "success"
    assert_recovers(comfy)


def test_ten_thousand_character_prompt_warns_about_dropped_tokens(comfy):
    graph = base_graph()
    graph["2"]["inputs"]["prompt"] = ("a red fox in the snow " * 500)[:10_000]
    start = comfy.log_size()
    assert comfy.run(graph, timeout=300)["status"]["status_str"] == "success"
    log = comfy.log_path.read_bytes()[start:].decode(errors="replace")
    assert "tokens were dropped" in log, log[-3000:]
    assert_recovers(comfy)


# -- interrupt during decode ------------------------------------------------------------------------

def long_decode_graph(prefix: str) -> dict:
    """A zero HunyuanVideo latent (ComfyUI's own empty-latent node) straight into a tiled decode with
    small custom tiles, which takes seconds on the tiny VAE, then SaveVideo."""
    graph = base_graph()
    for node in ("1", "2", "3", "4", "5", "6", "11"):
        del graph[node]
    graph["40"] = {"class_type": "EmptyHunyuanLatentVideo",
                   "inputs": {"width": 256, "height": 256, "length": 33, "batch_size": 1}}
    graph["8"]["inputs"].update(samples=["40", 0], tiling="custom", tile_size=64, tile_overlap=32,
                                temporal_chunk=1, shared_norm=True)
    graph["9"] = {"class_type": "CreateVideo", "inputs": {"images": ["8", 0], "fps": 8.0}}
    graph["10"] = {"class_type": "SaveVideo", "inputs": {"video": ["9", 0], "filename_prefix": prefix,
                                                         "format": "auto", "codec": "auto"}}
    return graph


def test_interrupt_during_decode_leaves_no_output_and_next_run_succeeds(comfy):
    prefix = f"video/interrupted-{uuid.uuid4().hex[:8]}"
    out_dir = comfy.base_dir / "output" / "video"
    graph = long_decode_graph(prefix)
    status, body = comfy.submit(graph)
    assert status == 200, body
    time.sleep(2.0)  # the job is nothing but the decode (the VAE loader is cached)
    assert comfy.get(f"/history/{body['prompt_id']}") == {}, "the decode finished before the interrupt"
    began = time.monotonic()
    comfy.interrupt()
    with pytest.raises(JobFailed, match="interrupted"):
        comfy.wait(body["prompt_id"], timeout=120)
    stopped_after = time.monotonic() - began
    assert stopped_after < 10, f"the decode took {stopped_after:.1f}s to notice the interrupt"
    assert comfy.alive()
    name = prefix.split("/")[-1]
    assert not list(out_dir.glob(f"{name}*")), "an interrupted job left a (partial) video"
    assert not list((comfy.base_dir / "temp").rglob(f"{name}*"))
    assert_recovers(comfy)
