"""The README's batch example: many prompts queued on one server with scripts/queue_prompts.py."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from scripts.comfy_server import ROOT
from scripts.smoke_size import shrink

pytestmark = pytest.mark.server


def test_batch_of_prompts_on_one_server(comfy, tmp_path):
    workflow = shrink(json.loads((ROOT / "workflows" / "t2v_basic_api.json").read_text()))
    (tmp_path / "wf.json").write_text(json.dumps(workflow))
    (tmp_path / "prompts.txt").write_text("# three jobs\na cat on a sofa\n\na boat at sea\na city at night\n")
    before = set((comfy.base_dir / "output").rglob("*.mp4"))
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "queue_prompts.py"), str(tmp_path / "wf.json"),
                           str(tmp_path / "prompts.txt"), "--url", comfy.url, "--seed", "7", "--wait"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    ids = proc.stdout.split()
    assert len(ids) == 3 and "3 of 3 jobs succeeded" in proc.stderr
    new = set((comfy.base_dir / "output").rglob("*.mp4")) - before
    assert len(new) == 3, new
    prompts = [comfy.get(f"/history/{pid}")[pid]["prompt"][2]["2"]["inputs"]["prompt"] for pid in ids]
    assert prompts == ["a cat on a sofa", "a boat at sea", "a city at night"]
