"""Prompt rewrite nodes: a local LM loader, an endpoint node, and the rewrite node itself.

Both backend nodes output the same ``HYVID_REWRITE_MODEL`` socket, so the rewrite node has
one set of inputs whichever backend is wired in. All logic lives in ``hunyuan/rewrite``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import comfy.model_management as mm
import comfy.model_patcher
import comfy.utils
import folder_paths
import torch
from comfy_api.latest import io, ui

from ..hunyuan.checkpoint_io import weight_files
from ..hunyuan.rewrite import MODES, SamplingParams, rewrite
from ..hunyuan.rewrite.access import ENDPOINT_FILE, EndpointPolicy, load_policy
from ..hunyuan.rewrite.local import LocalBackend, LocalLM, load_local_lm
from .common import LLM_FOLDER, dtype_input, hf_folders, loaded, plain_dtype, progress_bar
from .types import CATEGORY, CheckedNode, RewriteModel

log = logging.getLogger(__name__)

SEED_MAX = 2**53 - 1  # exact in the browser's numbers and within an OpenAI int64 seed


def endpoint_file() -> Path:
    """The owner's endpoint file (README, Security): in ComfyUI's user folder, which the HTTP API
    does not serve (``/userdata`` reaches only ``user/<user id>/``) and no workflow input names."""
    return Path(folder_paths.get_user_directory()).joinpath(*ENDPOINT_FILE)


def endpoint_policy() -> EndpointPolicy:
    return load_policy(endpoint_file())


def llm_folders() -> list[str]:
    return sorted(hf_folders(LLM_FOLDER))


def _pick_dtype(choice: str, device: torch.device) -> torch.dtype:
    chosen = plain_dtype(choice)
    if chosen is not None:
        return chosen
    if mm.is_device_cpu(device):
        return torch.float32  # portable and exact on CPUs without fast bf16
    return torch.bfloat16 if mm.should_use_bf16(device, prioritize_performance=False) else torch.float16


def _session(patcher: comfy.model_patcher.ModelPatcher):
    """Load the LM through ComfyUI's model management for one call, then offload it."""

    @contextlib.contextmanager
    def run(memory_required: int) -> Iterator[torch.device]:
        with loaded([patcher], memory_required) as device:
            local: LocalLM = patcher.model
            local.buffers_to(device)
            yield device

    return run


class HunyuanVideoRewriteModelLoader(CheckedNode):
    CHOICES_FROM = {"model_name": f"models/{LLM_FOLDER}"}

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HunyuanVideoRewriteModelLoader",
            display_name="HunyuanVideo Rewrite Model Loader (local LM)",
            category=CATEGORY,
            description="Loads a chat/instruct causal LM from models/LLM for prompt rewrite.",
            inputs=[
                io.Combo.Input("model_name", options=llm_folders(),
                               tooltip="A Hugging Face model folder in models/LLM with a chat template "
                                       "(e.g. Qwen2.5-3B-Instruct)."),
                dtype_input("dtype", "Weight dtype; auto = fp32 on CPU, bf16/fp16 on GPU."),
            ],
            outputs=[RewriteModel.Output(display_name="rewrite_model")],
        )

    @classmethod
    def execute(cls, model_name: str, dtype: str) -> io.NodeOutput:
        folder = hf_folders(LLM_FOLDER).get(model_name)
        if folder is None:
            raise ValueError(f"model_name={model_name!r} is not a model folder in models/{LLM_FOLDER}; "
                             f"found: {llm_folders()}")
        load_device, offload_device = mm.text_encoder_device(), mm.text_encoder_offload_device()
        weight_dtype = _pick_dtype(dtype, load_device)
        local = load_local_lm(folder, weight_dtype)
        patcher = comfy.model_patcher.ModelPatcher(local, load_device=load_device, offload_device=offload_device)
        stamp = max(p.stat().st_mtime_ns for p in weight_files(folder))
        backend = LocalBackend(local, (str(folder), str(weight_dtype), stamp), session=_session(patcher))
        return io.NodeOutput(backend)


