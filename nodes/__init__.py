"""ComfyUI adapters, one module per pipeline stage.

Each stage module exposes ``NODES``: the ``io.ComfyNode`` classes it defines. Only this layer
imports comfy / folder_paths / server; the model code lives in ``hunyuan/``.
"""

from __future__ import annotations

import importlib
import logging

log = logging.getLogger(__name__)

# Stage modules, in pipeline order. A stage whose module is missing is skipped so that the
# pack grows one stage at a time; an import *error* inside an existing module is raised.
STAGE_MODULES = ("rewrite", "text", "dit", "lora", "blockswap", "sampler", "i2v", "multi", "vae")


def all_nodes() -> list[type]:
    nodes: list[type] = []
    for name in STAGE_MODULES:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
            continue
        nodes.extend(module.NODES)
    return nodes
