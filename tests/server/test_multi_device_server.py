"""The Multi-Device node through a real ComfyUI server: two CPU worker processes (Ray + gloo) give
the single-device latent (fp32 weights, max rel. error <= 1e-5: heads split across processes sum
attention in another order), through the API and comfy-cli, with a LoRA, Block Swap (set counts
and auto), image-to-video, a Step Cache and Compile; an interrupt and a killed worker each fail only their
job, and the next run is right again.

These tests use their own server (its Ray workers end with it), reading the session server's
tiny models and input image."""

from __future__ import annotations

import json
import os
import re
import signal
import time

import pytest
import torch
from safetensors.torch import load_file

from scripts.comfy_server import ROOT, JobFailed
from scripts.smoke_size import shrink
from tests.checks import FP32_RTOL, rel_err
from tests.harness import SERVER_SECRETS, TestServer, _log_outside, pack_tracebacks

pytestmark = pytest.mark.server

MULTI = "30"


@pytest.fixture(scope="module")
def server(comfy, tmp_path_factory):
    base = tmp_path_factory.mktemp("multi-device")
    for shared in ("models", "input"):  # the tiny models and the image-to-video input image
        (base / shared).symlink_to(comfy.base_dir / shared, target_is_directory=True)
    srv = TestServer(base, env=SERVER_SECRETS).start()
    started = srv.log_size()  # (start-up tracebacks are ComfyUI's optional nodes, checked by the comfy fixture)
    try:
        yield srv
        # outside the deliberately failed jobs: no traceback of ours
        assert not pack_tracebacks(_log_outside(srv, started, srv.log_size()))
    finally:
        srv.stop()


def graph(prefix: str, *, multi: bool, cfg: float = 1.0, cfg_parallel: bool = False, steps: int = 3,
          example: str = "t2v_basic") -> dict:
    """An example at the smoke size (80 px wide: 45 video tokens, padded for 2 workers), fp32 weights."""
    g = shrink(json.loads((ROOT / "workflows" / f"{example}_api.json").read_text()))
    g["2"]["inputs"]["negative_prompt"] = "blurry, low quality"
    g["3"]["inputs"].update(weight_dtype="fp32", attention="sdpa")
    g["4"]["inputs"]["steps"] = steps
    g["6"]["inputs"].update(width=80, cfg=cfg)
    if "23" in g:  # image-to-video: the image is encoded at the video's size (with the VAE)
        g["23"]["inputs"]["width"] = 80
    for node in ("8", "9", "10") if "23" in g else ("7", "8", "9", "10"):
        del g[node]
    g["40"] = {"class_type": "SaveLatent", "inputs": {"samples": ["6", 0], "filename_prefix": f"latents/{prefix}"}}
    if multi:
        g[MULTI] = {"class_type": "HunyuanVideoMultiDevice",
                    "inputs": {"dit": g["6"]["inputs"]["dit"], "processes": 2, "device": "cpu",
                               "cfg_parallel": cfg_parallel}}
        g["6"]["inputs"]["dit"] = [MULTI, 0]
    return g


def latent_of(server, entry) -> torch.Tensor:
    path = next(f for f in server.output_files(entry) if f.suffix == ".latent")
    return load_file(str(path))["latent_tensor"]


@pytest.mark.parametrize(("cfg", "cfg_parallel"), [(1.0, False), (4.0, True)])
def test_two_workers_equal_one_device(server, cfg, cfg_parallel):
    one = latent_of(server, server.run(graph(f"one_{cfg}", multi=False, cfg=cfg), timeout=600))
    two = latent_of(server, server.run(graph(f"two_{cfg}", multi=True, cfg=cfg, cfg_parallel=cfg_parallel),
                                       timeout=600))
    assert rel_err(two, one) <= FP32_RTOL
    assert "HunyuanVideo multi-device: 2 cpu workers" in server.log_text()


def test_a_lora_reaches_the_workers(server):
    """t2v_lora (LoRA Loader, strength 0.8) on two workers equals it on one device; a new strength
    is applied too (the workers reload their DiT)."""
    for strength in (0.8, 0.3):
        one, two = (graph(f"lora{strength}_{multi}", multi=multi, example="t2v_lora") for multi in (False, True))
        for g in (one, two):
            g["24"]["inputs"]["strength"] = strength
        reference = latent_of(server, server.run(one, timeout=600))
        assert rel_err(latent_of(server, server.run(two, timeout=600)), reference) <= FP32_RTOL
    base = latent_of(server, server.run(graph("no_lora", multi=False), timeout=600))
    assert rel_err(reference, base) > 1e-3, "the LoRA changed the video"


def test_comfy_cli_runs_the_multi_device_graph(server, tmp_path):
    path = tmp_path / "multi_api.json"
    path.write_text(json.dumps(graph("cli", multi=True)))
    result = server.run_cli(path)
    assert result["returncode"] == 0


