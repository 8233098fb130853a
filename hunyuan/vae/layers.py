"""Building blocks of the causal 3D VAE.

Every tensor is laid out [B, C, T, H, W]. Convolutions are causal in time: frames are padded only
at the front (by repeating the first frame), so frame t never sees frame t+1. The module and
parameter names follow the released (Tencent == diffusers) checkpoint so it loads directly.

Two optional behaviours are switched by a :class:`Runtime` the tiling code attaches to the model:
streaming (each causal conv keeps the tail of its input so the next chunk of frames continues
exactly where the last one stopped) and shared GroupNorm statistics (a norm with recorded
statistics normalises every tile with them instead of its own, which is what removes seams; see
:mod:`.tiling` for how exact they are).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


@dataclass
class Runtime:
    """Per-run state shared by every conv and norm of a model while it decodes chunk by chunk."""

    conv_cache: dict[int, torch.Tensor] | None = None  # None: plain (non-streaming) forward
    first_chunk: bool = True  # the chunk holding frame 0 (which is upsampled in space only)
    last_chunk: bool = False  # nothing follows: convs use their carried tails but keep none
    stats: dict[int, list[torch.Tensor]] = field(default_factory=dict)  # norm id -> shared [sum, sumsq, count]
    record: bool = False  # norms without shared statistics add each (whole) piece's sums to ``sums``
    stop_at: int | None = None  # id of the norm after whose recording the forward stops (StopPass)
    sums: dict[int, list[torch.Tensor]] = field(default_factory=dict)  # norm id -> [sum, sumsq, count]
    # (conv id, dtype, device) -> the conv's folded upsampling kernels (CausalConv3d.forward_upsampled)
    folded: dict[tuple, list[torch.Tensor]] = field(default_factory=dict)

    def start_tile(self) -> None:
        self.conv_cache = {}
        self.first_chunk = True
        self.last_chunk = False


def activation_format(device: torch.device | str) -> torch.memory_format:
    """Memory format for activations on ``device``.

    Channels-last on the CPU, where oneDNN's conv3d runs about 2.5x faster on NDHWC bf16 than on
    NCDHW and skips the layout copies around every convolution. Other devices keep the default:
    nothing was measured there.
    """
    return torch.channels_last_3d if torch.device(device).type == "cpu" else torch.contiguous_format


class StopPass(Exception):  # noqa: N818 - control flow, not an error
    """Raised by the norm ``Runtime.stop_at`` once it has recorded: the rest of the forward is not needed."""


class CausalConv3d(nn.Module):
    """Conv3d with replicate padding: symmetric in space, front-only (causal) in time."""

    runtime: Runtime | None = None

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride=1) -> None:
        super().__init__()
        self.conv = nn.Conv3d(cin, cout, kernel, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self._padded(x))

    def forward_upsampled(self, x: torch.Tensor, time: bool = False) -> torch.Tensor:
        """The conv of ``x`` upsampled 2x (nearest) in height and width, and with ``time`` also in
        time (the video's frame 0 once, every later frame twice), without building the upsampled input.

        Nearest upsampling repeats each pixel twice along an axis, so a 3-tap kernel reads only two
        distinct input pixels per output pixel: an even output pixel 2m reads x[m-1] with tap 0 and
        x[m] with taps 1 and 2; an odd one 2m+1 reads x[m] with taps 0 and 1 and x[m+1] with tap 2.
        Each parity is therefore a 2-tap conv of ``x`` with summed taps. In space that gives four
        2x2 convs (12 of the 27 multiply-adds per output voxel); in time the causal kernel over the
        repeated frames [x0, x1, x1, x2, x2, ...] reads (x[j-1], x[j]) as taps (0+1 | 2) for output
        frame 2j-1 and (0 | 1+2) for frame 2j, so eight 2x2x2 convs (8 of 27). Padding ``x`` by one
        replicated pixel (and, first, one repeated frame) is the upsampled input's padding; the tail
        carried to the next chunk is ``x``'s last two frames (with ``time``: its last frame), which
        upsampled are the tail :meth:`forward` would carry. Equal to ``forward`` of the upsampled
        input up to the rounding of the summed taps (summed in float32, or the weights' dtype where
        that is wider, then cast to ``x``'s dtype)."""
        if self.conv.kernel_size != (3, 3, 3) or self.conv.stride != (1, 1, 1):
            raise ValueError(f"forward_upsampled needs a 3x3x3 kernel and stride 1, got {self.conv}")
        rt = self.runtime
        first = rt is None or rt.first_chunk
        key = (id(self), x.dtype, x.device)
        kernels = rt.folded.get(key) if rt is not None else None
        if kernels is None:  # folded once per decode: tiles and chunks reuse them
            weight = self.conv.weight
            weight = weight.to(torch.promote_types(weight.dtype, torch.float32))  # summed in float32 at least
            by_time = _fold_taps(weight, 2) if time else (weight,)
            kernels = [k.to(x.dtype) for kt in by_time for ky in _fold_taps(kt, 3) for k in _fold_taps(ky, 4)]
            if rt is not None:
                rt.folded[key] = kernels
        kt = 2 if time else 3  # frames each conv reads: two distinct ones once time is folded
        xp = self._padded(x, kt)
        b, _, n, h, w = x.shape
        # (time phase, padded input frames, output frames): with ``time`` even frames 2j come from taps
        # (0 | 1+2) and odd ones 2j-1 from (0+1 | 2); the video's frame 0 is the pair (x0, x0), which the
        # even phase would repeat as frame -1.
        if not time:
            phases, frames = [(0, slice(None), slice(None))], n
        elif first:
            phases = [(1, slice(0, 2), slice(0, 1)), (1, slice(1, None), slice(1, None, 2)),
                      (0, slice(1, None), slice(2, None, 2))]
            frames = 2 * n - 1
        else:
            phases, frames = [(1, slice(None), slice(0, None, 2)), (0, slice(None), slice(1, None, 2))], 2 * n
        c = self.conv.out_channels
        out = None
        for phase, src, dst in phases:
            clip = xp[:, :, src]
            if clip.shape[2] < kt:  # a first chunk of frame 0 alone has no later pair
                continue
            for k in range(4):  # the (row, column) parities
                py, px = divmod(k, 2)
                y = F.conv3d(clip[:, :, :, py : py + h + 1, px : px + w + 1], kernels[4 * phase + k],
                             self.conv.bias)
                if out is None:  # [B, T, h, 2, w, 2, C] in channels-last, else [B, C, T, h, 2, w, 2]
                    # the conv's own output layout (oneDNN returns fp32 contiguous, bf16 channels-last);
                    # where one voxel makes both true, the device's activation layout
                    last = y.is_contiguous(memory_format=torch.channels_last_3d) and (
                        not y.is_contiguous() or activation_format(y.device) == torch.channels_last_3d)
                    out = y.new_empty((b, frames, h, 2, w, 2, c) if last else (b, c, frames, h, 2, w, 2))
                if last:
                    out[:, dst, :, py, :, px] = y.permute(0, 2, 3, 4, 1)
                else:
                    out[:, :, dst, :, py, :, px] = y
                del y
        if last:
            return out.view(b, frames, 2 * h, 2 * w, c).permute(0, 4, 1, 2, 3)
        return out.view(b, c, frames, 2 * h, 2 * w)

    def _padded(self, x: torch.Tensor, kt: int | None = None) -> torch.Tensor:
        """``x`` padded for the conv: replicate in space, the carried tail (or the first frame repeated) in
        time, for a kernel ``kt`` frames long (default: the conv's own)."""
        kh, kw = self.conv.kernel_size[1:]
        kt = kt or self.conv.kernel_size[0]
        space = (kw // 2, kw // 2, kh // 2, kh // 2)
        rt = self.runtime
        cache = rt.conv_cache if rt is not None else None
        prev = cache.pop(id(self), None) if cache is not None else None  # freed as soon as it is used
        if prev is not None:
            x = torch.cat([prev, F.pad(x, space + (0, 0), mode="replicate")], dim=2)
            del prev
        elif kt > 1 or kh > 1:
            x = F.pad(x, space + (kt - 1, 0), mode="replicate")
        if cache is not None and kt > 1 and not rt.last_chunk:
            st = self.conv.stride[0]
            used = ((x.shape[2] - kt) // st + 1) * st  # start of the next window
            cache[id(self)] = x[:, :, used:].clone()
        return x


def _fold_taps(weight: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A 3-tap kernel along ``dim`` seen through a 2x nearest upsampling: the 2-tap kernels of the
    even (taps 0 | 1+2) and odd (taps 0+1 | 2) output pixels."""
    a, b, c = weight.unbind(dim)
    return torch.stack([a, b + c], dim), torch.stack([a + b, c], dim)


class GroupNorm3d(nn.GroupNorm):
    """GroupNorm over (C/G, T, H, W) that can record or reuse statistics across tiles.

    With a runtime, a norm that has shared statistics uses them; any other normalises with its
    own (the piece's) statistics, adding them to the runtime's sums when it records. Recording
    counts every element of the piece: statistics passes run on tiles without overlap."""

    runtime: Runtime | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rt = self.runtime
        if rt is not None:
            shared = rt.stats.get(id(self))
            if shared is not None:
                return self._normalize_with(x, *shared)
            if rt.record:
                out = self._normalize_recording(rt, x)
                if rt.stop_at == id(self):
                    raise StopPass
                return out
        return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)

    def _normalize_with(self, x: torch.Tensor, total: torch.Tensor, total_sq: torch.Tensor, count: int) -> torch.Tensor:
        """Folded into one per-channel multiply-add, which keeps ``x``'s memory format (channels-last)."""
        mean = total / count
        rstd = torch.rsqrt((total_sq / count - mean * mean).clamp_min(0) + self.eps)
        b, c = x.shape[:2]
        per_group = c // self.num_groups
        scale = rstd.repeat_interleave(per_group, dim=1) * self.weight.double()  # [B, C]
        shift = self.bias.double() - mean.repeat_interleave(per_group, dim=1) * scale
        shape = (b, c) + (1,) * (x.ndim - 2)
        return torch.addcmul(shift.to(x.dtype).view(shape), x, scale.to(x.dtype).view(shape))

    def _normalize_recording(self, rt: Runtime, x: torch.Tensor) -> torch.Tensor:
        """The piece normalised with its own statistics, which are added to ``rt.sums`` (per sample
        and group). One group-norm kernel gives the output and the moments, so recording costs what a
        plain norm costs (it used to add a float copy and a separate reduction, ~4x a norm's time).
        On the CPU, float affine parameters make the kernel return float moments for bf16/fp16
        input; elsewhere a low-precision piece is normalised in float (CUDA's kernel takes one dtype
        for the input and its parameters). The output keeps ``x``'s dtype and memory format."""
        b, c = x.shape[:2]
        n = x[0, 0].numel()
        # CUDA's kernel takes one dtype for the input and its parameters: float moments need a float input
        piece = x if x.device.type == "cpu" or x.dtype == torch.float32 else x.float()
        out, mean, rstd = torch.native_group_norm(piece, self.weight.float(), self.bias.float(), b, c, n,
                                                  self.num_groups, self.eps)
        out = out.to(x.dtype)  # no copy when it already is
        count = n * (c // self.num_groups)
        mean = mean.double().view(b, self.num_groups)
        var = rstd.double().view(b, self.num_groups).pow(-2) - self.eps  # rstd = 1 / sqrt(var + eps)
        total, total_sq = mean * count, (var + mean * mean) * count
        acc = rt.sums.get(id(self))
        if acc is None:
            rt.sums[id(self)] = [total, total_sq, count]
        else:
            acc[0] += total
            acc[1] += total_sq
            acc[2] += count
        return out


class ResBlock(nn.Module):
    """norm -> SiLU -> causal conv, twice, plus a (1x1x1-projected when widths differ) skip."""

    def __init__(self, cin: int, cout: int, groups: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.norm1 = GroupNorm3d(groups, cin, eps=eps)
        self.conv1 = CausalConv3d(cin, cout)
        self.norm2 = GroupNorm3d(groups, cout, eps=eps)
        self.conv2 = CausalConv3d(cout, cout)
        self.conv_shortcut = CausalConv3d(cin, cout, kernel=1) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x), inplace=True))
        h = self.conv2(F.silu(self.norm2(h), inplace=True))
        skip = x if self.conv_shortcut is None else self.conv_shortcut(x)
        return h.add_(skip)


class CausalFrameAttention(nn.Module):
    """Single-head self-attention over all tokens, where a frame attends to itself and earlier frames."""

    def __init__(self, channels: int, groups: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.group_norm = GroupNorm3d(groups, channels, eps=eps)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t, h, w = x.shape[2:]
        tokens = rearrange(self.group_norm(x), "b c t h w -> b 1 (t h w) c")  # one head
        q, k, v = self.to_q(tokens), self.to_k(tokens), self.to_v(tokens)
        out = torch.empty_like(q)
        per_frame = h * w
        for f in range(t):  # query frame f sees key frames 0..f: no mask needed
            end = (f + 1) * per_frame
            out[:, :, f * per_frame : end] = F.scaled_dot_product_attention(
                q[:, :, f * per_frame : end], k[:, :, :end], v[:, :, :end]
            )
        out = rearrange(self.to_out[0](out), "b 1 (t h w) c -> b c t h w", t=t, h=h, w=w)
        return x + out


class Downsample(nn.Module):
    """Strided causal conv: (1,2,2) or (2,2,2)."""

    def __init__(self, channels: int, stride: tuple[int, int, int]) -> None:
        super().__init__()
        self.conv = CausalConv3d(channels, channels, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest upsampling then a causal conv. Frame 0 of the video is upsampled in space only."""

    runtime: Runtime | None = None

    def __init__(self, channels: int, factor: tuple[int, int, int]) -> None:
        super().__init__()
        self.factor = factor
        self.conv = CausalConv3d(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.factor in ((1, 2, 2), (2, 2, 2)):  # the released layout: folded into the conv
            return self.conv.forward_upsampled(x, time=self.factor[0] == 2)
        ft, fh, fw = self.factor
        if ft > 1:  # nearest in time: every frame repeated, but the video's frame 0 only once
            first = self.runtime is None or self.runtime.first_chunk
            rest = x[:, :, 1:] if first else x
            if rest.shape[2] > 0:
                rest = F.interpolate(rest, scale_factor=(ft, 1, 1), mode="nearest")  # keeps channels-last
                x = torch.cat([x[:, :, :1], rest], dim=2) if first else rest
        return self.conv(F.interpolate(x, scale_factor=(1, fh, fw), mode="nearest"))


class MidBlock(nn.Module):
    """resnet -> causal attention -> resnet, at the innermost resolution."""

    def __init__(self, channels: int, groups: int, attention: bool) -> None:
        super().__init__()
        self.resnets = nn.ModuleList([ResBlock(channels, channels, groups), ResBlock(channels, channels, groups)])
        self.attentions = nn.ModuleList([CausalFrameAttention(channels, groups)]) if attention else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.resnets[0](x)
        if self.attentions is not None:
            x = self.attentions[0](x)
        return self.resnets[1](x)