class HunyuanVideoRewriteEndpoint(CheckedNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HunyuanVideoRewriteEndpoint",
            display_name="HunyuanVideo Rewrite Endpoint (OpenAI-compatible)",
            category=CATEGORY,
            description="Rewrite with a chat-completions server (vLLM, llama.cpp, Ollama, OpenAI...).",
            inputs=[
                io.String.Input("endpoint_url", default="http://127.0.0.1:8000/v1",
                                tooltip="Base URL (.../v1) or the full .../v1/chat/completions URL. It must be an "
                                        "endpoint the server's owner allows in "
                                        "user/hunyuanvideo/rewrite_endpoints.json, which also says which key "
                                        "it gets: a workflow never chooses a key."),
                io.String.Input("model", default="hunyuan-rewrite",
                                tooltip="Model name the server expects in the request."),
                io.Float.Input("timeout_s", default=60.0, min=1.0, max=600.0, step=1.0,
                               tooltip="Total deadline in seconds for the request, retries included."),
                io.Int.Input("max_retries", default=2, min=0, max=10,
                             tooltip="Extra attempts after a refused connection, timeout or HTTP 5xx/429."),
            ],
            outputs=[RewriteModel.Output(display_name="rewrite_model")],
            hidden=[io.Hidden.prompt, io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, **values) -> bool | str:
        """Also refuse a URL the owner does not allow when the job is queued, before anything runs."""
        checked = super().validate_inputs(**values)
        url = values.get("endpoint_url")
        if checked is not True or url is None:  # None: fed by a link, checked when the node runs
            return checked
        try:
            endpoint_policy().lookup(url)
        except ValueError as exc:
            return str(exc)
        return True

    @classmethod
    def fingerprint_inputs(cls, endpoint_url: str | None = None, **_) -> str:
        """Run again when the owner's entry for this URL changes (ComfyUI caches outputs otherwise)."""
        try:
            return repr(endpoint_policy().lookup(endpoint_url)) if endpoint_url is not None else ""
        except ValueError as exc:
            return str(exc)

    @classmethod
    def execute(cls, endpoint_url: str, model: str, timeout_s: float, max_retries: int) -> io.NodeOutput:
        # API files saved before keys moved to the server still carry api_key_env; ComfyUI drops an
        # input the node does not declare, so it selects nothing. Say so, for automation users.
        saved = ((cls.hidden.prompt or {}).get(str(cls.hidden.unique_id)) or {}).get("inputs", {})
        if saved.get("api_key_env"):
            log.warning("HunyuanVideoRewriteEndpoint: this workflow's api_key_env input is ignored; the key for an "
                        "endpoint is set by the server's owner in %s", endpoint_file())
        return io.NodeOutput(endpoint_policy().backend(endpoint_url, model, timeout_s, max_retries))


class HunyuanVideoPromptRewrite(CheckedNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HunyuanVideoPromptRewrite",
            display_name="HunyuanVideo Prompt Rewrite",
            category=CATEGORY,
            description="Expands a short prompt into the detailed English description HunyuanVideo expects.",
            is_output_node=True,
            inputs=[
                RewriteModel.Input("rewrite_model", tooltip="A local LM loader or an endpoint node."),
                io.String.Input("prompt", multiline=True, tooltip="The prompt to rewrite (any language)."),
                io.Combo.Input("mode", options=list(MODES), default="Normal",
                               tooltip="Normal: a compact description. Master: also composition, "
                                       "lighting and camera movement in detail."),
                io.Float.Input("temperature", default=0.7, min=0.0, max=2.0, step=0.05,
                               tooltip="Sampling temperature; 0 = greedy (always the same text)."),
                io.Float.Input("top_p", default=0.9, min=0.05, max=1.0, step=0.05,
                               tooltip="Nucleus sampling: keep the smallest token set with this much probability."),
                io.Int.Input("max_new_tokens", default=400, min=1, max=4096,
                             tooltip="Upper bound on the length of the rewritten prompt, in tokens."),
                io.Int.Input("seed", default=0, min=0, max=SEED_MAX, control_after_generate=False,
                             tooltip="Sampling seed: the same seed and inputs give the same rewrite."),
            ],
            outputs=[io.String.Output(display_name="prompt")],
        )

    @classmethod
    def execute(cls, rewrite_model, prompt: str, mode: str, temperature: float, top_p: float,
                max_new_tokens: int, seed: int) -> io.NodeOutput:
        params = SamplingParams(temperature, top_p, max_new_tokens, seed)
        bar = progress_bar(max_new_tokens)

        def progress(done: int, total: int) -> None:
            mm.throw_exception_if_processing_interrupted()
            bar(done, total)

        result = rewrite(prompt, mode, rewrite_model, params, progress=progress)
        return io.NodeOutput(result.text, ui=ui.PreviewText(result.ui_text()))


NODES = [HunyuanVideoRewriteModelLoader, HunyuanVideoRewriteEndpoint, HunyuanVideoPromptRewrite]
