"""Sequence (Ulysses) and CFG parallelism on the CPU with gloo: every rank's result equals the
single-process one (fp32, max rel. error <= 1e-5: attention sums over the same keys in a different
order once heads are split between processes)."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from hunyuan.conditioning import RefinedConditioning, TextEmbeds
from hunyuan.dit import TINY, HunyuanVideoDiT, precompute_refined_text
from hunyuan.dit.token_replace import FirstFrameVec
from hunyuan.parallel.sequence import (
    ParallelDiT,
    ParallelGroups,
    SequenceShard,
    _all_gather,
    _all_to_all,
    any_rank,
    check_degrees,
    make_groups,
)
from hunyuan.sampling import flow_sigmas, seeded_noise
from hunyuan.sampling.pipeline import sample_video
from tests.checks import FP32_RTOL, rel_err

SHAPE = (1, 16, 3, 6, 10)  # 3 x 3 x 5 = 45 video tokens: padded to 46 for 2 ranks, 48 for 4
STEPS = 3


def _dit() -> HunyuanVideoDiT:
    torch.manual_seed(0)
    model = HunyuanVideoDiT(TINY).eval()
    for p in model.parameters():
        p.data.normal_(0, 0.05)
    return model


def _conditioning(model) -> RefinedConditioning:
    g = torch.Generator().manual_seed(1)
    texts = []
    for length, valid in ((6, 4), (9, 9)):  # a padded prompt and a longer negative one
        mask = torch.arange(length)[None] < valid
        texts.append(TextEmbeds(torch.randn(1, length, TINY.text_states_dim, generator=g), mask,
                                torch.randn(1, TINY.text_states_dim_2, generator=g)))
    sigmas = flow_sigmas(STEPS, 7.0)
    pos, neg = (precompute_refined_text(model.txt_in, t, sigmas, device="cpu", dtype=torch.float32) for t in texts)
    return RefinedConditioning(pos, neg)


@torch.no_grad()
def _results(model, dit: HunyuanVideoDiT) -> dict[str, torch.Tensor]:
    """What ``model`` (the DiT or a ParallelDiT of it) computes: one forward of a [cond; uncond]
    batch, plain and with token replace (the first frame's 15 tokens modulated as at t=0: with 4
    ranks in shards of 12, they span ranks 0 and 1), and sampled latents with and without true CFG."""
    cond, sigmas, noise = _conditioning(dit), flow_sigmas(STEPS, 7.0), seeded_noise(5, SHAPE)
    pos, neg = cond.positive, cond.negative
    n = pos.tokens.shape[2]
    tokens = torch.cat((pos.tokens[0], neg.tokens[0, :, :n]))
    mask = torch.cat((pos.mask, neg.mask[:, :n]))
    x = torch.cat((noise, noise * 0.5))
    args = (x, torch.tensor([900.0, 900.0]), mask, torch.cat((pos.pooled, neg.pooled)), torch.tensor([6.0, 6.0]))
    return {"forward": model(*args, refined_text=tokens),
            "token_replace": model(*args, refined_text=tokens, token_replace=True),
            "cfg": sample_video(model, cond, sigmas, noise, cfg=4.0, batched_cfg=True),
            "no_cfg": sample_video(model, RefinedConditioning(pos), sigmas, noise, cfg=1.0)}


def _worker(rank: int, world: int, cfg_degree: int, rendezvous: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    try:
        model = _dit()
        parallel = ParallelDiT(model, make_groups(cfg_degree, model.config.num_heads))
        results = _results(parallel, model)  # without CFG, each CFG group runs the whole batch of 1
        save_file({k: v.contiguous() for k, v in results.items()}, f"{out_dir}/rank{rank}.safetensors")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def single_process():
    model = _dit()
    return _results(model, model)


@pytest.mark.parametrize(("world", "cfg_degree"), [(2, 1), (4, 1), (2, 2), (4, 2)])
def test_every_rank_equals_one_process(tmp_path, single_process, world, cfg_degree):
    mp.spawn(_worker, args=(world, cfg_degree, str(tmp_path / "rendezvous"), str(tmp_path)), nprocs=world)
    for rank in range(world):
        got = load_file(str(tmp_path / f"rank{rank}.safetensors"))
        assert set(got) == {"forward", "token_replace", "cfg", "no_cfg"}
        for name, value in got.items():
            assert rel_err(value, single_process[name]) <= FP32_RTOL, (rank, name)


def _vote(rank: int, world: int, rendezvous: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    try:
        votes = [any_rank(rank == world - 1, "cpu"), any_rank(False, "cpu"), any_rank(rank == 0, "cpu")]
        save_file({"votes": torch.tensor(votes)}, f"{out_dir}/votes{rank}.safetensors")
    finally:
        dist.destroy_process_group()


def test_any_rank_is_true_on_every_rank_when_one_says_so(tmp_path):
    """What a step cache's decisions are agreed with: one rank's "compute" is every rank's."""
    world = 3
    mp.spawn(_vote, args=(world, str(tmp_path / "rendezvous"), str(tmp_path)), nprocs=world)
    for rank in range(world):
        assert load_file(str(tmp_path / f"votes{rank}.safetensors"))["votes"].tolist() == [True, False, True], rank


