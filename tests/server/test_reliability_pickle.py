"""Issue 10: a malicious pickle checkpoint is refused by every loader node, and its code never runs.

The payload's ``__reduce__`` makes unpickling call ``os.makedirs(marker)`` in the ComfyUI process (a
stand-in for arbitrary code, as in tests/unit/test_checkpoint_io.py). The file is offered to each
loader node through the real server, in both torch.save (zip) and legacy pickle formats; every job
must fail with a message that names the file and says it was refused, and the marker must never
appear.
"""

from __future__ import annotations

import os
import pickle
import shutil
import uuid

import pytest
import torch

from tests.server.test_reliability_bad_inputs import REWRITE_DIR, assert_recovers, base_graph, rewrite_graph

pytestmark = pytest.mark.server


class _Payload:
    """Unpickling this object runs ``os.makedirs(marker)``."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def write_evil(path, marker, fmt: str) -> None:
    state = {"double_blocks.0.img_attn_qkv.weight": _Payload(str(marker)), "w": torch.zeros(2)}
    if fmt == "zip":
        torch.save(state, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(state, f)


def evil_case(comfy, loader: str, marker, fmt: str) -> tuple[dict, str]:
    models = comfy.base_dir / "models"
    name = f"hyvid_evil_{fmt}_{uuid.uuid4().hex[:8]}"
    if loader == "rewrite":
        folder = models / "LLM" / name
        shutil.copytree(models / REWRITE_DIR, folder, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
        write_evil(folder / "pytorch_model.bin", marker, fmt)
        return rewrite_graph(name), "pytorch_model.bin"
    name += ".pt"
    folder, node, key = {"dit": ("diffusion_models", "3", "dit_name"), "vae": ("vae", "7", "vae_name"),
                         "llm": ("text_encoders", "1", "llm"), "clip": ("text_encoders", "1", "clip")}[loader]
    write_evil(models / folder / name, marker, fmt)
    graph = base_graph()
    graph[node]["inputs"][key] = name
    return graph, name


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
@pytest.mark.parametrize("loader", ["dit", "vae", "llm", "clip", "rewrite"])
def test_malicious_pickle_is_refused_by_every_loader(comfy, loader, fmt):
    marker = comfy.base_dir / f"pwned_{uuid.uuid4().hex[:8]}"
    graph, shown = evil_case(comfy, loader, marker, fmt)
    message = comfy.run_expect_error(graph, timeout=120)
    assert shown in message and "weights_only" in message, message[:3000]
    assert not marker.exists(), f"unpickling ran code in the server: {marker} was created"
    assert_recovers(comfy)
    assert not marker.exists()


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_payload_really_runs_when_unpickled_unsafely(tmp_path, fmt):
    """The check above can fail: an unsafe load of the same file does create the marker."""
    marker = tmp_path / "pwned"
    write_evil(tmp_path / "evil.pt", marker, fmt)
    if fmt == "zip":
        torch.load(tmp_path / "evil.pt", weights_only=False)
    else:
        with open(tmp_path / "evil.pt", "rb") as f:
            pickle.load(f)  # noqa: S301 (the point of this test)
    assert marker.exists()
