"""The README's main job (scripts/demo.py) writes a real video with the expected frame count."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import av
import pytest

from scripts.comfy_server import ROOT
from scripts.smoke_size import shrink

pytestmark = pytest.mark.server


def test_demo_writes_a_video(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "demo.py"), "--base-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    match = re.search(r"\[demo\] video written: (\S+) \((\d+) frames\)", proc.stdout)
    assert match, proc.stdout
    video = Path(match.group(1))
    assert video.is_file() and video.is_relative_to(tmp_path / "output")
    workflow = shrink(json.loads((ROOT / "workflows" / "t2v_basic_api.json").read_text()))
    frames = next(n["inputs"]["frames"] for n in workflow.values() if n["class_type"] == "HunyuanVideoSampler")
    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    assert len(decoded) == frames == int(match.group(2))
    height, width = decoded[0].shape[:2]
    sampler = next(n["inputs"] for n in workflow.values() if n["class_type"] == "HunyuanVideoSampler")
    assert (width, height) == (sampler["width"], sampler["height"])
