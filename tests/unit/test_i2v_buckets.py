"""HunyuanVideo-I2V's size buckets (Tencent's predict(): generate_crop_size_list(base, 32) and
get_closest_ratio over aspects rounded to 5 decimals). The expected sizes follow from those
definitions (Tencent's code itself was read, not run)."""

from __future__ import annotations

import pytest

from hunyuan.sampling.image import I2V_RESOLUTIONS, bucket_for, size_buckets


@pytest.mark.parametrize("resolution", list(I2V_RESOLUTIONS))
def test_buckets_are_grid_sized_within_the_area_and_ratio(resolution):
    base = I2V_RESOLUTIONS[resolution]
    buckets = size_buckets(base)
    side = base // 32 * 32  # 540p: 720 is not a multiple of 32, its square bucket is 704
    assert (side, side) in buckets
    for h, w in buckets:
        assert h % 32 == 0 and w % 32 == 0
        assert h * w <= base * base and max(h, w) <= 4 * min(h, w)
    assert buckets[0][0] > buckets[0][1] and buckets[-1][0] < buckets[-1][1]  # from the tallest to the widest
    assert len(set(buckets)) == len(buckets)


@pytest.mark.parametrize(("image_hw", "resolution", "expected"), [
    ((720, 1280), "720p", (704, 1248)),
    ((1280, 720), "720p", (1248, 704)),
    ((1024, 1024), "720p", (960, 960)),
    ((768, 1024), "720p", (832, 1088)),
    ((720, 1280), "540p", (512, 928)),
    ((720, 1280), "360p", (352, 640)),
    ((333, 500), "360p", (384, 576)),
])
def test_bucket_for_an_image(image_hw, resolution, expected):
    assert bucket_for(*image_hw, resolution) == expected


def test_unknown_resolution_is_named():
    with pytest.raises(ValueError, match="resolution='1080p' is not one of"):
        bucket_for(720, 1280, "1080p")
