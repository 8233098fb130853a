"""The LoRA node in a real server: what re-runs when only the strength changes, a clean unpatch
(strength 0 and no LoRA node give the base latent bit for bit, after a LoRA ran in the same
process), and files that are not a HunyuanVideo LoRA refused by name with the server still up.

workflows/t2v_lora_api.json itself (API and comfy-cli) runs in tests/server/test_workflows.py.
"""

from __future__ import annotations

import json
import uuid

import pytest
import torch
from safetensors.torch import load_file, save_file

from scripts.comfy_server import ROOT
from scripts.smoke_size import shrink
from tests.server.test_reliability_bad_inputs import assert_recovers
from tests.server.test_reliability_pickle import write_evil

pytestmark = pytest.mark.server

WORKFLOW = ROOT / "workflows" / "t2v_lora_api.json"
LORA, SAMPLER, LOADERS = "24", "6", ("1", "3")


def lora_graph(strength: float | None = 0.8, lora_name: str | None = None) -> dict:
    """t2v_lora at the smoke size ending in a native SaveLatent; ``strength=None``: no LoRA node."""
    graph = shrink(json.loads(WORKFLOW.read_text()))
    for node in ("7", "8", "9", "10"):  # decode and video: not what is compared here
        del graph[node]
    if strength is None:
        del graph[LORA]
        graph[SAMPLER]["inputs"]["dit"] = ["3", 0]
    else:
        graph[LORA]["inputs"]["strength"] = strength
        if lora_name is not None:
            graph[LORA]["inputs"]["lora_name"] = lora_name
    prefix = f"latents/lora-{uuid.uuid4().hex[:8]}"
    graph["20"] = {"class_type": "SaveLatent", "inputs": {"samples": [SAMPLER, 0], "filename_prefix": prefix}}
    return graph


def cached_nodes(entry: dict) -> set[str]:
    return {n for kind, data in entry["status"]["messages"] if kind == "execution_cached" for n in data["nodes"]}


def run_latent(comfy, graph) -> tuple[torch.Tensor, set[str]]:
    entry = comfy.run(graph, timeout=300)
    path = next(f for f in comfy.output_files(entry) if f.suffix == ".latent")
    return load_file(str(path))["latent_tensor"], cached_nodes(entry)


def test_strength_reruns_the_sampler_only_and_unpatching_is_clean(comfy):
    base, _ = run_latent(comfy, lora_graph(None))
    with_lora, _ = run_latent(comfy, lora_graph(0.8))
    assert not torch.equal(with_lora, base), "the LoRA changed nothing"
    weaker, cached = run_latent(comfy, lora_graph(0.4))
    assert set(LOADERS) <= cached, f"a loader re-ran when only the strength changed (cached: {sorted(cached)})"
    assert SAMPLER not in cached and LORA not in cached
    assert not torch.equal(weaker, with_lora)
    zero, cached = run_latent(comfy, lora_graph(0.0))
    assert SAMPLER not in cached and torch.equal(zero, base), "strength 0 did not give the base latent back"
    again, cached = run_latent(comfy, lora_graph(None))
    assert SAMPLER not in cached and torch.equal(again, base), "without the LoRA node the base latent changed"


def _sd15(path):
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 320),
               "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(320, 4)}, str(path))
    return ["matches no layer of the HunyuanVideo DiT", "Layouts tried"]


def _truncated(path):
    tiny = load_file(str(path.parent / "hyvid_tiny_lora.safetensors"))
    save_file(tiny, str(path))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return ["truncated"]


@pytest.mark.parametrize("kind", ["sd15", "truncated", "pickle"])
def test_a_file_that_is_not_a_hunyuan_lora_is_refused_by_name(comfy, kind):
    folder = comfy.base_dir / "models" / "loras"
    name = f"hyvid_bad_{kind}_{uuid.uuid4().hex[:8]}" + (".pt" if kind == "pickle" else ".safetensors")
    marker = comfy.base_dir / f"pwned_{uuid.uuid4().hex[:8]}"
    if kind == "pickle":
        write_evil(folder / name, marker, "zip")
        expected = ["weights_only"]
    else:
        expected = {"sd15": _sd15, "truncated": _truncated}[kind](folder / name)
    message = comfy.run_expect_error(lora_graph(0.8, name), timeout=120)
    missing = [s for s in [name, *expected] if s not in message]
    assert not missing, f"error message lacks {missing}:\n{message[:3000]}"
    assert not marker.exists(), "unpickling ran code in the server"
    assert_recovers(comfy)
