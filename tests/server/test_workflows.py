"""Every example workflow runs on a real server: API files via POST /prompt, UI files via comfy-cli.

The graphs run as committed except for the sizes in scripts/smoke_size.py (tiny random weights at
848x480x61 would take minutes per job on this CPU); UI files are rebuilt from the shrunk API
graph with the same converter that made them, after a test checked they match.
"""

from __future__ import annotations

import json
import uuid

import av
import pytest

from scripts.comfy_server import ROOT
from scripts.smoke_size import shrink
from scripts.ui_workflow import to_ui

pytestmark = pytest.mark.server

API_FILES = sorted((ROOT / "workflows").glob("*_api.json"))
UI_FILES = [p.with_name(p.name.replace("_api.json", ".json")) for p in API_FILES]


def video_frames(path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def expected_frames(api: dict) -> int | None:
    """Frames the workflow asks for: from the sampler, or 4(T-1)+1 of an encoded input video."""
    for node in api.values():
        if node["class_type"] == "HunyuanVideoSampler" and not isinstance(node["inputs"].get("frames"), list):
            if "latent" not in node["inputs"]:
                return int(node["inputs"]["frames"])
    return None


def check_videos(comfy, files, api):
    videos = [f for f in files if f.suffix == ".mp4"]
    assert videos, f"no video among the outputs {files}"
    want = expected_frames(api)
    for video in videos:
        assert video.stat().st_size > 0
        if want is not None:
            assert video_frames(video) == want, video


def unique_prefix(name: str) -> str:
    """A fresh SaveVideo prefix, so a graph ComfyUI has cached still writes a new file."""
    return f"video/{name}-{uuid.uuid4().hex[:8]}"


@pytest.mark.parametrize("api_file", API_FILES, ids=lambda p: p.name)
def test_api_workflow_runs(comfy, api_file):
    api = shrink(json.loads(api_file.read_text()))
    for node in api.values():
        if node["class_type"] == "SaveVideo":
            node["inputs"]["filename_prefix"] = unique_prefix(api_file.stem)
    entry = comfy.run(api, timeout=600)
    check_videos(comfy, comfy.output_files(entry), api)


@pytest.mark.parametrize("ui_file", UI_FILES, ids=lambda p: p.name)
def test_ui_workflow_runs_through_comfy_cli(comfy, ui_file, tmp_path):
    api = shrink(json.loads(ui_file.with_name(ui_file.name.replace(".json", "_api.json")).read_text()))
    for node in api.values():
        if node["class_type"] == "SaveVideo":
            node["inputs"]["filename_prefix"] = unique_prefix(ui_file.stem)
    (tmp_path / ui_file.name).write_text(json.dumps(to_ui(api, comfy.object_info())))
    before = set((comfy.base_dir / "output").rglob("*.mp4"))
    result = comfy.run_cli(tmp_path / ui_file.name)
    envelope = result["events"][-1]
    assert envelope.get("ok") is True and envelope["data"]["status"] == "completed", envelope
    new = sorted(set((comfy.base_dir / "output").rglob("*.mp4")) - before)
    check_videos(comfy, new, api)
