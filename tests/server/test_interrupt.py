"""POST /interrupt in the middle of sampling: the job stops, the server stays up, and the next run
succeeds with exactly the output of an uninterrupted run."""

from __future__ import annotations

import json
import time

import pytest
import torch
from safetensors.torch import load_file

from scripts.comfy_server import ROOT, JobFailed
from scripts.smoke_size import shrink

pytestmark = pytest.mark.server

DIT_LOAD = "Requested to load HunyuanVideoDiT"  # ComfyUI's log line when the sampler loads the DiT


def long_graph(attention: str, prefix: str) -> dict:
    """The t2v graph with a sampling stage that runs for several seconds on tiny weights."""
    graph = shrink(json.loads((ROOT / "workflows" / "t2v_basic_api.json").read_text()))
    graph["3"]["inputs"]["attention"] = attention  # "auto" and "sdpa" run the same kernel on a CPU
    graph["4"]["inputs"]["steps"] = 40
    graph["6"]["inputs"].update(width=224, height=224, frames=17, seed=5)  # ~5-10 s of sampling
    for node in ("7", "8", "9", "10"):
        del graph[node]
    graph["20"] = {"class_type": "SaveLatent", "inputs": {"samples": ["6", 0], "filename_prefix": prefix}}
    return graph


def latent_of(comfy, entry) -> torch.Tensor:
    path = next(f for f in comfy.output_files(entry) if f.suffix == ".latent")
    return load_file(str(path))["latent_tensor"]


def wait_until_sampling(comfy, loads_before: int, timeout: float = 120) -> None:
    """Until the sampler has asked ComfyUI to load the DiT (the step loop follows at once)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if comfy.log_text().count(DIT_LOAD) > loads_before:
            return
        time.sleep(0.05)
    raise TimeoutError("the job never started sampling")


def test_interrupt_mid_sampling_then_identical_rerun(comfy):
    reference = latent_of(comfy, comfy.run(long_graph("auto", "latents/uninterrupted"), timeout=900))

    loads_before = comfy.log_text().count(DIT_LOAD)
    status, body = comfy.submit(long_graph("sdpa", "latents/interrupted"))
    assert status == 200, body
    prompt_id = body["prompt_id"]
    wait_until_sampling(comfy, loads_before)
    time.sleep(0.5)
    comfy.interrupt()
    with pytest.raises(JobFailed, match="interrupted"):
        comfy.wait(prompt_id, timeout=300)
    assert comfy.alive()

    rerun = latent_of(comfy, comfy.run(long_graph("sdpa", "latents/after_interrupt"), timeout=900))
    assert torch.equal(rerun, reference)
