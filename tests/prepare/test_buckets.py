"""Bucket sets and assignments equal kohya's algorithm. Every expected value is worked out by hand below (the
arithmetic is in the comments), never taken from the code under test."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from lib_sdtrain.errors import ConfigError, DatasetError
from lib_sdtrain.prepare.buckets import (
    BucketAssigner,
    BucketChoice,
    BucketSettings,
    crop_ltrb,
    make_bucket_resolutions,
    parse_resolution,
    resize_and_crop,
)


def _with_transposes(pairs):
    return sorted(set(pairs) | {(h, w) for w, h in pairs})


def test_buckets_512():
    # area 512*512 = 262144; square: floor(sqrt(262144) / 64) * 64 = 512
    # w=256: 262144//256 = 1024 -> 1024  | w=320: 819 -> 768 | w=384: 682 -> 640 | w=448: 585 -> 576
    # w=512: 512 | w=576: 455 -> 448 | w=640: 409 -> 384 | w=704: 372 -> 320 | w=768: 341 -> 320
    # w=832: 315 -> 256 | w=896: 292 -> 256 | w=960: 273 -> 256 | w=1024: 256
    # (each height = floor(area // w / 64) * 64, capped at 1024, kept when >= 256; transposes added)
    expected = _with_transposes(
        [
            (512, 512),
            (256, 1024),
            (320, 768),
            (384, 640),
            (448, 576),
            (576, 448),
            (640, 384),
            (704, 320),
            (768, 320),
            (832, 256),
            (896, 256),
            (960, 256),
            (1024, 256),
        ]
    )
    assert len(expected) == 17
    assert make_bucket_resolutions((512, 512), 256, 1024, 64) == expected


def test_buckets_1024_tutorial():
    # area 1024*1024: for every w in 256..1024, area // w >= 1024, so the height is capped at 1024
    # -> (w, 1024) and (1024, w) for 13 widths, (1024, 1024) counted once: 25 buckets
    expected = sorted({(w, 1024) for w in range(256, 1025, 64)} | {(1024, w) for w in range(256, 1025, 64)})
    assert len(expected) == 25
    buckets = make_bucket_resolutions((1024, 1024), 256, 1024, 64)
    assert buckets == expected
    assert all(1024 in b for b in buckets)


def test_buckets_768x512_min_320():
    # area 393216; square: floor(627.06 / 64) * 64 = 576
    # w=320: 1228 -> 1216 -> cap 1024 | w=384: 1024 | w=448: 877 -> 832 | w=512: 768 | w=576: 682 -> 640
    # w=640: 614 -> 576 | w=704: 558 -> 512 | w=768: 512 | w=832: 472 -> 448 | w=896: 438 -> 384
    # w=960: 409 -> 384 | w=1024: 384
    expected = _with_transposes(
        [
            (576, 576),
            (320, 1024),
            (384, 1024),
            (448, 832),
            (512, 768),
            (576, 640),
            (640, 576),
            (704, 512),
            (768, 512),
            (832, 448),
            (896, 384),
            (960, 384),
            (1024, 384),
        ]
    )
    assert make_bucket_resolutions((768, 512), 320, 1024, 64) == expected


@pytest.mark.parametrize(
    ("size", "bucket", "resized"),
    [
        ((512, 512), (512, 512), (512, 512)),  # exact match
        ((640, 384), (640, 384), (640, 384)),  # exact match, not square
        ((1024, 1024), (512, 512), (512, 512)),  # ar 1; scale 512/1024
        ((1280, 768), (640, 384), (640, 384)),  # ar 5/3 = 640/384; scale 640/1280
        # ar 0.75: 448/576 = 0.778 is closest (0.6 and 1.0 are farther); 0.75 < 0.778 -> scale = 448/300
        # -> (int(300 * 1.4933 + .5), int(400 * 1.4933 + .5)) = (448, int(597.83)) = (448, 597)
        ((300, 400), (448, 576), (448, 597)),
        # ar 2.0: 704/320 = 2.2 (error 0.2) beats 640/384 = 1.667 (0.333); 2.0 < 2.2 -> scale = 704/1000
        # -> (704, int(352.5)) = (704, 352)
        ((1000, 500), (704, 320), (704, 352)),
        # ar 1.333: 576/448 = 1.2857 (0.048); 1.333 > 1.2857 -> scale = 448/600 -> (int(597.83), 448)
        ((800, 600), (576, 448), (597, 448)),
        # ar 20: the widest bucket 1024/256 = 4; 20 > 4 -> scale = 256/100 -> (5120, 256)
        ((2000, 100), (1024, 256), (5120, 256)),
        # ar 1.002: 512x512; 1.002 > 1 -> scale = 512/512 -> (513, 512)
        ((513, 512), (512, 512), (513, 512)),
    ],
)
def test_assignment_512(size, bucket, resized):
    choice = BucketAssigner(BucketSettings((512, 512), 256, 1024, 64)).select(*size)
    assert choice.bucket == bucket
    assert choice.resized_size == resized
    assert choice.ar_error == pytest.approx(bucket[0] / bucket[1] - size[0] / size[1])


@pytest.mark.parametrize(
    ("size", "bucket", "resized"),
    [
        # small enough (120000 <= 262144): no resize; bucket = sides floored to 64
        ((300, 400), (256, 384), (300, 400)),
        # 786432 > 262144, ar 4/3: ideal 591.2 x 443.4; rounding the width: 591 -> 576, 576/(4/3) = 432 -> 384,
        # ar 1.5; rounding the height: 443 -> 384, 384*(4/3) = 512 -> 512, ar 4/3 (exact) -> height wins:
        # resized (int(384 * 4/3 + .5), 384) = (512, 384)
        ((1024, 768), (512, 384), (512, 384)),
        # ar 4: ideal 1024 x 256, both roundings exact and equal -> the height branch: (1024, 256)
        ((2000, 500), (1024, 256), (1024, 256)),
    ],
)
def test_assignment_no_upscale(size, bucket, resized):
    choice = BucketAssigner(BucketSettings((512, 512), 256, 1024, 64, no_upscale=True)).select(*size)
    assert (choice.bucket, choice.resized_size) == (bucket, resized)


def test_no_upscale_tiny_image_is_refused():
    with pytest.raises(DatasetError, match="smaller than one bucket step"):
        BucketAssigner(BucketSettings((512, 512), no_upscale=True)).select(100, 50)  # height 50 -> bucket 0


def test_train_resolution_floors_to_8():
    # bucket_reso_steps 4 (kohya warns, but allows it): bucket sides are multiples of 4, latents of 8
    choice = BucketChoice(bucket=(300, 404), resized_size=(300, 404), ar_error=0.0)
    assert choice.train_resolution == (296, 400)


def test_crop_ltrb():
    # bucket 448x576 (ar 0.778) is wider than a 300x400 image (0.75): fit the height, width = 576 * 0.75 = 432
    # left = (448 - 432) // 2 = 8, top = 0, right = 8 + 432, bottom = 576
    assert crop_ltrb((448, 576), (300, 400)) == (8, 0, 440, 576)
    # bucket 640x384 (1.667) narrower than 2000x1000 (2.0): fit the width, height = 640 / 2 = 320
    assert crop_ltrb((640, 384), (2000, 1000)) == (0, 32, 640, 352)


def test_resize_and_crop_matches_pillow():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (400, 300, 3), dtype=np.uint8))
    # enlarging (448x597 from 300x400): LANCZOS, then crop rows (597 - 576) // 2 = 10 .. 586
    up = resize_and_crop(image, BucketChoice((448, 576), (448, 597), 0.0))
    expected_up = image.resize((448, 597), Image.Resampling.LANCZOS).crop((0, 10, 448, 586))
    assert np.array_equal(np.asarray(up), np.asarray(expected_up))
    # shrinking both sides (150x200 from 300x400): area average, no crop
    down = resize_and_crop(image, BucketChoice((128, 192), (150, 200), 0.0))
    expected_down = image.resize((150, 200), Image.Resampling.BOX).crop((11, 4, 139, 196))
    assert np.array_equal(np.asarray(down), np.asarray(expected_down))
    # a 2x2 box average of a known block, to pin the filter down
    block = Image.fromarray(np.array([[[0, 0, 0], [100, 100, 100]], [[200, 200, 200], [100, 100, 100]]], np.uint8))
    assert resize_and_crop(block, BucketChoice((1, 1), (1, 1), 0.0)).getpixel((0, 0)) == (100, 100, 100)


def test_settings_are_checked():
    assert parse_resolution("1024,768") == (1024, 768)
    assert parse_resolution("512") == (512, 512)
    with pytest.raises(ConfigError, match="width,height"):
        parse_resolution("big")
    with pytest.raises(ConfigError, match="max_bucket_reso"):
        BucketAssigner(BucketSettings((2048, 2048), 256, 1024, 64))
    with pytest.raises(ConfigError, match="bucket_reso_steps"):
        BucketAssigner(BucketSettings((512, 512), 256, 1024, 0))
