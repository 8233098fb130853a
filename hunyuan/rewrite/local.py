"""A local Hugging Face causal LM (any folder with config.json, weights and a chat template).

Weights are read through :mod:`..checkpoint_io` (safetensors memory-mapped; ``.bin`` only as
weights-only), into a model built on the meta device, so loading a 3B model costs no random
initialisation. Sampling is our own short loop with a seeded ``torch.Generator`` on the CPU:
the same seed gives the same tokens, and temperature 0 is plain argmax.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import torch
from torch import nn

from ..checkpoint_io import CheckpointError, load_state_dict, weight_files
from .core import ProgressFn, SamplingParams
from .templates import fold_system

log = logging.getLogger(__name__)

# (memory_required_bytes) -> context manager yielding the device to run on. The ComfyUI adapter
# loads the model there through its model management and offloads it on exit.
Session = Callable[[int], AbstractContextManager[torch.device]]


class LocalLM(nn.Module):
    """Holds the HF model as a plain submodule (``.lm``), so a model manager may set ``.device``."""

    def __init__(self, lm: nn.Module, tokenizer, name: str) -> None:
        super().__init__()
        self.lm = lm
        self.tokenizer = tokenizer
        self.name = name

    def buffers_to(self, device: torch.device) -> None:
        """Move buffers that live outside weight-carrying modules (e.g. RoPE tables)."""
        for module in self.modules():
            for key, buf in module._buffers.items():
                if buf is not None and buf.device != device:
                    module._buffers[key] = buf.to(device)

    @property
    def weight_dtype(self) -> torch.dtype:
        return next(self.lm.parameters()).dtype


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


def load_local_lm(folder: str | Path, dtype: torch.dtype = torch.float32) -> LocalLM:
    """Build the causal LM of an HF folder on the CPU in ``dtype``; needs a chat template."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"model folder {str(folder)!r} has no config.json; expected a Hugging Face model folder")
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        # Without one, transformers falls back to converters and fails with an unrelated import error.
        raise CheckpointError(
            f"model folder {str(folder)!r} has no tokenizer file; expected one of {', '.join(TOKENIZER_FILES)}"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), **_LOCAL_ONLY)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"model folder {str(folder)!r}: its tokenizer cannot be loaded ({exc})") from exc
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"model folder {str(folder)!r} has no chat template (tokenizer_config.json 'chat_template' or "
            "chat_template.jinja); prompt rewrite needs an instruct/chat model"
        )
    config = AutoConfig.from_pretrained(str(folder), **_LOCAL_ONLY)
    try:
        with _meta_params():  # no dtype here (4.5x calls it torch_dtype, 5.x dtype): the weights bring it
            lm = AutoModelForCausalLM.from_config(config)
    except (ValueError, KeyError) as exc:
        raise CheckpointError(
            f"model folder {str(folder)!r} (model_type {getattr(config, 'model_type', '?')!r}) is not a causal "
            f"LM transformers can build ({exc}); expected a text-only chat model such as Qwen2.5-3B-Instruct"
        ) from exc
    _load_weights(lm, weight_files(folder), dtype, folder)
    if (folder / "generation_config.json").is_file():  # instruct models list their end-of-turn ids here
        lm.generation_config = GenerationConfig.from_pretrained(str(folder), local_files_only=True)
    lm.eval().requires_grad_(False)
    return LocalLM(lm, tokenizer, folder.name)


# The folder is all there is: no hub download, and code a folder ships (auto_map) never runs.
_LOCAL_ONLY = {"local_files_only": True, "trust_remote_code": False}


@contextlib.contextmanager
def _meta_params() -> Iterator[None]:
    """Create parameters on the meta device; buffers stay real (they are not in the files)."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        yield


def _load_weights(lm: nn.Module, files: list[Path], dtype: torch.dtype, folder: Path) -> None:
    state: dict[str, torch.Tensor] = {}
    for path in files:
        state.update(load_state_dict(path))
    wanted = set(lm.state_dict())
    prefix = getattr(lm, "base_model_prefix", "model") + "."
    if not wanted & set(state) and all(f"{prefix}{k}" in wanted for k in list(state)[:8]):
        state = {f"{prefix}{k}": v for k, v in state.items()}  # a bare-backbone checkpoint
    float_state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items() if k in wanted}
    lm.load_state_dict(float_state, strict=False, assign=True)
    lm.tie_weights()
    missing = [n for n, p in lm.named_parameters() if p.is_meta]
    if missing:
        raise CheckpointError(
            f"model folder {str(folder)!r} is missing {len(missing)} weights for {type(lm).__name__} "
            f"(first: {missing[:3]}); expected a complete checkpoint"
        )


def stop_token_ids(local: LocalLM) -> set[int]:
    """End-of-turn ids: the tokenizer's EOS, the generation config's EOS list, <|eot_id|>-likes."""
    ids: set[int] = set()
    for source in (local.tokenizer.eos_token_id, getattr(local.lm.generation_config, "eos_token_id", None)):
        if isinstance(source, int):
            ids.add(source)
        elif source:
            ids.update(int(i) for i in source)
    vocab = local.tokenizer.get_vocab()
    ids.update(vocab[t] for t in ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>") if t in vocab)
    return ids


def encode_chat(local: LocalLM, messages: list[dict[str, str]]) -> torch.Tensor:
    """Token ids [1, L] of the chat, with the assistant turn opened; folds the system turn
    into the user turn when the model's template refuses a system role."""
    # enable_thinking=False asks templates with a reasoning switch (Qwen3) for a direct answer;
    # templates without the switch ignore the extra variable.
    options = {"tokenize": False, "add_generation_prompt": True, "enable_thinking": False}
    try:
        text = local.tokenizer.apply_chat_template(messages, **options)
    except Exception as exc:  # jinja TemplateError raised by templates without a system role
        log.info("chat template of %s refused the system turn (%s); folding it into the user turn", local.name, exc)
        text = local.tokenizer.apply_chat_template(fold_system(messages), **options)
    ids = local.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    return ids.to(torch.long)


