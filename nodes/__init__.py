"""ComfyUI adapters, one module per pipeline stage.

Each stage module exposes ``NODES``: the ``io.ComfyNode`` classes it defines. Only this layer
imports comfy / folder_paths / server; the model code lives in ``hunyuan/``.
"""

from __future__ import annotations

import importlib

# Stage modules, in pipeline order.
STAGE_MODULES = ("rewrite", "text", "dit", "lora", "blockswap", "sampler", "i2v", "multi", "vae")


def all_nodes() -> list[type]:
    return [node for name in STAGE_MODULES for node in importlib.import_module(f"{__name__}.{name}").NODES]
