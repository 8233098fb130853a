"""Loading a DiT or text-encoder safetensors file holds the finished model plus one block (one
layer for the LLM), never the file as well (issue 14: the 25.6 GB bf16 DiT loaded as fp8 storage,
and the 16 GB fp16 LLM converted, must fit a 24 GiB machine).

Each load runs in a fresh interpreter whose peak RSS (VmHWM, reset after the imports) is read
from /proc, as bench/common.py does. Before streaming, the loader read the whole file into a dict
(file-sized) while its memory map was open (file-sized again), then cast it."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from bench.common import ROOT
from hunyuan.dit.checkpoint import _by_block
from hunyuan.dit.config import DiTConfig
from hunyuan.dit.keymap import to_diffusers
from hunyuan.dit.tiny import random_state_dict
from hunyuan.text.loader import LLAVA_LLAMA3_8B
from hunyuan.text.tiny import llama_shapes

# hidden 512 (4 heads x 128, the real head width), 6 + 6 blocks: a 360 MB fp32 file, a 100 MB model
CONFIG = DiTConfig(hidden_size=512, num_heads=4, depth_double=6, depth_single=6, text_states_dim=64,
                   text_states_dim_2=64)

CHILD = r"""
import json, sys, torch
from bench.common import reset_peak, rss_peak, rss_now
from hunyuan.dit.checkpoint import load_dit
torch.cat([torch.empty(2, device="meta")] * 2)  # torch's meta kernels load on first use (~150 MB, once)
base = rss_now()
reset_peak()
model = load_dit(sys.argv[1], dtype=torch.bfloat16, weight_dtype=torch.float8_e4m3fn)
peak = rss_peak() - base
size = sum(t.numel() * t.element_size() for t in model.state_dict().values())
print(json.dumps({"peak": peak, "model": size}))
"""


def _group_bytes(sd: dict[str, torch.Tensor]) -> int:
    return max(sum(sd[k].numel() * sd[k].element_size() for k in keys) for keys in _by_block(sd))


@pytest.mark.parametrize(("layout", "file_dtype"), [("tencent", torch.float32), ("diffusers", torch.float32),
                                                   ("tencent", torch.bfloat16)])
def test_peak_is_the_model_plus_one_block_not_the_file(tmp_path, layout, file_dtype):
    """bf16 in the file: the norms and biases keep their dtype, and must still be copies, not
    views that keep the file's memory map (and every page read through it) alive."""
    sd = {k: v.to(file_dtype) for k, v in random_state_dict(CONFIG, seed=3).items()}
    if layout == "diffusers":
        sd = {k: v.contiguous() for k, v in to_diffusers(sd).items()}
    path = tmp_path / "dit.safetensors"
    save_file(sd, str(path))
    file_bytes = path.stat().st_size
    group = _group_bytes(sd)
    del sd

    proc = subprocess.run([sys.executable, "-c", CHILD, str(path)], capture_output=True, text=True, timeout=600,
                          cwd=str(ROOT))
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    # the model, one block read (fp32) plus its cast copy, and 64 MiB for the interpreter's own growth
    bound = got["model"] + 2 * group + 64 * 2**20
    assert got["peak"] <= bound, (got, group, file_bytes)


def test_blocks_are_grouped_with_their_fused_parts():
    """diffusers stores q, k, v (and a single block's mlp) apart; they must be read together."""
    small = dataclasses.replace(CONFIG, hidden_size=128, num_heads=1, depth_double=2, depth_single=2)
    keys = list(to_diffusers(random_state_dict(small)))
    groups = _by_block(keys)
    for keys_of_group in groups:
        blocks = {k.split(".")[0] + "." + k.split(".")[1] for k in keys_of_group if k[0].isalpha() and
                  k.split(".")[1].isdigit()}
        assert len(blocks) <= 1, blocks
    assert len(groups) == 2 + 2 + 1  # every block on its own, the rest together
    assert sorted(k for g in groups for k in g) == sorted(keys)


LLM_CHILD = r"""
import json, sys, torch
from bench.common import reset_peak, rss_peak, rss_now
from hunyuan.text import load_llm, parse_dtype
torch.cat([torch.empty(2, device="meta")] * 2)
base = rss_now()
reset_peak()
model = load_llm(sys.argv[1], parse_dtype("bf16"))
peak = rss_peak() - base
size = sum(t.numel() * t.element_size() for t in model.state_dict().values())
print(json.dumps({"peak": peak, "model": size}))
"""


def _fp32_llm_file(tmp_path) -> tuple:
    """An fp32 single-file LLM (ComfyUI's text_encoders layout, ``model.*``): the real vocabulary
    (the pad token is id 128258) at width 128 with wide MLPs: a 364 MB file, a 187 MB bf16 model,
    the largest tensor (the embedding) 66 MB. Returns the path and that largest tensor's bytes."""
    config = {**LLAVA_LLAMA3_8B, "hidden_size": 128, "intermediate_size": 8192, "num_hidden_layers": 24,
              "num_attention_heads": 1, "num_key_value_heads": 1, "head_dim": 128}
    gen = torch.Generator().manual_seed(0)
    sd = {"model." + k: 0.02 * torch.randn(shape, generator=gen) for k, shape in llama_shapes(config).items()}
    path = tmp_path / "llm.safetensors"
    save_file(sd, str(path))
    return path, max(t.numel() * t.element_size() for t in sd.values())


