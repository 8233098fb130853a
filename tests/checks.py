"""Numerical checks shared by the tests: one definition of the error measure and its bounds."""

from __future__ import annotations

import torch

# fp32 parity bound (relative to the reference's largest magnitude): two fp32 computations of the
# same maths that may differ in kernel, blocking or summation order.
FP32_RTOL = 1e-5


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|, in fp32 whatever the inputs' dtype."""
    a, b = a.float(), b.float()
    return ((a - b).abs().max() / b.abs().max()).item()


def assert_same_weights(model: torch.nn.Module, reference: torch.nn.Module) -> None:
    """Same state-dict names and bit-identical tensors (the property of a loader test).

    Outputs of two such models are compared with a tolerance, not bit for bit: tensors at other
    addresses (an mmap'd file vs memory) may make oneDNN/MKL pick other kernels; on an AMD EPYC
    (AVX512, no AMX) a DiT loaded from a file differed by ~3e-8 relative from the in-memory one.
    """
    got, want = model.state_dict(), reference.state_dict()
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert torch.equal(got[key], value), key
