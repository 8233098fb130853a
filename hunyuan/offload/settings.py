"""What to swap: a frozen description attached to a DiT (by the BlockSwap node)."""

from __future__ import annotations

from dataclasses import dataclass, replace

SWAP_MODES = ("manual", "auto")


@dataclass(frozen=True)
class SwapSettings:
    """Block-swap settings for a HunyuanVideo DiT.

    double_blocks / single_blocks: how many of the first double / single blocks live in host
        memory and are streamed in just before use (0 = all resident).
    prefetch: how many swapped blocks are copied ahead of the one computing (0 = load on use).
    offload_txt_in / offload_img_in: keep the token refiner / patch embedding in host memory and
        load them only when called (the sampler never calls txt_in when refined text is given).
    mode: "manual" uses the counts as given; "auto" ignores them and lets the sampler pick the
        smallest counts that fit the free device memory (``hunyuan.memory.auto_swap``).
    """

    double_blocks: int = 0
    single_blocks: int = 0
    prefetch: int = 1
    offload_txt_in: bool = False
    offload_img_in: bool = False
    mode: str = "manual"

    def __post_init__(self):
        for name in ("double_blocks", "single_blocks", "prefetch"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name}={value!r} must be an integer >= 0")
        if self.mode not in SWAP_MODES:
            raise ValueError(f"mode={self.mode!r} is not one of {SWAP_MODES}")

    @property
    def swaps_anything(self) -> bool:
        return bool(self.double_blocks or self.single_blocks or self.offload_txt_in or self.offload_img_in)

    def resident(self, total: int, blocks: list[int], on_demand: list[int]) -> int:
        """Device size of a model of size ``total`` with these settings, given the sizes of the blocks
        they swap and of the on-demand units (any unit, bytes or parameters): everything not swapped,
        plus the copies in flight (the block computing and ``prefetch`` blocks ahead; an on-demand
        unit may be live together with ``prefetch`` blocks)."""
        largest_block, largest_extra, k = max(blocks, default=0), max(on_demand, default=0), self.prefetch
        in_flight = max(min(k + 1, len(blocks)) * largest_block, min(k, len(blocks)) * largest_block + largest_extra)
        return total - sum(blocks) - sum(on_demand) + in_flight

    def with_counts(self, double_blocks: int, single_blocks: int) -> SwapSettings:
        return replace(self, double_blocks=double_blocks, single_blocks=single_blocks, mode="manual")

    def clamp(self, n_double: int, n_single: int) -> SwapSettings:
        """The same settings with counts limited to what the model has."""
        return replace(
            self, double_blocks=min(self.double_blocks, n_double), single_blocks=min(self.single_blocks, n_single)
        )