def test_llm_conversion_holds_the_model_plus_one_layer(tmp_path):
    """The fp32 LLM converted to bf16 (it peaked at 568 MB before, 199 MB now)."""
    path, largest = _fp32_llm_file(tmp_path)
    proc = subprocess.run([sys.executable, "-c", LLM_CHILD, str(path)], capture_output=True, text=True, timeout=600,
                          cwd=str(ROOT))
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    # the model, the largest group read (the embedding: one layer here is 13 MB) plus its cast copy,
    # and 64 MiB for the interpreter's own growth
    assert got["peak"] <= got["model"] + 2 * largest + 64 * 2**20, (got, largest, path.stat().st_size)


PT_CHILD = r"""
import json, os, sys, torch
from bench.common import rss_anon
from hunyuan.dit.checkpoint import load_dit
torch.cat([torch.empty(2, device="meta")] * 2)
anon = rss_anon()
model = load_dit(sys.argv[1], dtype=torch.bfloat16, weight_dtype=torch.float8_e4m3fn)
grown = rss_anon() - anon
fp8 = [t for t in model.state_dict().values() if t.dtype == torch.float8_e4m3fn]
real = os.path.realpath(sys.argv[1])
maps = [line.split() for line in open("/proc/self/maps") if line.rstrip().endswith(real)]
spans = [tuple(int(x, 16) for x in m[0].split("-")) for m in maps]
in_file = sum(any(lo <= t.data_ptr() < hi for lo, hi in spans) for t in fp8)
print("PT", json.dumps({"anon": grown, "fp8_bytes": sum(t.numel() for t in fp8), "fp8": len(fp8), "in_file": in_file}))
"""


def test_tencent_fp8_pt_loaded_as_fp8_stays_in_the_file_map(tmp_path):
    """Tencent's fp8 ``.pt`` (13 GB at the real size) loaded as fp8: ``torch.load(mmap=True)`` maps
    the file once, and its fp8 weights are kept as views of that map (page cache, reclaimable),
    not copied into the process's own memory next to it (which held the file's 13 GB twice:
    the copies plus the mapped pages read)."""
    sd = random_state_dict(CONFIG, seed=5)
    q, scales = {}, {}
    for k, v in sd.items():
        if k.startswith(("double_blocks.", "single_blocks.")) and k.endswith(".weight") and v.ndim == 2:
            scales[k[: -len(".weight")]] = v.abs().max().reshape(1) / 448.0
            q[k] = (v / scales[k[: -len(".weight")]]).to(torch.float8_e4m3fn)
        else:
            q[k] = v.to(torch.bfloat16)
    path = tmp_path / "mp_rank_00_model_states_fp8.pt"
    torch.save({"module": q}, str(path))
    torch.save(scales, str(tmp_path / "mp_rank_00_model_states_fp8_map.pt"))
    del sd, q
    proc = subprocess.run([sys.executable, "-c", PT_CHILD, str(path)], capture_output=True, text=True, timeout=600,
                          cwd=str(ROOT))
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1][3:])
    assert got["fp8"] > 0, got
    assert got["in_file"] == got["fp8"], got  # every fp8 weight is a view of the file's map
    # the process's own memory grew by the non-fp8 rest (bf16 norms, biases, embedders), far
    # less than the fp8 weights it would hold as copies (72 MB here)
    assert got["anon"] < got["fp8_bytes"] / 4, got


# the child's address space may grow by argv[2] bytes past what its imports took (RLIMIT_AS: a
# map larger than that is refused as a machine without swap refuses one larger than its memory)
AS_LIMIT = r"""
import resource
torch.set_num_threads(1)
torch.cat([torch.empty(2, device="meta")] * 2)
size = int([x for x in open("/proc/self/status") if x.startswith("VmSize:")][0].split()[1]) * 1024
limit = size + int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
"""
AS_CHILD = r"""
import sys, torch
from hunyuan.dit.checkpoint import load_dit
""" + AS_LIMIT + r"""
model = load_dit(sys.argv[1], dtype=torch.bfloat16, weight_dtype=torch.float8_e4m3fn)
print("OK", sum(t.numel() * t.element_size() for t in model.state_dict().values()))
"""
LLM_AS_CHILD = r"""
import sys, torch
from hunyuan.checkpoint_io import CheckpointError
from hunyuan.text import load_llm, parse_dtype
""" + AS_LIMIT + r"""
try:
    model = load_llm(sys.argv[1], parse_dtype(sys.argv[3]))
except CheckpointError as exc:
    print("REFUSED", exc)
else:
    print("OK", sum(t.numel() * t.element_size() for t in model.state_dict().values()))
"""


