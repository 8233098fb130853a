"""Socket types shared by the pack's nodes, the one category they all live in, and the base
class that checks every node's widget values when a job is queued."""

import math

from comfy_api.latest import io

CATEGORY = "HunyuanVideo"

# Custom socket types. The strings are part of saved workflows: never rename them.
TextEncoder = io.Custom("HYVID_TEXT_ENCODER")  # LLM + CLIP-L, wrapped in ModelPatchers
PromptEmbedsSocket = io.Custom("HYVID_TEXT_EMBEDS")  # a PromptEmbeds: LLM states + mask + CLIP pooled, +/-
DiT = io.Custom("HYVID_DIT")  # the DiT in a ModelPatcher, plus swap/attention options
Conditioning = io.Custom("HYVID_CONDITIONING")  # refined text tokens for every step of a schedule
VAE = io.Custom("HYVID_VAE")  # the causal 3D VAE in a ModelPatcher
ImageLatent = io.Custom("HYVID_FIRST_FRAME")  # an encoded start image for image-to-video
RewriteModel = io.Custom("HYVID_REWRITE_MODEL")  # a rewrite backend: local causal LM or OpenAI-compatible endpoint



def with_option(patcher, key: str, value):
    """A clone of ``patcher`` carrying ``value`` under ``key`` in its transformer options, where
    ``clone()`` (Block Swap, Step Cache, Compile, ComfyUI's own nodes) carries it on."""
    clone = patcher.clone()
    clone.model_options.setdefault("transformer_options", {})[key] = value
    return clone


def option(patcher, key: str):
    """What :func:`with_option` put on ``patcher`` (or one of its ancestors) under ``key``; None if nothing."""
    return patcher.model_options.get("transformer_options", {}).get(key)


def listed(input_name: str, value, choices: list, where: str = "") -> bool | str:
    """True, or why ``value`` is not one of ``choices`` (``where``: the folder they come from)."""
    if value is None or value in choices:
        return True
    shown = ", ".join(repr(c) for c in choices[:12]) + (f" (and {len(choices) - 12} more)" if len(choices) > 12 else "")
    source = f" in {where}" if where else ""
    return f"{input_name}={value!r} is not one of the choices{source}; expected one of: {shown or 'none found'}"


def _number_problem(name: str, value, spec: io.Int.Input | io.Float.Input) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"{name}={value!r} is not a number"
    if not math.isfinite(value):
        return f"{name}={value!r} is not a finite number; expected one between {spec.min} and {spec.max}"
    if spec.min is not None and value < spec.min:
        return f"{name}={value!r} is below its minimum {spec.min}"
    if spec.max is not None and value > spec.max:
        return f"{name}={value!r} is above its maximum {spec.max}"
    return None


class CheckedNode(io.ComfyNode):
    """A pack node whose widget values are checked when a job is queued, before anything runs.

    ComfyUI 0.3.75 checks a V1 node's dropdowns and number ranges, but for a V3 node it checks no
    dropdown, and no check of its refuses NaN or infinity: an API prompt could send
    ``weight_dtype='int3'`` or ``embedded_guidance=NaN``. Every dropdown (against the choices the
    schema offers now, so file lists are current), number range and finiteness is checked here,
    from the node's own schema. ``CHOICES_FROM`` names the folder a file dropdown lists, for the
    message. ``RENAMED`` maps a dropdown to the old values saved workflows may still carry, each to
    today's choice (the node translates them too). A node with more to check overrides
    ``validate_inputs`` and calls this one first.
    """

    CHOICES_FROM: dict[str, str] = {}
    RENAMED: dict[str, dict[str, str]] = {}

    @classmethod
    def validate_inputs(cls, **values) -> bool | str:
        # ComfyUI passes every input here (a value fed by a link is None) and, because this takes
        # **values, skips its own range checks for the node: they are all done below.
        problems = []
        for spec in cls.define_schema().inputs or []:
            value = values.get(spec.id)
            if value is None:
                continue
            if isinstance(spec, io.Combo.Input):
                value = cls.RENAMED.get(spec.id, {}).get(value, value)
                ok = listed(spec.id, value, list(spec.options or []), cls.CHOICES_FROM.get(spec.id, ""))
                problem = None if ok is True else ok
            elif isinstance(spec, (io.Int.Input, io.Float.Input)):
                problem = _number_problem(spec.id, value, spec)
            else:
                problem = None
            if problem:
                problems.append(problem)
        return "; ".join(problems) if problems else True