def _worker_pids(server) -> list[int]:
    found = re.findall(r"HunyuanVideo multi-device: 2 cpu workers \(pids \[(\d+), (\d+)\]\)", server.log_text())
    return [int(p) for p in found[-1]]


def _start_long_job(server, prefix: str) -> str:
    """Queue a 400-step run on the (already started) workers; return once it is running."""
    status, body = server.submit(graph(prefix, multi=True, steps=400))
    assert status == 200, body
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        running = server.get("/queue")["queue_running"]
        if running and running[0][1] == body["prompt_id"]:
            time.sleep(2.0)  # text encoding and the refiner, then the workers' steps
            return body["prompt_id"]
        time.sleep(0.1)
    raise TimeoutError("the long job never started")


def test_interrupt_and_a_killed_worker_fail_only_their_job(server):
    reference = latent_of(server, server.run(graph("before", multi=True), timeout=600))

    mark = server.log_size()
    prompt_id = _start_long_job(server, "interrupted")
    server.interrupt()
    with pytest.raises(JobFailed, match="interrupted"):
        server.wait(prompt_id, timeout=300)
    server.allowed_spans.append((mark, server.log_size()))
    assert server.alive()
    assert rel_err(latent_of(server, server.run(graph("after_interrupt", multi=True), timeout=600)), reference) <= FP32_RTOL

    mark = server.log_size()
    prompt_id = _start_long_job(server, "killed")
    victim = _worker_pids(server)[1]
    os.kill(victim, signal.SIGKILL)
    with pytest.raises(JobFailed, match="a multi-device worker failed .* the workers are restarted on the next run"):
        server.wait(prompt_id, timeout=300)
    server.allowed_spans.append((mark, server.log_size()))
    assert server.alive()
    assert rel_err(latent_of(server, server.run(graph("after_kill", multi=True), timeout=600)), reference) <= FP32_RTOL
    assert victim not in _worker_pids(server)


def test_heads_that_do_not_divide_are_a_clear_error(server):
    bad = graph("bad", multi=True)
    bad[MULTI]["inputs"]["processes"] = 3  # the tiny DiT has 4 heads
    message = server.run_expect_error(bad)
    assert "Ulysses degree 3 (3 processes / cfg_degree 1) must divide the DiT's 4 attention heads" in message


def test_block_swap_counts_and_auto_on_the_workers(server):
    """t2v_low_vram (Block Swap) on two workers: set counts equal one device (tests/unit shows the
    workers stream those blocks); "auto" is resolved by each worker for its own memory (a CPU with
    room for the tiny DiT: nothing swapped), logged in the server's log, and equals one device too."""
    one, two = (graph(f"swap_{multi}", multi=multi, example="t2v_low_vram") for multi in (False, True))
    for g in (one, two):
        g["11"]["inputs"].update(mode="manual", double_blocks=1, single_blocks=1)
    reference = latent_of(server, server.run(one, timeout=600))
    assert rel_err(latent_of(server, server.run(two, timeout=600)), reference) <= FP32_RTOL
    auto = graph("swap_auto", multi=True, example="t2v_low_vram")
    assert rel_err(latent_of(server, server.run(auto, timeout=600)), reference) <= FP32_RTOL
    for rank in (0, 1):
        assert f"worker {rank} (cpu): block swap auto: 0 double + 0 single blocks" in server.log_text()


@pytest.mark.parametrize("example", ["i2v_token_replace", "i2v_skyreels"])
def test_image_to_video_on_the_workers(server, example):
    """Token replace (the first frame's 15 tokens modulated as at t=0, on rank 0's shard) and
    SkyReels' 32-channel concat with true CFG: two workers equal one device."""
    one, two = (graph(f"{example}_{multi}", multi=multi, example=example) for multi in (False, True))
    reference = latent_of(server, server.run(one, timeout=600))
    assert rel_err(latent_of(server, server.run(two, timeout=600)), reference) <= FP32_RTOL


def test_a_step_cache_and_compile_on_the_workers(server):
    """t2v_fast (Step Cache: TeaCache, and Compile) on two workers: the same steps skipped as on
    one device (the summary each logs) and the same latent, each compiling its DiT blocks."""
    summary = re.compile(r"HunyuanVideo step cache (?:\(rank 0 of the workers\) )?(teacache .*)")
    one, two = (graph(f"cache_{multi}", multi=multi, example="t2v_fast", steps=6) for multi in (False, True))
    mark = server.log_size()
    reference = latent_of(server, server.run(one, timeout=600))
    single = summary.findall(server.log_path.read_bytes()[mark:].decode(errors="replace"))
    mark = server.log_size()
    assert rel_err(latent_of(server, server.run(two, timeout=600)), reference) <= FP32_RTOL
    workers = summary.findall(server.log_path.read_bytes()[mark:].decode(errors="replace"))
    assert len(single) == len(workers) == 1 and workers == single
    assert " 0 skipped" not in single[0], single
