"""The LoRA node: a LoRA file from models/loras as ModelPatcher weight patches on the DiT.

The names are mapped by ``hunyuan/dit/lora_keys.py`` (every layout HunyuanVideo LoRAs come in);
reading the tensors (alpha, per-layer ranks, LoHa, LoKr, diffs) is ComfyUI's ``comfy.lora``, and
the patches are applied, cast and removed by ComfyUI's ModelPatcher like any other model's.
"""

from __future__ import annotations

import logging

import comfy.lora
import folder_paths
from comfy_api.latest import io

from ..hunyuan.checkpoint_io import CheckpointError, load_state_dict
from ..hunyuan.dit.lora_keys import (
    BLOCK_KINDS,
    LAYOUTS,
    LoraMatch,
    lora_key_map,
    match,
    parse_blocks,
    shape_problems,
)
from .types import CATEGORY, CheckedNode, DiT

log = logging.getLogger(__name__)
SHOWN_KEYS = 5  # unmatched keys named in the log and in errors


def block_selection(dit, double_blocks: str, single_blocks: str) -> dict[str, frozenset[int]]:
    config = dit.model.config
    return {
        "double_blocks": parse_blocks(double_blocks, config.depth_double, "double_blocks"),
        "single_blocks": parse_blocks(single_blocks, config.depth_single, "single_blocks"),
    }


def lora_patches(dit, lora: dict, name: str, blocks: dict[str, frozenset[int]] | None = None):
    """(ComfyUI patch dict, match report) for a LoRA state dict on ``dit``; raises when nothing matches."""
    shapes = {k: tuple(v.shape) for k, v in dit.model.state_dict().items()}
    key_map = lora_key_map(shapes, dit.model.config.hidden_size, blocks)
    found = match(lora.keys(), key_map)
    if not found.layers:
        raise ValueError(_nothing_matched(name, lora, found, blocks))
    misfits = shape_problems(found, lora, key_map, shapes)
    if misfits:
        raise ValueError(f"LoRA {name!r} does not fit this HunyuanVideo DiT ({len(misfits)} layers): "
                         f"{'; '.join(misfits[:3])}. Is it for another model (Flux LoRAs share many layer "
                         "names) or another size of this one?")
    to_load = {layer: key_map.targets[layer] for layer in found.layers}
    return comfy.lora.load_lora(lora, to_load, log_missing=False), found


def _nothing_matched(name: str, lora: dict, found: LoraMatch, blocks) -> str:
    first = ", ".join(found.unmatched[:SHOWN_KEYS]) or "none (the file holds no tensors)"
    where = "" if blocks is None else " in the selected blocks"
    return (f"LoRA {name!r} matches no layer of the HunyuanVideo DiT{where} ({len(lora)} tensors; first keys: "
            f"{first}). Layouts tried: {'; '.join(LAYOUTS.values())}. Is it a LoRA for another model?")


def _log_match(name: str, found: LoraMatch, applied: int, total: int) -> None:
    log.info("HunyuanVideo LoRA %s: layout %s, %d of %d tensors matched, %d weights patched",
             name, found.detected(), found.matched_tensors, total, applied)
    if found.unmatched:
        refiner = sum("txt_in" in k or "context_embedder" in k for k in found.unmatched)
        log.warning("HunyuanVideo LoRA %s: %d tensors not applied%s, first: %s", name, len(found.unmatched),
                    f" ({refiner} of them for the token refiner, which LoRAs here do not patch)" if refiner else "",
                    ", ".join(found.unmatched[:SHOWN_KEYS]))


class HunyuanVideoLoraLoader(CheckedNode):
    CHOICES_FROM = {"lora_name": "models/loras"}

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HunyuanVideoLoraLoader",
            display_name="HunyuanVideo LoRA Loader",
            category=CATEGORY,
            description="Applies a HunyuanVideo LoRA (ComfyUI, diffusion-pipe, musubi-tuner, diffusers/PEFT, "
            "kohya/OneTrainer layouts; LoRA, LoHa, LoKr) to the DiT. Chain several for several LoRAs.",
            inputs=[
                DiT.Input("dit", tooltip="The DiT (from the loader or another LoRA Loader)."),
                io.Combo.Input("lora_name", options=folder_paths.get_filename_list("loras"),
                               tooltip="The LoRA file in models/loras (.safetensors; .pt read without running code)."),
                io.Float.Input("strength", default=1.0, min=-10.0, max=10.0, step=0.01,
                               tooltip="Multiplies the LoRA's change of each weight (alpha/rank scaling included). "
                               "0 leaves the DiT as it is."),
                io.String.Input("double_blocks", default="all",
                                tooltip="Double-stream blocks (0-19) the LoRA may change: 'all', 'none' or a list "
                                "like '0-9, 15'. Layers outside the blocks are always changed."),
                io.String.Input("single_blocks", default="all",
                                tooltip="Single-stream blocks (0-39) the LoRA may change: 'all', 'none' or a list "
                                "like '0-19'."),
            ],
            outputs=[DiT.Output(display_name="dit", tooltip="A clone of the DiT carrying the LoRA's patches.")],
        )

    @classmethod
    def validate_inputs(cls, **values) -> bool | str:
        checked = super().validate_inputs(**values)
        if checked is not True:
            return checked
        for kind, most in zip(BLOCK_KINDS, (20, 40)):
            text = values.get(kind)
            if isinstance(text, str):  # the real depth is checked again when the DiT is known
                try:
                    parse_blocks(text, most, kind)
                except ValueError as exc:
                    return str(exc)
        return True

    @classmethod
    def execute(cls, dit, lora_name: str, strength: float, double_blocks: str, single_blocks: str) -> io.NodeOutput:
        path = folder_paths.get_full_path_or_raise("loras", lora_name)
        try:
            lora = load_state_dict(path)
        except CheckpointError as exc:
            raise CheckpointError(f"LoRA {lora_name!r}: {exc}") from exc
        everything = double_blocks.strip().lower() in ("", "all") and single_blocks.strip().lower() in ("", "all")
        blocks = None if everything else block_selection(dit, double_blocks, single_blocks)
        patches, found = lora_patches(dit, lora, lora_name, blocks)
        if strength == 0:
            _log_match(lora_name, found, 0, len(lora))
            return io.NodeOutput(dit)
        clone = dit.clone()
        applied = clone.add_patches(patches, strength)
        _log_match(lora_name, found, len(applied), len(lora))
        return io.NodeOutput(clone)


NODES = [HunyuanVideoLoraLoader]
