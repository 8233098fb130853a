"""Which DiT weight each LoRA layer name means, in every layout HunyuanVideo LoRAs are shared in.

The DiT's own weights carry Tencent's names (``double_blocks.0.img_attn_qkv.weight``). A LoRA
names the layer it changes in one of these layouts (``<x>`` is the layer name, dots kept unless
the layout says ``_``):

* ``comfy``: ComfyUI's internal names (``img_attn.qkv``, ``img_mlp.0``, ``img_mod.lin``) as
  ``diffusion_model.<x>``, bare ``<x>`` or ``lora_unet_<x with _>``;
* ``tencent``: diffusion-pipe and musubi-tuner's converted files, Tencent names as
  ``transformer.<x>``, ``diffusion_model.<x>`` or bare;
* ``musubi``: musubi-tuner's own ``lora_unet_<Tencent name with _>`` (``img_mlp_fc1``, ``img_mod_linear``);
* ``diffusers``: diffusers / PEFT names (``transformer.transformer_blocks.0.attn.to_q``, bare, or
  ``base_model.model.`` as PEFT's own ``save_pretrained`` writes them), with the
  q, k, v (and single-block mlp) parts each applied to their rows of the fused Tencent weight;
* ``kohya``: kohya / OneTrainer's ``lora_transformer_<diffusers name with _>``.

A target is what ComfyUI's ``comfy.lora.load_lora`` takes as a value of its key map: a weight
name, or ``(weight name, (dim, first, count) or None, function or None)`` for a part of a fused
weight or one stored in another order. This module only names; reading the LoRA tensors (alpha,
ranks, LoHa, LoKr...) is ComfyUI's.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from .keymap import SWAPPED_HALVES, comfy_key, diffusers_parts, swap_halves

LAYOUTS = {
    "comfy": "ComfyUI (diffusion_model.<comfy name>, bare, lora_unet_<comfy name>)",
    "tencent": "diffusion-pipe / musubi converted (transformer.<Tencent name>, diffusion_model.<Tencent name>)",
    "musubi": "musubi-tuner (lora_unet_<Tencent name>)",
    "diffusers": "diffusers / PEFT (transformer.transformer_blocks.N.attn.to_q ...)",
    "kohya": "kohya / OneTrainer (lora_transformer_<diffusers name>)",
}
BLOCK_KINDS = ("double_blocks", "single_blocks")
_BLOCK = re.compile(r"^(double_blocks|single_blocks)\.(\d+)\.")


def block_of(key: str) -> tuple[str, int] | None:
    """('double_blocks', 3) for a key inside double block 3; None outside the block stacks."""
    m = _BLOCK.match(key)
    return (m.group(1), int(m.group(2))) if m else None


def parse_blocks(text: str, count: int, name: str) -> frozenset[int]:
    """Block indices from ``'all'``, ``'none'`` or a list like ``'0-4, 7'``; a clear error otherwise."""
    text = text.strip().lower()
    if text in ("", "all"):
        return frozenset(range(count))
    if text == "none":
        return frozenset()
    chosen: set[int] = set()
    for part in text.split(","):
        m = re.fullmatch(r"\s*(\d{1,6})\s*(?:-\s*(\d{1,6})\s*)?", part)  # more digits: not a block
        if not m:
            raise ValueError(f"{name}={text!r}: {part.strip()!r} is not a block number or range; "
                             f"expected 'all', 'none' or a list like '0-4, 7' (blocks 0..{count - 1})")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if lo > hi or hi >= count:
            raise ValueError(f"{name}={text!r}: {part.strip()!r} is outside blocks 0..{count - 1}")
        chosen.update(range(lo, hi + 1))
    return frozenset(chosen)


@dataclass
class LoraKeyMap:
    """LoRA layer name -> target, and which layouts use each name."""

    targets: dict[str, object] = field(default_factory=dict)
    layouts: dict[str, set[str]] = field(default_factory=dict)

    def add(self, name: str, target, layout: str) -> None:
        self.targets.setdefault(name, target)
        self.layouts.setdefault(name, set()).add(layout)


def _names(base: str, rows: int, hidden: int):
    """(layout, LoRA layer name, slice or None, function or None) for one weight's name without '.weight'."""
    comfy = comfy_key(base + ".weight")
    if comfy.endswith(".weight"):  # ComfyUI calls the q/k norms' weights 'scale': no LoRA names them
        comfy = comfy[: -len(".weight")]
        for name in (f"diffusion_model.{comfy}", comfy, "lora_unet_" + comfy.replace(".", "_")):
            yield "comfy", name, None, None
    for name in (f"transformer.{base}", f"diffusion_model.{base}", base):
        yield "tencent", name, None, None
    yield "musubi", "lora_unet_" + base.replace(".", "_"), None, None
    function = swap_halves if (base + ".").startswith(SWAPPED_HALVES) else None
    for name, span in diffusers_parts(base + ".", rows, hidden):
        name = name.rstrip(".")
        for full in (f"transformer.{name}", name, f"base_model.model.{name}"):  # the last: PEFT's own save
            yield "diffusers", full, span, function
        yield "kohya", "lora_transformer_" + name.replace(".", "_"), span, function


