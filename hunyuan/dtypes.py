"""The dtype names every loader and the memory planner accept, written once.

``auto`` lets the loader pick (each says how: the file's dtype, the device's fast one, ...);
the plain names store and compute in that dtype. fp8 storage has loader-specific names.
"""

from __future__ import annotations

import torch

AUTO = "auto"
PLAIN_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
FP8 = torch.float8_e4m3fn
