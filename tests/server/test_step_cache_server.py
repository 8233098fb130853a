"""The Step Cache node through a real ComfyUI server: t2v_fast at the smoke size with more steps."""

from __future__ import annotations

import json
import re

import pytest
from safetensors.torch import load_file

from scripts.comfy_server import ROOT
from scripts.smoke_size import shrink

pytestmark = pytest.mark.server

STEPS = 8


def fast_graph(rule: str, threshold: float, prefix: str) -> dict:
    graph = shrink(json.loads((ROOT / "workflows" / "t2v_fast_api.json").read_text()))
    graph["4"]["inputs"]["steps"] = STEPS
    graph["20"]["inputs"].update(rule=rule, threshold=threshold)
    for node in ("9", "10"):
        del graph[node]
    graph["30"] = {"class_type": "SaveLatent", "inputs": {"samples": ["6", 0], "filename_prefix": f"latents/{prefix}"}}
    return graph


def latent_of(comfy, entry):
    path = next(f for f in comfy.output_files(entry) if f.suffix == ".latent")
    return load_file(str(path))["latent_tensor"]


@pytest.mark.parametrize("rule", ["teacache", "first_block", "easycache"])
def test_threshold_zero_equals_no_cache_and_a_high_one_skips(comfy, rule):
    plain = fast_graph(rule, 0.0, f"plain_{rule}")
    plain["6"]["inputs"]["dit"] = ["21", 0]  # the sampler bypasses the cache node (compiled all the same)
    del plain["20"]
    reference = latent_of(comfy, comfy.run(plain))
    mark = comfy.log_size()
    same = latent_of(comfy, comfy.run(fast_graph(rule, 0.0, f"zero_{rule}")))
    assert same.equal(reference)
    comfy.run(fast_graph(rule, 2.0, f"high_{rule}"))
    log = comfy.log_path.read_bytes()[mark:].decode(errors="replace")
    counts = re.findall(rf"step cache {rule} \(threshold ([\d.]+)\): cond: (\d+) computed, (\d+) skipped", log)
    assert [c[0] for c in counts] == ["0", "2"], log[-2000:]
    assert counts[0][1:] == (str(STEPS), "0")
    computed, skipped = int(counts[1][1]), int(counts[1][2])
    assert computed + skipped == STEPS and skipped > 0 and computed >= 2
