"""Ulysses sequence parallelism and CFG parallelism for the DiT, on ``torch.distributed``.

Every rank holds the whole model and the same inputs; what is split is the work of one forward:

* **CFG parallel** (degree 1 or 2): with true CFG batched as [cond; uncond] (see
  :func:`hunyuan.sampling.pipeline.batched_guided_velocity`), each CFG group runs one half of the
  batch and the halves are gathered back.
* **Ulysses** (degree dividing the number of heads): inside a CFG group the video tokens are split
  into equal shards, one per rank (padded at the end to a multiple of the degree; the padding is
  masked out of attention and dropped afterwards). Each rank rotates its own tokens with RoPE. Around
  attention one all-to-all trades sequence shards for head shards, so each rank attends over the
  whole sequence with ``heads / degree`` heads; a second all-to-all trades them back. The text
  tokens are held whole by every rank (as xDiT's joint tensor): each rank takes its heads of them
  into attention and the text output is gathered over heads, so every rank keeps the same text
  stream.

Rank layout: ``rank = cfg_index * ulysses_degree + ulysses_index``. The all-to-all is
``torch.distributed.all_to_all_single`` (NCCL on GPUs, gloo on the CPU); yunchang's, which xfuser
uses, wraps the same call and would add flash-attn as a dependency.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import torch
import torch.distributed as dist
from einops import rearrange

from ..dit.token_replace import FirstFrameVec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ParallelGroups:
    """This rank's place in a cfg_degree x ulysses_degree grid of processes."""

    cfg_degree: int
    ulysses_degree: int
    cfg_index: int
    ulysses_index: int
    cfg_group: object | None  # ranks with the same ulysses_index (None when cfg_degree is 1)
    ulysses_group: object | None  # ranks with the same cfg_index (None when ulysses_degree is 1)


def check_degrees(world: int, cfg_degree: int, heads: int) -> int:
    """The Ulysses degree for ``world`` processes, or ValueError naming what does not divide."""
    if cfg_degree not in (1, 2):
        raise ValueError(f"cfg_degree is {cfg_degree}; expected 1 or 2 (the two passes of true CFG)")
    if world % cfg_degree:
        raise ValueError(f"{world} processes cannot be split into {cfg_degree} CFG groups")
    ulysses = world // cfg_degree
    if heads % ulysses:
        raise ValueError(f"Ulysses degree {ulysses} ({world} processes / cfg_degree {cfg_degree}) must divide "
                         f"the DiT's {heads} attention heads")
    return ulysses


def make_groups(cfg_degree: int, heads: int) -> ParallelGroups:
    """Create the process groups (every rank must call this, in the same order)."""
    world, rank = dist.get_world_size(), dist.get_rank()
    ulysses = check_degrees(world, cfg_degree, heads)
    cfg_index, ulysses_index = divmod(rank, ulysses)
    ulysses_group = cfg_group = None
    for c in range(cfg_degree):  # new_group is collective: every rank creates every group
        group = dist.new_group([c * ulysses + u for u in range(ulysses)]) if ulysses > 1 else None
        if c == cfg_index:
            ulysses_group = group
    for u in range(ulysses):
        group = dist.new_group([c * ulysses + u for c in range(cfg_degree)]) if cfg_degree > 1 else None
        if u == ulysses_index:
            cfg_group = group
    return ParallelGroups(cfg_degree, ulysses, cfg_index, ulysses_index, cfg_group, ulysses_group)


# The collectives stay out of compiled graphs (``torch.compiler.disable``: a compiled block breaks
# around them and each runs eagerly and synchronously). Traced in, inductor issues them as
# functional collectives, several in flight at once; on gloo a worker that compiled a block this
# way once died of a heap corruption (SIGSEGV in malloc on a non-Python thread, full CI run of
# tests/unit/test_multi_device_pool.py::test_compile_on_two_workers_equals_one_eager_process).
@torch.compiler.disable
def _all_to_all(send: torch.Tensor, group) -> torch.Tensor:
    """send [P, ...] contiguous: chunk j goes to rank j of ``group``; returns what each rank sent me."""
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=group)
    return recv


