"""The native text path (DualCLIPLoader hunyuan_video + CLIPTextEncode -> bridge) in a real server.

The test server has only tiny random weights, which ComfyUI's hunyuan_video text encoder cannot
load at its hard-coded real widths; the test-only custom node in
tests/comfy_shims/hyvid_test_native_text_widths makes ComfyUI build that encoder at the tiny
widths and changes nothing else. The workflow files themselves run in test_workflows.py (API and
comfy-cli) and tests/browser; here: the shim is active in the test server only, and the native
graph samples the same latent as our own text path (workflows/t2v_basic) from the same weights.
"""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from safetensors.torch import load_file

from scripts.comfy_server import PACK_NAME, ROOT, ComfyServer
from scripts.smoke_size import shrink
from tests.harness import TEST_SHIMS

pytestmark = pytest.mark.server

SHIM = "hyvid_test_native_text_widths"
SHIM_ACTIVE = f"TEST SHIM: {SHIM} is active"
SHIM_BUILD = "TEST SHIM: building the hunyuan_video text encoder at tiny widths"
SEED = 11
TRANSFORMERS_MAJOR = int(transformers.__version__.split(".")[0])


def workflow(name: str) -> dict:
    return shrink(json.loads((ROOT / "workflows" / f"{name}_api.json").read_text()))


def latent_graph(graph: dict, prefix: str) -> dict:
    """The sampler part of an example graph in fp32, ending in a native SaveLatent (no decode)."""
    graph["3"]["inputs"].update(weight_dtype="fp32", attention="sdpa")
    graph["6"]["inputs"]["seed"] = SEED
    for node_id in ("7", "8", "9", "10"):
        del graph[node_id]
    graph["20"] = {"class_type": "SaveLatent", "inputs": {"samples": ["6", 0], "filename_prefix": prefix}}
    return graph


def sampled_latent(comfy, graph: dict) -> torch.Tensor:
    files = comfy.output_files(comfy.run(graph, timeout=600))
    return load_file(str(next(f for f in files if f.suffix == ".latent")))["latent_tensor"].float()


def test_shim_is_loaded_in_the_test_server_and_registers_nothing(comfy):
    log = comfy.log_text()
    assert log.count(SHIM_ACTIVE) == 1, comfy.log_tail()
    assert "IMPORT FAILED" not in "\n".join(line for line in log.splitlines() if SHIM in line)
    modules = {info.get("python_module", "") for info in comfy.object_info().values()}
    assert not any(SHIM in module for module in modules)


def test_shim_never_reaches_users(tmp_path):
    # Only the test harness links it: a plain server (demo, users' own ComfyUI) gets the pack alone,
    # and no shipped file mentions the shim.
    assert (TEST_SHIMS / SHIM / "__init__.py").is_file()
    server = ComfyServer(tmp_path)
    server.prepare()
    assert sorted(p.name for p in (tmp_path / "custom_nodes").iterdir()) == [PACK_NAME]
    shipped = [ROOT / "__init__.py", ROOT / "README.md", *ROOT.glob("nodes/*.py"), *ROOT.glob("hunyuan/**/*.py"),
               *ROOT.glob("scripts/*"), *ROOT.glob("web/**/*.js"), *ROOT.glob("workflows/*.json")]
    shims = ["comfy_shims"] + sorted(p.name for p in TEST_SHIMS.iterdir() if p.is_dir() and p.name != "__pycache__")
    assert SHIM in shims
    assert not [(p, s) for p in shipped if p.is_file() for s in shims if s in p.read_text()]


def test_native_text_graph_samples_the_same_latent_as_our_text_path(comfy):
    """Under transformers 4.x. Under 5.x ComfyUI 0.3.75's own tokenizer drops the prompt's spaces
    and newlines (tests/parity/test_text_comfy.py shows its ids), so there the native graph must
    sample another latent, as far from ours as another prompt's; the day ComfyUI's ids are right
    again this fails and the README's warning can go."""
    ours = latent_graph(workflow("t2v_basic"), "latents/text-ours")
    ours["1"]["inputs"]["dtype"] = "fp32"  # native CLIPTextEncode always computes in fp32 (fp16 weights)
    native = latent_graph(workflow("t2v_native_text"), "latents/text-native")
    assert native["18"]["inputs"]["text"] == ours["2"]["inputs"]["prompt"]

    got = sampled_latent(comfy, native)
    # ComfyUI may serve the loader from its cache (an earlier test ran the same node), so look at the
    # whole session: the tiny files load natively only through the shim.
    assert SHIM_BUILD in comfy.log_text()
    want = sampled_latent(comfy, ours)

    assert got.shape == want.shape == (1, 16, 3, 6, 8)
    err = float((got - want).abs().max() / want.abs().max())
    print(f"native text path vs our text path, sampled latent relative error: {err:.2e}")

    # With random tiny weights and 3 steps the text moves the latent only a little (another prompt:
    # ~2e-4 relative), so compare with what a whole other prompt changes.
    native["18"]["inputs"]["text"] = "A lighthouse on a cliff at night, waves crashing."
    other = sampled_latent(comfy, native)
    change = float((other - got).abs().max())
    print(f"another prompt changes the latent by {change / float(want.abs().max()):.2e} (relative); "
          f"the two text paths differ by {float((got - want).abs().max()) / change:.2e} of that")
    assert change > 1e-5 * float(want.abs().max())
    if TRANSFORMERS_MAJOR < 5:
        assert err <= 1e-5, err
        # Not the equality of two ignored inputs: within 1 % of another prompt's change (measured ~3e-4).
        assert float((got - want).abs().max()) < 0.01 * change
    else:
        assert float((got - want).abs().max()) > 0.1 * change, err
