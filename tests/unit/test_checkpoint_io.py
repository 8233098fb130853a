"""hunyuan.checkpoint_io: the one place the pack opens weight files."""

from __future__ import annotations

import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

from hunyuan.checkpoint_io import (
    CheckpointError,
    load_state_dict,
    open_state_dict,
    read_stored,
    strip_prefix,
    unwrap,
)


def test_safetensors_round_trip(tmp_path):
    sd = {"a.weight": torch.randn(3, 4), "b": torch.arange(5)}
    save_file(sd, tmp_path / "m.safetensors")
    loaded = load_state_dict(tmp_path / "m.safetensors")
    assert set(loaded) == set(sd)
    for k in sd:
        assert torch.equal(loaded[k], sd[k])


def test_pt_file_is_read_weights_only(tmp_path):
    sd = {"module": {"x": torch.ones(2)}}
    torch.save(sd, tmp_path / "m.pt")
    loaded = unwrap(load_state_dict(tmp_path / "m.pt"))
    assert torch.equal(loaded["x"], torch.ones(2))


class _Boom:
    """Unpickling this object would create a marker file (a stand-in for malicious code)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"w": _Boom(str(marker))}, f)
    torch.save({"w": _Boom(str(marker))}, tmp_path / "evil_zip.pt")
    for name in ("evil.pt", "evil_zip.pt"):
        with pytest.raises(CheckpointError, match="weights_only"):
            load_state_dict(tmp_path / name)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (None, "does not exist"),
        (b"", "empty"),
        (b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":", "not a readable safetensors"),
    ],
)
def test_bad_files_name_the_file(tmp_path, content, match):
    path = tmp_path / "bad.safetensors"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=match) as err:
        load_state_dict(path)
    assert str(path) in str(err.value)


def test_truncated_safetensors_is_refused(tmp_path):
    save_file({"w": torch.randn(64, 64)}, tmp_path / "full.safetensors")
    data = (tmp_path / "full.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.safetensors"):
        load_state_dict(tmp_path / "cut.safetensors")


def test_unknown_suffix_is_refused(tmp_path):
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    with pytest.raises(CheckpointError, match="suffix '.gguf'"):
        load_state_dict(tmp_path / "m.gguf")


def test_strip_prefix_keeps_only_the_prefixed_model():
    sd = {"model.diffusion_model.a": 1, "model.diffusion_model.b": 2, "vae.c": 3}
    assert strip_prefix(sd, ["model.model.", "model.diffusion_model."]) == {"a": 1, "b": 2}
    assert strip_prefix({"a": 1}, ["x."]) == {"a": 1}


@pytest.mark.parametrize("keep", [0.5, 100, -10])
def test_truncated_pt_is_called_damaged_not_unsafe(tmp_path, keep):
    full = tmp_path / "full.pt"
    torch.save({"x": torch.zeros(1000)}, str(full))
    data = full.read_bytes()
    cut = int(len(data) * keep) if isinstance(keep, float) else keep if keep > 0 else len(data) + keep
    path = tmp_path / "partial.pt"
    path.write_bytes(data[:cut])
    with pytest.raises(CheckpointError) as info:
        load_state_dict(path)
    message = str(info.value)
    assert "truncated or damaged" in message and f"({cut} bytes)" in message and str(path) in message
    assert "refused" not in message


def test_index_reads_the_header_and_refuses_an_unread_dtype_only_when_used(tmp_path):
    """open_state_dict indexes a safetensors file (shape and dtype, no data); read_stored reads
    the tensors asked for. A bundled tensor of a dtype the pack does not read (here uint16) does
    not stop the others; using it is refused by name."""
    path = tmp_path / "mixed.safetensors"
    weight = torch.randn(3, 4)
    save_file({"model.w": weight, "other.ids": torch.zeros(5, dtype=torch.uint16)}, str(path))
    index = open_state_dict(path)
    assert index["model.w"].shape == (3, 4) and index["model.w"].dtype == torch.float32
    assert torch.equal(read_stored({"w": index["model.w"]})["w"], weight)
    with pytest.raises(CheckpointError, match=r"tensor 'other.ids' has dtype U16, which the pack does not read"):
        index["other.ids"].meta()


@pytest.mark.parametrize("copy", [False, True])
def test_read_stored_as_views_or_copies_gives_the_same_tensors(tmp_path, copy):
    """copy=True reads with plain reads (no map of the file); every dtype the pack reads, a scalar
    and an empty tensor come back equal to what was saved."""
    sd = {"f32": torch.randn(3, 4), "bf16": torch.randn(5).bfloat16(), "fp8": torch.randn(2, 3).to(torch.float8_e4m3fn),
          "i64": torch.arange(4), "scalar": torch.tensor(0.125), "empty": torch.zeros(0), "flag": torch.tensor([True])}
    save_file(sd, str(tmp_path / "m.safetensors"), metadata={"format": "pt"})
    got = read_stored(open_state_dict(tmp_path / "m.safetensors"), copy=copy)
    for k, v in sd.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape, k
        assert torch.equal(got[k].reshape(-1).view(torch.uint8), v.reshape(-1).view(torch.uint8)), k


def test_a_damaged_safetensors_header_is_refused_by_name(tmp_path):
    path = tmp_path / "m.safetensors"
    save_file({"w": torch.randn(64, 64)}, str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])  # a partial download
    with pytest.raises(CheckpointError, match=r"tensor 'w' ends at byte \d+, past the file's end .* truncated"):
        open_state_dict(path)
    path.write_bytes(b"\xff" * 8 + data[8:])  # a header length larger than the file
    with pytest.raises(CheckpointError, match="header length .* does not fit the file"):
        open_state_dict(path)
    path.write_bytes(data[:8] + b"{" * (len(data) - 8))
    with pytest.raises(CheckpointError, match="not a readable safetensors file: its header is not JSON: JSONDecodeError"):
        open_state_dict(path)


def _with_header(path, header: dict, data: bytes) -> None:
    import json
    import struct

    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)


@pytest.mark.parametrize(("header", "data", "match"), [
    # two names on the same bytes: a small file claiming a model many times its size
    ({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
      "b": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, 16, "starts at data byte 0, expected 16"),
    ({"a": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}}, 24, "starts at data byte 8, expected 0"),
    ({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, 24, "end at data byte 16, but it holds 24"),
    ({"a": {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}}, 4, "malformed header entry"),
    ({"a": {"dtype": "F32", "shape": [2**70], "data_offsets": [0, 4]}}, 4, "malformed header entry"),
    ({"a": {"dtype": ["F32"], "shape": [1], "data_offsets": [0, 4]}}, 4, "malformed header entry"),
    ({"a": {"dtype": "F32", "shape": [1] * 65, "data_offsets": [0, 4]}}, 4, "malformed header entry"),
    ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 4]}}, 4, "has 4 bytes for shape"),
    ({"a": [1, 2]}, 4, "malformed header entry"),
    ({"__metadata__": {"format": 1}}, 0, "__metadata__ is not a map of strings"),
])
def test_a_hostile_safetensors_header_is_refused_as_the_library_refuses_it(tmp_path, header, data, match):
    """The pack parses safetensors headers itself (so it never maps a file to index it); it must be
    as strict as the safetensors library, whose own check refuses each of these."""
    path = tmp_path / "m.safetensors"
    _with_header(path, header, bytes(data))
    with pytest.raises(CheckpointError, match=match):
        open_state_dict(path)


def test_duplicate_names_and_non_json_headers_are_refused(tmp_path):
    import struct

    path = tmp_path / "m.safetensors"
    entry = b'{"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}'
    for blob, match in ((b'{"a": ' + entry + b', "a": ' + entry + b"}", "duplicate names"),
                        (b"[" * 5000, "not JSON"), (b'{"a": 1' + b"0" * 5000 + b"}", "not JSON"),
                        ("\ufeff{}".encode(), "not JSON"), ("{}".encode("utf-16"), "not JSON")):
        path.write_bytes(struct.pack("<Q", len(blob)) + blob + bytes(4))
        with pytest.raises(CheckpointError, match=match):
            open_state_dict(path)


def test_a_legacy_pt_is_read_whole_and_a_zip_pt_mapped(tmp_path):
    sd = {"w": torch.randn(3)}
    torch.save(sd, tmp_path / "zip.pt")
    torch.save(sd, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    for name in ("zip.pt", "legacy.pt"):
        assert torch.equal(load_state_dict(tmp_path / name)["w"], sd["w"])
