"""Socket types shared by the pack's nodes, the one category they all live in, and the check
that a file or folder input names one of its listed choices."""

from comfy_api.latest import io

CATEGORY = "HunyuanVideo"

# Custom socket types. The strings are part of saved workflows: never rename them.
TextEncoder = io.Custom("HYVID_TEXT_ENCODER")  # LLM + CLIP-L, wrapped in ModelPatchers
TextEmbeds = io.Custom("HYVID_TEXT_EMBEDS")  # LLM states + mask + CLIP pooled (positive/negative)
DiT = io.Custom("HYVID_DIT")  # the DiT in a ModelPatcher, plus swap/attention options
Conditioning = io.Custom("HYVID_CONDITIONING")  # refined text tokens for every step of a schedule
VAE = io.Custom("HYVID_VAE")  # the causal 3D VAE in a ModelPatcher
RewriteModel = io.Custom("HYVID_REWRITE_MODEL")  # a rewrite backend: local causal LM or OpenAI-compatible endpoint


def listed(input_name: str, value: str | None, choices: list[str], where: str) -> bool | str:
    """For ``validate_inputs``: True, or why ``value`` is refused when the job is queued.

    ComfyUI 0.3.75 checks a V1 node's list input against its choices, but not a V3 ``Combo``, so
    without this a workflow's file name would reach the loader unchecked. ``None``: fed by a link.
    """
    if value is None or value in choices:
        return True
    shown = ", ".join(repr(c) for c in choices[:12]) + (f" (and {len(choices) - 12} more)" if len(choices) > 12 else "")
    return f"{input_name}={value!r} is not one of the choices in {where}; expected one of: {shown or 'none found'}"