def check_context(local: LocalLM, request_tokens: int, max_new_tokens: int) -> None:
    """ValueError naming ``prompt`` when the request and the reply do not fit the model's positions
    (past them a model's output is garbage, and the long first forward cannot be interrupted)."""
    positions = getattr(local.lm.config, "max_position_embeddings", None)
    if positions and request_tokens + max_new_tokens > positions:
        raise ValueError(
            f"prompt: the rewrite request is {request_tokens} tokens (the prompt inside the rewrite template) and "
            f"max_new_tokens={max_new_tokens}, but {local.name} takes at most {positions} positions in all; "
            "expected a shorter prompt or a lower max_new_tokens")


def pick_token(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> int:
    """Choose the next token from ``logits`` [V] (float32, CPU): argmax or top-p sampling.

    Sampling inverts the cumulative distribution with one uniform draw from ``generator``
    (``torch.multinomial`` is slow on a 100k+ vocabulary).
    """
    if params.greedy:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.double() / params.temperature, dim=-1)
    ids = None
    if params.top_p < 1.0:
        probs, ids = nucleus(probs, params.top_p)
    cdf = torch.cumsum(probs, dim=-1)
    draw = torch.rand(1, generator=generator, dtype=torch.float64) * cdf[-1]
    pos = min(int(torch.searchsorted(cdf, draw, right=True)), probs.numel() - 1)
    return pos if ids is None else int(ids[pos])


def nucleus(probs: torch.Tensor, top_p: float, first_k: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """The smallest set of most likely tokens whose mass reaches ``top_p``: (probs, ids), most
    likely first. Looks at the top ``first_k`` and widens only when they fall short."""
    k = min(first_k, probs.numel())
    while True:
        top, ids = torch.topk(probs, k)
        before = torch.cumsum(top, dim=-1) - top  # mass of the strictly more likely tokens
        if float(before[-1] + top[-1]) >= top_p or k == probs.numel():
            keep = before < top_p
            return top[keep], ids[keep]
        k = min(k * 8, probs.numel())


@torch.inference_mode()
def generate(local: LocalLM, input_ids: torch.Tensor, params: SamplingParams, device: torch.device,
             progress: ProgressFn | None = None) -> list[int]:
    """New token ids after ``input_ids`` [1, L], stopping at an end-of-turn token."""
    generator = torch.Generator("cpu").manual_seed(params.seed)
    stops = stop_token_ids(local)
    step_ids = input_ids.to(device)
    cache = None
    new_ids: list[int] = []
    for step in range(params.max_new_tokens):
        logits, cache = _forward(local.lm, step_ids, cache)
        token = pick_token(logits, params, generator)
        if progress is not None:
            progress(step + 1, params.max_new_tokens)
        if token in stops:
            break
        new_ids.append(token)
        step_ids = torch.tensor([[token]], dtype=torch.long, device=device)
    return new_ids


def _cache_argument(lm: nn.Module) -> str:
    """The KV cache's name in ``forward`` and its output: ``past_key_values`` up to transformers
    5.2x, ``cache`` after (the old name is deprecated there)."""
    return "cache" if "cache" in inspect.signature(lm.forward).parameters else "past_key_values"


def _forward(lm: nn.Module, ids: torch.Tensor, cache):
    """Logits [V] (float32, CPU) of the last position, and the updated KV cache."""
    name = _cache_argument(lm)
    try:  # only the last position's logits: a 128k vocabulary x a long prompt is large
        out = lm(input_ids=ids, use_cache=True, logits_to_keep=1, **{name: cache})
    except TypeError:  # architectures without logits_to_keep
        out = lm(input_ids=ids, use_cache=True, **{name: cache})
    return out.logits[0, -1].float().cpu(), out[name]


def memory_estimate(local: LocalLM, tokens: int) -> int:
    """Bytes beyond the weights for a run of ``tokens`` positions: KV cache plus logits."""
    cfg = local.lm.config
    layers = getattr(cfg, "num_hidden_layers", 32)
    heads = getattr(cfg, "num_key_value_heads", None) or getattr(cfg, "num_attention_heads", 32)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    itemsize = torch.finfo(local.weight_dtype).bits // 8
    kv = 2 * layers * heads * head_dim * tokens * itemsize
    activations = 8 * tokens * cfg.hidden_size * itemsize + 4 * tokens * cfg.vocab_size
    return int(kv + activations)


class LocalBackend:
    """Rewrite with a :class:`LocalLM`; ``session`` brings it to its device for each call."""

    def __init__(self, local: LocalLM, identity: tuple, session: Session | None = None) -> None:
        self.local = local
        self._identity = ("local", *identity)
        self._session = session or _cpu_session

    def identity(self) -> tuple:
        return self._identity

    def complete(self, messages: list[dict[str, str]], params: SamplingParams,
                 progress: ProgressFn | None = None) -> str:
        input_ids = encode_chat(self.local, messages)
        check_context(self.local, input_ids.shape[1], params.max_new_tokens)
        need = memory_estimate(self.local, input_ids.shape[1] + params.max_new_tokens)
        with self._session(need) as device:
            new_ids = generate(self.local, input_ids, params, device, progress)
        return self.local.tokenizer.decode(new_ids, skip_special_tokens=True)


@contextlib.contextmanager
def _cpu_session(memory_required: int) -> Iterator[torch.device]:
    yield torch.device("cpu")
