"""Key layouts of DiT checkpoints, all mapped to Tencent's bare layout (what our module uses).

* ``tencent``: the released ``mp_rank_00_model_states.pt`` names (``double_blocks.0.img_attn_qkv``).
* ``comfy``: ComfyUI's internal names (``img_attn.qkv``, ``img_mlp.0``, ``norm.query_norm.scale``),
  as found in files ComfyUI saved (``model.model.`` prefix). ComfyUI's repackaged downloads keep
  Tencent names under ``model.diffusion_model.``; both are handled.
* ``diffusers``: ``HunyuanVideoTransformer3DModel`` (q/k/v split, final adaLN as [scale; shift]).

Each ``from_*`` maps a layout to Tencent's; ``to_*`` goes the other way (tests, export).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

Rules = list[tuple[str, str]]

PREFIXES = ("model.diffusion_model.", "model.model.", "diffusion_model.", "transformer.", "module.")

# Renames between Tencent and ComfyUI as (tencent, comfy) templates, applied in order, every one
# that matches. A template is literal text with optional ``^``/``$`` anchors and ``{slot}``s: the
# part of the key a slot matches (its pattern in _SLOTS) is kept as found. Both directions are
# compiled from this one list.
_COMFY_PAIRS: list[tuple[str, str]] = [
    ("^txt_in.c_embedder.linear_1.", "^txt_in.c_embedder.in_layer."),
    ("^txt_in.c_embedder.linear_2.", "^txt_in.c_embedder.out_layer."),
    ("^{embedder}.mlp.0.", "^{embedder}.in_layer."),
    ("^{embedder}.mlp.2.", "^{embedder}.out_layer."),
    ("{stream}_mod.linear.", "{stream}_mod.lin."),
    (".modulation.linear.", ".modulation.lin."),
    ("{attn}_attn_qkv.", "{attn}_attn.qkv."),
    ("{attn}_attn_proj.", "{attn}_attn.proj."),
    ("{stream}_attn_q_norm.weight$", "{stream}_attn.norm.query_norm.scale$"),
    ("{stream}_attn_k_norm.weight$", "{stream}_attn.norm.key_norm.scale$"),
    ("^single_blocks.{i}.q_norm.weight$", "^single_blocks.{i}.norm.query_norm.scale$"),
    ("^single_blocks.{i}.k_norm.weight$", "^single_blocks.{i}.norm.key_norm.scale$"),
    ("{mlp}.fc1.", "{mlp}.0."),
    ("{mlp}.fc2.", "{mlp}.2."),
]

# Plain renames between Tencent and diffusers as (tencent, diffusers) prefixes; "{i}" is a block
# index. q/k/v splits are in _FUSED.
_RB = "txt_in.individual_token_refiner.blocks.{i}."
_DRB = "context_embedder.token_refiner.refiner_blocks.{i}."
_DIFFUSERS_PAIRS: list[tuple[str, str]] = [
    ("img_in.", "x_embedder."),
    ("txt_in.input_embedder.", "context_embedder.proj_in."),
    ("txt_in.t_embedder.mlp.0.", "context_embedder.time_text_embed.timestep_embedder.linear_1."),
    ("txt_in.t_embedder.mlp.2.", "context_embedder.time_text_embed.timestep_embedder.linear_2."),
    ("txt_in.c_embedder.", "context_embedder.time_text_embed.text_embedder."),
    (_RB + "self_attn_proj.", _DRB + "attn.to_out.0."),
    (_RB + "mlp.fc1.", _DRB + "ff.net.0.proj."),
    (_RB + "mlp.fc2.", _DRB + "ff.net.2."),
    (_RB + "adaLN_modulation.1.", _DRB + "norm_out.linear."),
    (_RB + "norm1.", _DRB + "norm1."),
    (_RB + "norm2.", _DRB + "norm2."),
    ("time_in.mlp.0.", "time_text_embed.timestep_embedder.linear_1."),
    ("time_in.mlp.2.", "time_text_embed.timestep_embedder.linear_2."),
    ("guidance_in.mlp.0.", "time_text_embed.guidance_embedder.linear_1."),
    ("guidance_in.mlp.2.", "time_text_embed.guidance_embedder.linear_2."),
    ("vector_in.in_layer.", "time_text_embed.text_embedder.linear_1."),
    ("vector_in.out_layer.", "time_text_embed.text_embedder.linear_2."),
    ("double_blocks.{i}.img_mod.linear.", "transformer_blocks.{i}.norm1.linear."),
    ("double_blocks.{i}.txt_mod.linear.", "transformer_blocks.{i}.norm1_context.linear."),
    ("double_blocks.{i}.img_attn_q_norm.", "transformer_blocks.{i}.attn.norm_q."),
    ("double_blocks.{i}.img_attn_k_norm.", "transformer_blocks.{i}.attn.norm_k."),
    ("double_blocks.{i}.txt_attn_q_norm.", "transformer_blocks.{i}.attn.norm_added_q."),
    ("double_blocks.{i}.txt_attn_k_norm.", "transformer_blocks.{i}.attn.norm_added_k."),
    ("double_blocks.{i}.img_attn_proj.", "transformer_blocks.{i}.attn.to_out.0."),
    ("double_blocks.{i}.txt_attn_proj.", "transformer_blocks.{i}.attn.to_add_out."),
    ("double_blocks.{i}.img_mlp.fc1.", "transformer_blocks.{i}.ff.net.0.proj."),
    ("double_blocks.{i}.img_mlp.fc2.", "transformer_blocks.{i}.ff.net.2."),
    ("double_blocks.{i}.txt_mlp.fc1.", "transformer_blocks.{i}.ff_context.net.0.proj."),
    ("double_blocks.{i}.txt_mlp.fc2.", "transformer_blocks.{i}.ff_context.net.2."),
    ("single_blocks.{i}.linear2.", "single_transformer_blocks.{i}.proj_out."),
    ("single_blocks.{i}.q_norm.", "single_transformer_blocks.{i}.attn.norm_q."),
    ("single_blocks.{i}.k_norm.", "single_transformer_blocks.{i}.attn.norm_k."),
    ("single_blocks.{i}.modulation.linear.", "single_transformer_blocks.{i}.norm.linear."),
    ("final_layer.linear.", "proj_out."),
    ("final_layer.adaLN_modulation.1.", "norm_out.linear."),
]

# Fused Tencent tensors that diffusers stores split: (tencent prefix, [diffusers prefixes]).
_FUSED: list[tuple[str, list[str]]] = [
    (_RB + "self_attn_qkv.", [_DRB + f"attn.to_{p}." for p in "qkv"]),
    ("double_blocks.{i}.img_attn_qkv.", [f"transformer_blocks.{{i}}.attn.to_{p}." for p in "qkv"]),
    ("double_blocks.{i}.txt_attn_qkv.", [f"transformer_blocks.{{i}}.attn.add_{p}_proj." for p in "qkv"]),
    ("single_blocks.{i}.linear1.",
     [f"single_transformer_blocks.{{i}}.attn.to_{p}." for p in "qkv"] + ["single_transformer_blocks.{i}.proj_mlp."]),
]


_SLOTS = {
    "i": r"\d+",  # a block index
    "embedder": r"time_in|guidance_in|txt_in\.t_embedder",
    "stream": r"img|txt",
    "attn": r"img|txt|self",
    "mlp": r"img_mlp|txt_mlp|blocks\.\d+\.mlp",  # the double blocks' and the refiner blocks' MLPs
}


def _rule(src: str, dst: str) -> tuple[str, str]:
    """A template pair -> (regex, replacement); see _COMFY_PAIRS for the template syntax."""
    head, tail = ("^" if src.startswith("^") else ""), ("$" if src.endswith("$") else "")
    pattern = re.escape(src.removeprefix("^").removesuffix("$"))
    replacement = dst.removeprefix("^").removesuffix("$").replace("\\", "\\\\")
    for name, slot in _SLOTS.items():
        pattern = pattern.replace(re.escape("{" + name + "}"), f"(?P<{name}>{slot})")
        replacement = replacement.replace("{" + name + "}", f"\\g<{name}>")
    return head + pattern + tail, replacement


def _prefix_rule(src: str, dst: str) -> tuple[str, str]:
    """A prefix template pair (the diffusers tables) -> (regex matching a key's prefix, replacement)."""
    return _rule("^" + src, dst)


_TENCENT_TO_COMFY: Rules = [_rule(t, c) for t, c in _COMFY_PAIRS]
_COMFY_TO_TENCENT: Rules = [_rule(c, t) for t, c in _COMFY_PAIRS]
_TENCENT_TO_DIFFUSERS: Rules = [_prefix_rule(t, d) for t, d in _DIFFUSERS_PAIRS]
_DIFFUSERS_TO_TENCENT: Rules = [_prefix_rule(d, t) for t, d in _DIFFUSERS_PAIRS]


def _rename(key: str, rules: Rules) -> str:
    for pattern, repl in rules:
        new, n = re.subn(pattern, repl, key)
        if n:
            return new
    return key


def _apply_all(key: str, rules: Rules) -> str:
    """Apply every matching rule in turn (a key may need more than one rename)."""
    for pattern, repl in rules:
        key = re.sub(pattern, repl, key)
    return key


def comfy_key(key: str) -> str:
    """ComfyUI's internal name of one Tencent key."""
    return _apply_all(key, _TENCENT_TO_COMFY)


def to_comfy(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {comfy_key(k): v for k, v in sd.items()}


def from_comfy(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {_apply_all(k, _COMFY_TO_TENCENT): v for k, v in sd.items()}


SWAPPED_HALVES = "final_layer.adaLN_modulation.1."  # stored [scale; shift] by diffusers, [shift; scale] here


def swap_halves(t: torch.Tensor) -> torch.Tensor:
    """[a; b] -> [b; a] along dim 0 (the final adaLN's order between Tencent and diffusers)."""
    a, b = t.chunk(2, dim=0)
    return torch.cat((b, a), dim=0)


def diffusers_parts(key: str, rows: int, hidden: int) -> list[tuple[str, tuple[int, int] | None]]:
    """The diffusers name(s) of one Tencent key: ``[(name, None)]`` for a plain rename, or one
    ``(name, (first row, rows))`` per part of a tensor that diffusers stores split (q/k/v, mlp)."""
    for fused, parts in _FUSED:
        pattern, _ = _prefix_rule(fused, "")
        m = re.match(pattern, key)
        if m:
            sizes = [hidden] * 3 + ([rows - 3 * hidden] if len(parts) == 4 else [])
            starts = [sum(sizes[:i]) for i in range(len(sizes))]
            index = m.group(1) if m.groups() else ""
            return [(p.replace("{i}", index) + key[m.end():], (s, n)) for p, s, n in zip(parts, starts, sizes)]
    return [(_rename(key, _TENCENT_TO_DIFFUSERS), None)]


def to_diffusers(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    hidden = sd["img_in.proj.weight"].shape[0]
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if key.startswith(SWAPPED_HALVES):
            value = swap_halves(value)
        for name, span in diffusers_parts(key, value.shape[0], hidden):
            out[name] = value if span is None else value.narrow(0, *span)
    return out


def from_diffusers(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    pending = dict(sd)
    for fused, parts in _FUSED:
        first, _ = _prefix_rule(parts[0], "")
        for key in [k for k in pending if re.match(first, k)]:
            m = re.match(first, key)
            index, rest = (m.group(1) if m.groups() else ""), key[m.end():]
            names = [p.replace("{i}", index) + rest for p in parts]
            missing = [n for n in names if n not in pending]
            if missing:
                continue  # left for the completeness check to report
            out[fused.replace("{i}", index) + rest] = torch.cat([pending.pop(n) for n in names], dim=0)
    for key, value in pending.items():
        new = _rename(key, _DIFFUSERS_TO_TENCENT)
        if new.startswith(SWAPPED_HALVES):
            value = swap_halves(value)
        out[new] = value
    return out


def detect_layout(keys) -> str:
    """'tencent', 'comfy' or 'diffusers' from the (prefix-stripped) key names; 'unknown' else."""
    keys = set(keys)
    if any(k.startswith(("x_embedder.", "transformer_blocks.", "context_embedder.")) for k in keys):
        return "diffusers"
    if any(".img_attn.qkv." in k or ".norm.query_norm.scale" in k or k.startswith("time_in.in_layer.") for k in keys):
        return "comfy"
    if any(k.startswith(("img_in.", "double_blocks.", "txt_in.")) for k in keys):
        return "tencent"
    return "unknown"


def to_tencent(sd: Mapping[str, torch.Tensor], layout: str) -> dict[str, torch.Tensor]:
    if layout == "diffusers":
        return from_diffusers(sd)
    if layout == "comfy":
        return from_comfy(sd)
    return dict(sd)