@torch.compiler.disable
def _all_gather(x: torch.Tensor, group, world: int) -> list[torch.Tensor]:
    """Every rank's ``x`` (contiguous), in rank order."""
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x, group=group)
    return parts


class UlyssesAttention:
    """Wraps an attention backend: q, k, v [B, H, n_local + Nt, D] -> [B, n_local + Nt, H*D]."""

    def __init__(self, inner, groups: ParallelGroups, n_local: int):
        self.inner, self.groups, self.n_local = inner, groups, n_local

    def _gather_sequence(self, x: torch.Tensor) -> torch.Tensor:
        """Video part, [B, H, n_local, D] -> [B, H/P, n_local*P, D] (my heads, every rank's tokens)."""
        send = rearrange(x, "b (p hp) n d -> p b hp n d", p=self.groups.ulysses_degree).contiguous()
        recv = _all_to_all(send, self.groups.ulysses_group)  # p: the source rank
        return rearrange(recv, "p b hp n d -> b hp (p n) d")

    def _scatter_sequence(self, x: torch.Tensor) -> torch.Tensor:
        """Video output, [B, n_local*P, H/P, D] -> [B, n_local, H*D] (my tokens, every rank's heads)."""
        send = rearrange(x, "b (p n) hp d -> p b n hp d", p=self.groups.ulysses_degree).contiguous()
        recv = _all_to_all(send, self.groups.ulysses_group)  # p: the source rank
        return rearrange(recv, "p b n hp d -> b n (p hp d)")

    def _gather_heads(self, x: torch.Tensor) -> torch.Tensor:
        """Text output, [B, Nt, H/P, D] -> [B, Nt, H*D]: every rank's heads, in rank order."""
        parts = _all_gather(x.contiguous(), self.groups.ulysses_group, self.groups.ulysses_degree)
        return torch.cat(parts, dim=2).flatten(2)

    def __call__(self, q, k, v, key_mask=None):
        n, hp = self.n_local, q.shape[1] // self.groups.ulysses_degree
        mine = slice(self.groups.ulysses_index * hp, (self.groups.ulysses_index + 1) * hp)
        q, k, v = (torch.cat((self._gather_sequence(t[:, :, :n]), t[:, mine, n:]), dim=2) for t in (q, k, v))
        out = self.inner(q, k, v, key_mask)  # [B, N_video + Nt, H/P * D]
        out = out.unflatten(-1, (hp, -1))
        n_video = n * self.groups.ulysses_degree
        return torch.cat((self._scatter_sequence(out[:, :n_video]), self._gather_heads(out[:, n_video:])), dim=1)


def any_rank(flag: bool, device) -> bool:
    """True on every rank when ``flag`` is true on any rank of the world (an all-reduce MAX of a
    0/1 tensor on ``device``): one decision every rank takes together, whatever each computed."""
    tensor = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item() > 0)


