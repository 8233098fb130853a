"""Block swap for the DiT: the DiT's ModelPatcher, the Block Swap node, and auto mode's choice.

The DiT loader makes every DiT patcher a :class:`BlockSwapPatcher`; ``clone()`` keeps the class, and
the swap settings ride in the model options (``with_option``), so every node's clone carries them.
Without settings, or on a CPU, the patcher is ComfyUI's own ModelPatcher in all but name.

Loading with swap goes through ComfyUI's ``ModelPatcher.load`` with the host as its device: it
patches the weights (a LoRA included) and keeps all of its bookkeeping; the engine then moves the
resident part to the device and keeps the swapped blocks, already patched, in host memory. A
swapped block's weights are so patched once per load, not per step (no per-step cost; the host
holds the unpatched originals as ComfyUI's backup, as for any patched weight).

The engine is placement state of the model, like ComfyUI's own ``current_weight_patches_uuid``
and ``model_loaded_weight_memory``: ComfyUI unpatches a model through whichever patcher loads it
next, not always the one that placed it, so every patcher of one DiT must find it. It lives in a
:class:`SwapPlacement` that the first patcher of the DiT attaches (a ModelPatcher attachment) and
``clone()`` passes on by reference, never in an attribute of the model.
"""

from __future__ import annotations

import logging
import uuid

import comfy.model_management as mm
import comfy.model_patcher
import torch
from comfy_api.latest import io

from ..hunyuan.memory import plan_swap
from ..hunyuan.offload import BlockSwapEngine, SwapSettings, make_engine, resident_bytes
from .types import CATEGORY, CheckedNode, DiT, option, with_option

log = logging.getLogger(__name__)

SWAP_KEY = "hyvid_block_swap"  # a with_option() key: the SwapSettings
PLACEMENT_KEY = "hyvid_swap_placement"  # a patcher attachment, shared by every clone of one DiT's patcher


class SwapPlacement:
    """The swap engine that placed the DiT's weights now (None when no swap placement is loaded)."""

    def __init__(self):
        self.engine: BlockSwapEngine | None = None


class BlockSwapPatcher(comfy.model_patcher.ModelPatcher):
    """The DiT's ModelPatcher: with swap settings, the swapped blocks stay in host memory on load.

    ComfyUI sizes models by ``model_size()``: with swap that is the real resident size (weights
    not swapped + the blocks in flight), so its memory planning sees what the GPU will hold.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.set_attachments(PLACEMENT_KEY, SwapPlacement())  # clone() replaces it with its parent's

    @property
    def placement(self) -> SwapPlacement:
        return self.get_attachment(PLACEMENT_KEY)

    @property
    def swap_settings(self) -> SwapSettings | None:
        return option(self, SWAP_KEY)

    def _separate_device(self) -> bool:
        load, offload = torch.device(self.load_device), torch.device(self.offload_device)
        return load != offload and load.type != "cpu"

    def _swapping(self) -> bool:
        settings = self.swap_settings
        return settings is not None and settings.swaps_anything and self._separate_device()

    def model_size(self) -> int:
        if not self._swapping():
            return super().model_size()
        return resident_bytes(self.model, self.swap_settings)

    def load(self, device_to=None, lowvram_model_memory=0, force_patch_weights=False, full_load=False):
        device_to = device_to or self.load_device
        settings = self.swap_settings  # make_engine decides (and logs why not, e.g. on a CPU)
        engine = make_engine(self.model, settings, device_to, offload_device=self.offload_device) if settings else None
        if engine is None:
            return super().load(device_to, lowvram_model_memory, force_patch_weights, full_load)
        super().load(self.offload_device, 0, force_patch_weights, full_load=True)  # patches + bookkeeping
        with self.use_ejected():
            engine.place()
        self.placement.engine = engine
        self.model.device = device_to
        self.model.model_loaded_weight_memory = engine.resident_bytes()
        return None

    def unpatch_model(self, device_to=None, unpatch_weights=True):
        engine = self.placement.engine
        if unpatch_weights and engine is not None:
            engine.deactivate()
            self.placement.engine = None
        return super().unpatch_model(device_to, unpatch_weights)


def with_swap(patcher, settings: SwapSettings):
    """A clone carrying ``settings``, with its own placement id: switching between it and the
    plain DiT (same module) always re-places the weights."""
    clone = with_option(patcher, SWAP_KEY, settings)
    clone.patches_uuid = uuid.uuid4()
    return clone


def active_engine(patcher) -> BlockSwapEngine | None:
    """The engine that placed this patcher's model, if that placement is the current one."""
    placement = patcher.get_attachment(PLACEMENT_KEY)
    engine = placement.engine if placement is not None else None
    if engine is None or patcher.model.current_weight_patches_uuid != patcher.patches_uuid:
        return None
    return engine


