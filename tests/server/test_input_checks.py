"""Every dropdown and number input (required or optional) of every pack node is checked when queued.

ComfyUI 0.3.75 checks neither a V3 node's dropdown values nor NaN/infinity (nodes/types.py,
``CheckedNode``). This goes over the live ``/object_info``, so a new node or input is covered
without editing the test: for each pack node it takes a shipped workflow that holds it, puts one
bad value in one input, queues it through ``POST /prompt`` and wants a 400 whose error for that
node names the input and the value. The cases and answers are written to
artifacts/input_checks.txt.
"""

from __future__ import annotations

import json
import math

import pytest

from scripts.comfy_server import PACK_NAME, ROOT
from scripts.smoke_size import I2V_INPUT, shrink
from tests.harness import size_graph

pytestmark = pytest.mark.server

BAD_CHOICE = "not-a-choice"
ENDPOINT_GRAPH = {
    "1": {"class_type": "HunyuanVideoRewriteEndpoint",
          "inputs": {"endpoint_url": "http://127.0.0.1:9/v1", "model": "m", "timeout_s": 5.0, "max_retries": 0}},
    "2": {"class_type": "HunyuanVideoPromptRewrite",
          "inputs": {"rewrite_model": ["1", 0], "prompt": "a fox", "mode": "Normal", "temperature": 0.7,
                     "top_p": 0.9, "max_new_tokens": 8, "seed": 0}},
}


def multi_device_graph() -> dict:
    """t2v_basic with the Multi-Device node before the sampler (no shipped workflow needs several devices)."""
    graph = shrink(json.loads((ROOT / "workflows" / "t2v_basic_api.json").read_text()))
    graph["30"] = {"class_type": "HunyuanVideoMultiDevice",
                   "inputs": {"dit": ["3", 0], "processes": 2, "device": "cpu", "cfg_parallel": False}}
    graph["6"]["inputs"]["dit"] = ["30", 0]
    return graph


def graphs_by_class() -> dict[str, tuple[dict, str]]:
    """class_type -> (a smoke-size graph holding it, that node's id)."""
    found = {"HunyuanVideoRewriteEndpoint": (ENDPOINT_GRAPH, "1"), "HunyuanVideoMultiDevice": (multi_device_graph(), "30"),
             "HunyuanVideoI2VSize": (size_graph(I2V_INPUT), "82")}  # in no shipped workflow
    for path in sorted((ROOT / "workflows").glob("*_api.json")):
        graph = shrink(json.loads(path.read_text()))
        for node_id, node in graph.items():
            found.setdefault(node["class_type"], (graph, node_id))
    return found


def bad_values(spec: list) -> list:
    kind = spec[0]
    if kind == "COMBO" or isinstance(kind, list):
        return [BAD_CHOICE]
    if kind == "FLOAT":
        return [math.nan, math.inf, -math.inf]
    return []


def shown(value) -> str:
    return BAD_CHOICE if value == BAD_CHOICE else repr(value)  # Python's repr: nan, inf, -inf


def test_every_dropdown_and_float_input_refuses_bad_values(comfy, artifacts):
    info = comfy.object_info()
    pack = {name: node for name, node in info.items() if node.get("python_module") == f"custom_nodes.{PACK_NAME}"}
    assert len(pack) >= 14
    graphs = graphs_by_class()
    assert set(pack) <= set(graphs), f"no graph holds {sorted(set(pack) - set(graphs))}: add one above"
    report, failures = [], []
    for name in sorted(pack):
        graph, node_id = graphs[name]
        inputs = {**pack[name]["input"].get("required", {}), **pack[name]["input"].get("optional", {})}
        for input_name, spec in inputs.items():
            for value in bad_values(spec):
                if isinstance(graph[node_id]["inputs"].get(input_name), list):
                    continue  # fed by a link in this graph
                bad = json.loads(json.dumps(graph))
                bad[node_id]["inputs"][input_name] = value
                status, body = comfy.submit(bad)
                errors = json.dumps((body.get("node_errors") or {}).get(node_id, {}))
                ok = status == 400 and input_name in errors and shown(value) in errors
                line = f"{name}.{input_name}={shown(value)}: HTTP {status} {errors[:300]}"
                report.append(("ok   " if ok else "FAIL ") + line)
                if not ok:
                    failures.append(line)
    (artifacts / "input_checks.txt").write_text("\n".join(report) + "\n")
    print("\n".join(report))
    assert len(report) >= 30, "fewer cases than the pack has dropdown and float inputs"
    assert not failures, "accepted or unclear:\n" + "\n".join(failures)
    assert comfy.alive()