class SequenceShard:
    """What :class:`~hunyuan.dit.model.HunyuanVideoDiT` calls to split and re-join its video tokens.

    ``batch_split``: the CFG groups hold different batch elements (:class:`ParallelDiT` split the
    batch between them), so a sum over the whole input takes every rank of the world."""

    def __init__(self, groups: ParallelGroups, batch_split: bool = False):
        self.groups, self.batch_split = groups, batch_split
        self.n_video = self.local = 0

    def split(self, img: torch.Tensor, rope: torch.Tensor, text_mask: torch.Tensor, attn):
        """img [B, N, C], rope [N, D/2], text_mask [B, Nt] -> this rank's (img, rope, key_mask, attn)."""
        p, index = self.groups.ulysses_degree, self.groups.ulysses_index
        b, n = img.shape[:2]
        pad = -n % p
        self.n_video = n
        img = torch.nn.functional.pad(img, (0, 0, 0, pad))
        rope = torch.cat((rope, rope.new_ones(pad, rope.shape[1])))  # identity rotation for padding
        valid = torch.arange(n + pad, device=img.device) < n
        key_mask = torch.cat((valid.expand(b, -1), text_mask), dim=1)
        local = self.local = (n + pad) // p
        mine = slice(index * local, (index + 1) * local)
        attention = UlyssesAttention(attn, self.groups, local) if p > 1 else attn
        return img[:, mine].contiguous(), rope[mine], None if bool(key_mask.all()) else key_mask, attention

    def _mine(self, n: int) -> int:
        """How many of the first ``n`` video tokens are in this rank's shard (a prefix of it)."""
        return max(0, min(self.local, n - self.groups.ulysses_index * self.local))

    def local_vec(self, vec):
        """Token replace's :class:`FirstFrameVec` counts the first frame's tokens of the whole
        sequence; a shard holds those of them that fall in its range (all or some), or none: then
        the plain vec, so its blocks do no first-frame modulation work."""
        if not isinstance(vec, FirstFrameVec):
            return vec
        mine = self._mine(vec.n)
        return dataclasses.replace(vec, n=mine) if mine else vec.vec

    def sums(self, *tensors: torch.Tensor) -> torch.Tensor:
        """The sums over the whole input's video tokens (padding left out) of ``tensors``, each
        [B_local, n_local, ...] on this rank: a [len(tensors)] fp32 tensor, the same on every rank.
        With the batch split between the CFG groups, every rank of the world holds a different
        part of it; otherwise each CFG group holds all of it, shared out over its Ulysses ranks."""
        valid = self._mine(self.n_video)
        out = torch.stack([t[:, :valid].float().sum() for t in tensors])
        if self.batch_split:
            dist.all_reduce(out)
        elif self.groups.ulysses_degree > 1:
            dist.all_reduce(out, group=self.groups.ulysses_group)
        return out

    def join(self, out: torch.Tensor) -> torch.Tensor:
        """This rank's final-layer output [B, n_local, C] -> every rank's, unpadded: [B, N, C]."""
        if self.groups.ulysses_degree == 1:
            return out
        parts = _all_gather(out.contiguous(), self.groups.ulysses_group, self.groups.ulysses_degree)
        return torch.cat(parts, dim=1)[:, : self.n_video]


class ParallelDiT:
    """Calls a DiT as every rank's share of one forward; every rank gets the whole output.

    Same call signature as the DiT, so :func:`hunyuan.sampling.pipeline.sample_video` runs on each
    rank unchanged (with the same noise, every rank follows the same trajectory). With CFG
    parallel the batch is split between the CFG groups, so sample with ``batched_cfg=True``; a
    batch that does not split (CFG off) is computed whole by each CFG group.
    """

    def __init__(self, model, groups: ParallelGroups):
        self.model, self.groups = model, groups
        self._warned = False

    def __call__(self, x, timestep, text_mask, text_pooled, guidance=None, *, text_states=None, refined_text=None,
                 step_cache=None, token_replace=False):
        g = self.groups
        args = [x, timestep, text_mask, text_pooled, guidance, text_states, refined_text]
        split = g.cfg_degree > 1 and x.shape[0] % g.cfg_degree == 0
        if g.cfg_degree > 1 and not split and not self._warned:
            self._warned = True
            log.warning("CFG parallel: batch %d does not split in %d (true CFG off, or not batched); each CFG "
                        "group computes the whole batch, so half the processes repeat the other half's work",
                        x.shape[0], g.cfg_degree)
        if split:
            args = [None if a is None else a.chunk(g.cfg_degree)[g.cfg_index] for a in args]
        *positional, states, refined = args
        out = self.model(*positional, text_states=states, refined_text=refined, step_cache=step_cache,
                         sequence_parallel=SequenceShard(g, batch_split=split), token_replace=token_replace)
        if not split:
            return out
        return torch.cat(_all_gather(out.contiguous(), g.cfg_group, g.cfg_degree), dim=0)