def lora_key_map(shapes: Mapping[str, tuple[int, ...]], hidden: int,
                 blocks: Mapping[str, Iterable[int]] | None = None) -> LoraKeyMap:
    """Every name a LoRA may give each ``.weight`` of a DiT whose state-dict shapes are ``shapes``.

    ``blocks`` (``{'double_blocks': {0, 1}, 'single_blocks': set()}``) leaves out the weights of
    blocks not listed; weights outside the block stacks are always kept.
    """
    chosen = {kind: frozenset(blocks[kind]) for kind in BLOCK_KINDS} if blocks is not None else None
    out = LoraKeyMap()
    for key, shape in shapes.items():
        if not key.endswith(".weight"):
            continue
        where = block_of(key)
        if chosen is not None and where is not None and where[1] not in chosen[where[0]]:
            continue
        base = key[: -len(".weight")]
        for layout, name, span, function in _names(base, shape[0], hidden):
            target = key if span is None and function is None else (key, None if span is None else (0, *span), function)
            out.add(name, target, layout)
    return out


@dataclass
class LoraMatch:
    """How a LoRA file's tensors fall on a key map."""

    layers: dict[str, list[str]]  # LoRA layer name -> its tensor keys
    unmatched: list[str]
    layouts: Counter

    @property
    def matched_tensors(self) -> int:
        return sum(len(v) for v in self.layers.values())

    def detected(self) -> str:
        """The layout(s) that name the most matched layers, e.g. ``'comfy'`` or ``'comfy or musubi'``."""
        if not self.layouts:
            return "none"
        top = max(self.layouts.values())
        return " or ".join(sorted(k for k, v in self.layouts.items() if v == top))


def match(lora_keys: Iterable[str], key_map: LoraKeyMap) -> LoraMatch:
    """Group each LoRA tensor key under the longest layer name of ``key_map`` it starts with."""
    layers: dict[str, list[str]] = {}
    unmatched: list[str] = []
    for key in lora_keys:
        cuts = [i for i, ch in enumerate(key) if ch == "."]
        name = next((key[:i] for i in reversed(cuts) if key[:i] in key_map.targets), None)
        if name is None:
            unmatched.append(key)
        else:
            layers.setdefault(name, []).append(key)
    layouts: Counter = Counter()
    for name in layers:
        layouts.update(key_map.layouts[name])
    return LoraMatch(layers, unmatched, layouts)


# How the low-rank factors are named: (suffix of the factor that gives the rows, of the one that
# takes the input). Other kinds (LoKr, full diffs) are checked by ComfyUI when it patches.
_FACTORS = (
    (".lora_up.weight", ".lora_down.weight"),
    (".lora_B.weight", ".lora_A.weight"),
    (".lora.up.weight", ".lora.down.weight"),
    ("_lora.up.weight", "_lora.down.weight"),
    (".lora_linear_layer.up.weight", ".lora_linear_layer.down.weight"),
    (".hada_w1_a", ".hada_w1_b"),
    (".hada_w2_a", ".hada_w2_b"),
)


def _fits(target, shapes: Mapping[str, tuple[int, ...]]) -> tuple[str, int, int]:
    key = target if isinstance(target, str) else target[0]
    shape = shapes[key]
    rows = shape[0] if isinstance(target, str) or target[1] is None else target[1][2]
    cols = 1
    for s in shape[1:]:
        cols *= s
    return key, rows, cols


def shape_problems(found: LoraMatch, lora: Mapping, key_map: LoraKeyMap,
                   shapes: Mapping[str, tuple[int, ...]]) -> list[str]:
    """Matched layers whose factors do not fit the weight they name (a LoRA for another model
    or another size of this one); ComfyUI would skip them with only a log line."""
    problems = []
    for layer in found.layers:
        key, rows, cols = _fits(key_map.targets[layer], shapes)
        for up, down in _FACTORS:
            a, b = lora.get(layer + up), lora.get(layer + down)
            if a is None or b is None:
                continue
            got_rows, got_cols = a.shape[0], b[0].numel() if b.ndim > 1 else 0
            if (got_rows, got_cols) != (rows, cols):
                problems.append(f"{layer} gives a [{got_rows} x {got_cols}] change but {key} needs [{rows} x {cols}]")
    return problems