def _limited(child: str, *args) -> subprocess.CompletedProcess:
    """``child`` run with ``args`` in a fresh interpreter (one thread, one malloc arena)."""
    return subprocess.run([sys.executable, "-c", child, *map(str, args)], capture_output=True, text=True,
                          timeout=600, cwd=str(ROOT), env={**os.environ, "MALLOC_ARENA_MAX": "1"})


def test_a_file_larger_than_the_memory_left_loads_without_mapping_it(tmp_path):
    """A 24 GiB machine without swap refuses to map the 25.6 GB bf16 DiT at all (the kernel's
    overcommit check: ``unable to mmap ... Cannot allocate memory``, seen in ``make rehearse``).
    The loader reads blocks with plain reads instead: here the process may grow by 60 % of the
    file's size (the 100 MB model plus one block fit; a map of the 360 MB file does not)."""
    sd = random_state_dict(CONFIG, seed=3)
    path = tmp_path / "dit.safetensors"
    save_file(sd, str(path))
    del sd
    proc = _limited(AS_CHILD, path, int(0.6 * path.stat().st_size))
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-2000:]


def test_a_text_encoder_kept_in_its_dtype_that_cannot_be_mapped_says_what_to_do(tmp_path):
    """An LLM file kept in its own dtype (``auto``) is read through a map of the file; where the
    memory left is less than the file, the kernel refuses the map, and the user gets the file,
    its size, the memory available and the dtypes that convert it with plain reads instead of
    ``Cannot allocate memory`` (a map of the file can never fit the limit: deterministic). That a
    converting dtype then loads within such a limit is not checked here: under RLIMIT_AS the
    address space malloc leaves fragmented makes that pass or fail by a few percent of the limit."""
    path, _ = _fp32_llm_file(tmp_path)
    refused = _limited(LLM_AS_CHILD, path, int(0.8 * path.stat().st_size), "auto")
    assert refused.returncode == 0 and refused.stdout.startswith("REFUSED"), (refused.stdout, refused.stderr[-2000:])
    message = refused.stdout
    assert f"checkpoint {str(path)!r} ({path.stat().st_size / 2**30:.2f} GiB) cannot be memory-mapped" in message
    assert "GiB of memory available" in message
    assert "address space is limited to" in message and "(ulimit -v)" in message  # the cause here, named
    assert "The LLM's float32 tensors are kept in the file's dtype" in message
    assert ("load it with dtype 'bf16' or 'fp16' or 'fp8_e4m3fn (bf16 compute)' or 'fp8_e4m3fn (fp16 compute)', "
            "which converts every tensor with plain reads") in message


PLAIN_READ_AS_CHILD = r"""
import sys, torch
from hunyuan.checkpoint_io import CheckpointError, index_safetensors, read_stored
""" + AS_LIMIT + r"""
try:
    read_stored(index_safetensors(sys.argv[1]), copy=True)
except CheckpointError as exc:
    print("REFUSED", type(exc).__name__, exc)
else:
    print("OK")
"""


def test_running_out_of_memory_in_a_plain_read_names_the_memory_not_the_file(tmp_path):
    """A tensor read with plain reads (a converting loader) into memory that is not there: the
    error names the tensor, its size, the memory available and the address-space limit, and says
    the file is readable. It used to say the file was "not a readable safetensors file"."""
    path = tmp_path / "big.safetensors"
    save_file({"small": torch.zeros(4), "big": torch.zeros(64 * 2**20)}, str(path))  # 256 MiB float32
    proc = _limited(PLAIN_READ_AS_CHILD, path, 64 * 2**20)
    assert proc.returncode == 0 and proc.stdout.startswith("REFUSED HostMemoryError"), (proc.stdout, proc.stderr[-2000:])
    assert f"checkpoint {str(path)!r}: out of host memory while reading tensor 'big' (256 MiB;" in proc.stdout
    assert "GiB of memory available" in proc.stdout and "(ulimit -v)" in proc.stdout
    assert "not a readable safetensors file" not in proc.stdout and "The file is readable" in proc.stdout


PT_AS_CHILD = r"""
import sys, torch
from hunyuan.checkpoint_io import CheckpointError, load_state_dict
""" + AS_LIMIT + r"""
try:
    load_state_dict(sys.argv[1])
except CheckpointError as exc:
    print("REFUSED", type(exc).__name__, exc)
else:
    print("OK")
"""


def test_a_pt_file_whose_map_is_refused_says_what_to_do(tmp_path):
    """A zip ``.pt`` is memory-mapped (never read whole); where the map cannot fit the memory left
    the error names the file, its size, the memory and the limit, and says to convert it."""
    path = tmp_path / "model.pt"
    torch.save({"big": torch.zeros(64 * 2**20)}, str(path))  # 256 MiB
    proc = _limited(PT_AS_CHILD, path, 64 * 2**20)
    assert proc.returncode == 0 and proc.stdout.startswith("REFUSED MapRefused"), (proc.stdout, proc.stderr[-2000:])
    size = path.stat().st_size / 2**30
    assert f"checkpoint {str(path)!r} ({size:.2f} GiB) cannot be memory-mapped" in proc.stdout
    assert "(ulimit -v)" in proc.stdout and "Convert it to .safetensors" in proc.stdout
