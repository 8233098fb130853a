"""The pack's node modules imported as ComfyUI imports them (a package around the repo root),
with ComfyUI on the CPU, and the block-swap "separate device" stand-in, for unit tests.

Importing this module sets ComfyUI's ``--cpu`` before ``comfy.model_management`` is imported.
"""

from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path

import comfy.cli_args
import torch

comfy.cli_args.args.cpu = True  # no GPU here

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


def pack_module(name: str):
    """``pack_module("nodes.lora")``: the module as ComfyUI's import of the pack makes it."""
    if "hyvid_pack" not in sys.modules:
        pack = types.ModuleType("hyvid_pack")
        pack.__path__ = [str(ROOT)]
        sys.modules["hyvid_pack"] = pack
    return importlib.import_module(f"hyvid_pack.{name}")


def comfy_module(name: str):
    """A ComfyUI module (``"comfy.model_patcher"``), imported after ``--cpu`` is set above."""
    return importlib.import_module(name)
