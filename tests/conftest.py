"""Shared test set-up: import paths for the pack and for ComfyUI's own code (a peer oracle)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from scripts.comfy_server import default_comfyui_dir  # noqa: E402

COMFYUI_DIR = default_comfyui_dir()  # the ComfyUI tree tests run against and take tokenizers from
# ComfyUI goes last so that its top-level modules (nodes, server, utils...) never shadow ours.
if COMFYUI_DIR.is_dir() and str(COMFYUI_DIR) not in sys.path:
    sys.path.append(str(COMFYUI_DIR))

# The shared real ComfyUI server (session-scoped, started only by tests that ask for it).
from tests.harness import artifacts, comfy  # noqa: E402,F401  (fixtures)


@pytest.fixture(scope="session")
def tiny_text_models(tmp_path_factory) -> Path:
    """A models/ folder with the tiny text encoders in every layout (hunyuan.text.tiny), written once; read only."""
    from hunyuan.text.tiny import write_tiny

    root = tmp_path_factory.mktemp("tiny_text_models")
    write_tiny(root, comfyui=COMFYUI_DIR)
    return root