def test_collectives_stay_out_of_compiled_graphs(tmp_path):
    """The Compile node's blocks break around the Ulysses all-to-all and all-gather, which run
    eagerly: traced in, inductor issued them as functional collectives several at a time, and a
    gloo worker running such a block once died of a heap corruption (SIGSEGV in malloc)."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    def block(x):
        y = _all_to_all((x * 2).contiguous(), None)
        return _all_gather(y + 1, None, 1)[0] * 3

    try:
        torch._dynamo.reset()
        out = torch.compile(block, backend=backend)(torch.ones(1, 2, 3))
    finally:
        torch._dynamo.reset()
        dist.destroy_process_group()
    assert torch.equal(out, torch.full((1, 2, 3), 9.0))
    traced = [str(node.target) for g in graphs for node in g.graph.nodes if node.op == "call_function"]
    assert traced, "the arithmetic around the collectives is still compiled"
    assert not [t for t in traced if "all_to_all" in t or "all_gather" in t or "c10d" in t], traced


def test_the_token_count_needs_padding():
    model = _dit()
    tokens = SHAPE[2] * (SHAPE[3] // 2) * (SHAPE[4] // 2)
    assert model.config.patch_size == (1, 2, 2) and tokens % 2 and tokens % 4


@pytest.mark.parametrize(("world", "cfg_degree", "heads", "message"), [
    (3, 1, 4, "Ulysses degree 3 (3 processes / cfg_degree 1) must divide the DiT's 4 attention heads"),
    (3, 2, 24, "3 processes cannot be split into 2 CFG groups"),
    (4, 3, 24, "cfg_degree is 3; expected 1 or 2"),
])
def test_degrees_that_do_not_divide_are_named(world, cfg_degree, heads, message):
    with pytest.raises(ValueError) as caught:
        check_degrees(world, cfg_degree, heads)
    assert str(caught.value).startswith(message)



def test_token_replace_changes_the_forward(single_process):
    """(So the parity above sees where each rank's first-frame tokens are.)"""
    assert rel_err(single_process["token_replace"], single_process["forward"]) > 1e-3


def test_a_shard_without_first_frame_tokens_gets_the_plain_vec():
    """Token replace over 4 shards of 12 tokens with a 15-token first frame: rank 0 holds 12 of
    them, rank 1 three, ranks 2 and 3 none, and those get the plain vec (no first-frame work)."""
    vec = FirstFrameVec(torch.zeros(1, 8), torch.ones(1, 8), 15)
    got = []
    for rank in range(4):
        shard = SequenceShard(ParallelGroups(1, 4, 0, rank, None, None))
        shard.local = 12
        got.append(shard.local_vec(vec))
    assert [v.n for v in got[:2]] == [12, 3] and all(isinstance(v, FirstFrameVec) for v in got[:2])
    assert got[2] is vec.vec and got[3] is vec.vec
    assert shard.local_vec(vec.vec) is vec.vec