def weight_dtype(model) -> torch.dtype:
    """Storage dtype of the bulk of the weights (fp8 checkpoints keep norms wider)."""
    return max(model.parameters(), key=lambda p: p.numel()).dtype


def plan_bytes(dit) -> int:
    """What block swap "auto" plans with in ComfyUI's process: the device's free memory, plus
    whatever of this DiT is loaded now (by any of its patchers: it is freed before our clone
    loads), less ComfyUI's own reserve."""
    free = mm.get_free_memory(dit.load_device) + dit.model.model_loaded_weight_memory
    return int(free - mm.extra_reserved_memory())


def run_sizes(model, sizes: dict) -> dict:
    """``sizes`` (:func:`hunyuan.memory.sampling_sizes`) with this DiT's weight and compute dtypes:
    what the planner takes for a run of it in this process."""
    return {**sizes, "weight_dtype": weight_dtype(model), "compute_dtype": model.compute_dtype}


def swap_for_run(dit, sizes: dict):
    """The patcher to load: auto mode resolves counts for this run (``sizes``:
    :func:`hunyuan.memory.sampling_sizes`) and the free memory (:func:`plan_bytes`).

    The clones are cached on this patcher object itself, not in its options: a clone of it (a
    LoRA on top, say) must not reuse them, since they carry this patcher's patches.
    """
    settings = option(dit, SWAP_KEY)
    if settings is None or settings.mode != "auto" or not dit._separate_device():
        return dit
    chosen, why = plan_swap(dit.model.config, plan_bytes(dit), settings, **run_sizes(dit.model, sizes))
    cache = dit.__dict__.setdefault("_hyvid_auto_clones", {})
    if chosen not in cache:
        log.info("%s", why)
        cache[chosen] = with_swap(dit, chosen)
    return cache[chosen]


class HunyuanVideoBlockSwap(CheckedNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HunyuanVideoBlockSwap",
            display_name="HunyuanVideo Block Swap",
            category=CATEGORY,
            description="Keeps some DiT blocks in (pinned) system memory and streams them to the GPU just "
            "ahead of use, so the 13B model fits on smaller GPUs.",
            inputs=[
                DiT.Input("dit", tooltip="The DiT from HunyuanVideo DiT Loader."),
                io.Int.Input("double_blocks", default=20, min=0, max=20,
                             tooltip="How many of the 20 double-stream blocks (~648 MiB each in bf16) to keep in "
                             "system memory (manual mode)."),
                io.Int.Input("single_blocks", default=0, min=0, max=40,
                             tooltip="How many of the 40 single-stream blocks (~270 MiB each in bf16) to keep in "
                             "system memory (manual mode)."),
                io.Int.Input("prefetch", default=1, min=0, max=8,
                             tooltip="Blocks copied ahead while the current one computes. Each costs one block of "
                             "GPU memory; 1-2 hides the copy time on most PCIe systems. 0 = load on use."),
                io.Boolean.Input("offload_txt_in", default=False,
                                 tooltip="Keep the token refiner in system memory. The loader already gives it its "
                                 "own model (sampling never needs it), so this matters only for a DiT that still "
                                 "carries it."),
                io.Boolean.Input("offload_img_in", default=False,
                                 tooltip="Keep the patch embedding (tiny, ~0.4 MB) in system memory too."),
                io.Combo.Input("mode", options=["manual", "auto"], default="manual",
                               tooltip="manual: swap the counts above. auto: at sampling time pick the fewest "
                               "swapped bytes that fit the free VRAM for that video size (counts ignored); on "
                               "multi-device workers each worker picks for its own GPU and its share of the video."),
            ],
            outputs=[DiT.Output(display_name="dit", tooltip="A clone of the DiT carrying the swap settings.")],
        )

    @classmethod
    def execute(cls, dit, double_blocks, single_blocks, prefetch, offload_txt_in, offload_img_in, mode) -> io.NodeOutput:
        settings = SwapSettings(double_blocks, single_blocks, prefetch, offload_txt_in, offload_img_in, mode)
        config = dit.model.config
        settings = settings.clamp(config.depth_double, config.depth_single)
        return io.NodeOutput(with_swap(dit, settings))



NODES = [HunyuanVideoBlockSwap]
