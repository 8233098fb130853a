"""Shrink an example workflow to a size tiny random weights run in seconds on a CPU.

The files in workflows/ carry real settings (848x480, 61 frames, 30 steps) for real weights. The
demo and the tests run the same graphs with only these numbers changed.
"""

from __future__ import annotations

import copy

SMOKE_INPUTS = {
    "HunyuanVideoSampler": {"width": 64, "height": 48, "frames": 9},
    "HunyuanVideoScheduler": {"steps": 3},
    "HunyuanVideoPromptRewrite": {"max_new_tokens": 12},
}


def shrink(api: dict) -> dict:
    """A copy of an API-format workflow with the smoke-test sizes (linked inputs are kept)."""
    out = copy.deepcopy(api)
    for node in out.values():
        for name, value in SMOKE_INPUTS.get(node["class_type"], {}).items():
            if name in node["inputs"] and not isinstance(node["inputs"][name], list):
                node["inputs"][name] = value
    return out
