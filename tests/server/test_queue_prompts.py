"""The README's batch example: many prompts queued on one server with scripts/queue_prompts.py."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from scripts.comfy_server import ROOT
from scripts.smoke_size import shrink

pytestmark = pytest.mark.server


def _queue(comfy, tmp_path, name: str, *extra: str) -> subprocess.CompletedProcess:
    workflow = shrink(json.loads((ROOT / "workflows" / name).read_text()))
    (tmp_path / "wf.json").write_text(json.dumps(workflow))
    (tmp_path / "prompts.txt").write_text("# three jobs\na cat on a sofa\n\na boat at sea\na city at night\n")
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "queue_prompts.py"), str(tmp_path / "wf.json"),
                           str(tmp_path / "prompts.txt"), "--url", comfy.url, "--seed", "7", "--wait", *extra],
                          capture_output=True, text=True, timeout=900)


@pytest.mark.parametrize(("name", "node", "field"), [("t2v_basic_api.json", "2", "prompt"),
                                                      ("t2v_native_text_api.json", "18", "text")])
def test_batch_of_prompts_on_one_server(comfy, tmp_path, name, node, field):
    before = set((comfy.base_dir / "output").rglob("*.mp4"))
    proc = _queue(comfy, tmp_path, name, "--prompt-node", node)
    assert proc.returncode == 0, proc.stderr
    ids = proc.stdout.split()
    assert len(ids) == 3 and "3 of 3 jobs succeeded" in proc.stderr
    new = set((comfy.base_dir / "output").rglob("*.mp4")) - before
    assert len(new) == 3, new
    prompts = [comfy.get(f"/history/{pid}")[pid]["prompt"][2][node]["inputs"][field] for pid in ids]
    assert prompts == ["a cat on a sofa", "a boat at sea", "a city at night"]


def test_a_prompt_node_without_text_is_a_clear_error(comfy, tmp_path):
    proc = _queue(comfy, tmp_path, "t2v_basic_api.json", "--prompt-node", "3")
    assert proc.returncode == 2 and "--prompt-node=3 (HunyuanVideoDiTLoader) has no 'prompt' or 'text' input" in proc.stderr
