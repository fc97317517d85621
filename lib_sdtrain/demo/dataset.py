"""The demo dataset: a round red creature with big eyes in a few scenes, drawn on the spot with Pillow (so the
pictures belong to nobody), in three sizes and aspect ratios so that bucketing has something to sort."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageDraw

SIZES: list[tuple[int, int]] = [(96, 96), (128, 96), (96, 128)]  # (width, height)
SUPERSAMPLE = 4  # drawn 4x larger and scaled down: Pillow's shapes have no anti-aliasing
Color = tuple[int, int, int]


def draw_demo_dataset(folder: str | Path, count: int = 12, seed: int = 0) -> list[Path]:
    """Write `count` PNGs named demo_NN.png into `folder` (no caption files); the same seed draws the same images."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    paths = []
    for index in range(count):
        size = SIZES[index % len(SIZES)]
        scene = SCENES[(index + index // len(SCENES)) % len(SCENES)]
        path = folder / f"demo_{index:02d}.png"
        draw_demo_image(size, scene, rng).save(path, format="PNG")
        paths.append(path)
    return paths


def draw_demo_image(size: tuple[int, int], scene: str, rng: random.Random) -> Image.Image:
    width, height = size[0] * SUPERSAMPLE, size[1] * SUPERSAMPLE
    image = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(image)
    ground = SCENE_PAINTERS[scene](draw, width, height, rng)
    _draw_creature(draw, width, height, ground, rng)
    return image.resize(size, Image.Resampling.LANCZOS)


# --- scenes: each paints the background and returns the y of the ground line (None: the creature floats) ----------


def _vertical_gradient(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], top: Color, bottom: Color) -> None:
    x0, y0, x1, y1 = box
    for y in range(y0, y1):
        t = (y - y0) / max(1, y1 - y0 - 1)
        draw.line([(x0, y), (x1, y)], fill=tuple(round(a + (b - a) * t) for a, b in zip(top, bottom, strict=True)))


def _meadow(draw: ImageDraw.ImageDraw, w: int, h: int, rng: random.Random) -> int:
    horizon = int(h * rng.uniform(0.55, 0.7))
    _vertical_gradient(draw, (0, 0, w, horizon), (90, 160, 235), (170, 215, 245))
    _vertical_gradient(draw, (0, horizon, w, h), (90, 180, 70), (50, 130, 40))
    sun = rng.uniform(0.1, 0.9) * w, h * 0.15
    r = w * 0.07
    draw.ellipse([sun[0] - r, sun[1] - r, sun[0] + r, sun[1] + r], fill=(255, 225, 90))
    return horizon


def _beach(draw: ImageDraw.ImageDraw, w: int, h: int, rng: random.Random) -> int:
    sea = int(h * rng.uniform(0.45, 0.55))
    shore = sea + int(h * 0.12)
    _vertical_gradient(draw, (0, 0, w, sea), (100, 175, 240), (190, 225, 250))
    _vertical_gradient(draw, (0, sea, w, shore), (30, 110, 180), (60, 160, 200))
    _vertical_gradient(draw, (0, shore, w, h), (235, 215, 160), (215, 190, 130))
    return shore + int(h * 0.1)


def _snow(draw: ImageDraw.ImageDraw, w: int, h: int, rng: random.Random) -> int:
    horizon = int(h * rng.uniform(0.5, 0.65))
    _vertical_gradient(draw, (0, 0, w, horizon), (170, 185, 205), (215, 222, 232))
    _vertical_gradient(draw, (0, horizon, w, h), (250, 250, 255), (225, 232, 245))
    for _ in range(40):
        x, y, r = rng.uniform(0, w), rng.uniform(0, h), w * rng.uniform(0.004, 0.012)
        draw.ellipse([x - r, y - r, x + r, y + r], fill=(255, 255, 255))
    return horizon


def _night(draw: ImageDraw.ImageDraw, w: int, h: int, rng: random.Random) -> int:
    horizon = int(h * rng.uniform(0.7, 0.8))
    _vertical_gradient(draw, (0, 0, w, horizon), (10, 15, 45), (40, 40, 90))
    _vertical_gradient(draw, (0, horizon, w, h), (20, 35, 30), (10, 20, 15))
    for _ in range(30):
        x, y, r = rng.uniform(0, w), rng.uniform(0, horizon), w * rng.uniform(0.003, 0.008)
        draw.ellipse([x - r, y - r, x + r, y + r], fill=(250, 250, 210))
    moon, r = (rng.uniform(0.15, 0.85) * w, h * 0.15), w * 0.08
    draw.ellipse([moon[0] - r, moon[1] - r, moon[0] + r, moon[1] + r], fill=(245, 240, 200))
    return horizon


def _sunset(draw: ImageDraw.ImageDraw, w: int, h: int, rng: random.Random) -> int:
    horizon = int(h * rng.uniform(0.6, 0.72))
    _vertical_gradient(draw, (0, 0, w, horizon), (120, 70, 150), (250, 150, 70))
    sun, r = rng.uniform(0.2, 0.8) * w, w * 0.12
    draw.ellipse([sun - r, horizon - r, sun + r, horizon + r], fill=(255, 200, 90))
    _vertical_gradient(draw, (0, horizon, w, h), (70, 45, 60), (40, 25, 35))
    return horizon


def _plain(draw: ImageDraw.ImageDraw, w: int, h: int, rng: random.Random) -> None:
    shade = rng.randint(235, 255)
    draw.rectangle([0, 0, w, h], fill=(shade, shade, shade))
    return None


SCENE_PAINTERS: dict[str, Callable[[ImageDraw.ImageDraw, int, int, random.Random], int | None]] = {
    "meadow": _meadow,
    "beach": _beach,
    "snow": _snow,
    "night": _night,
    "sunset": _sunset,
    "plain": _plain,
}
SCENES = list(SCENE_PAINTERS)


# --- the creature --------------------------------------------------------------------------------------------------


def _draw_creature(draw: ImageDraw.ImageDraw, w: int, h: int, ground: int | None, rng: random.Random) -> None:
    side = min(w, h)
    rx = side * rng.uniform(0.2, 0.3)
    ry = rx * rng.uniform(0.8, 0.95)
    cx = rng.uniform(rx + side * 0.05, w - rx - side * 0.05)
    if ground is None:
        cy = rng.uniform(ry + side * 0.05, h - ry * 1.3 - side * 0.05)
    else:  # standing on the ground, a little into it so that the scene reads as depth
        cy = min(ground + rng.uniform(0, 0.1) * h, h - ry * 1.3) - ry * 0.9
    red: Color = (rng.randint(205, 235), rng.randint(30, 60), rng.randint(35, 60))
    dark: Color = (red[0] // 2, red[1] // 3, red[2] // 3)
    outline = max(2, round(side * 0.012))
    for foot in (-1, 1):  # feet first, the body covers their tops
        fx, fy = cx + foot * rx * 0.45, cy + ry * 0.9
        draw.ellipse([fx - rx * 0.28, fy - ry * 0.18, fx + rx * 0.28, fy + ry * 0.22], fill=dark)
    draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=red, outline=dark, width=outline)
    gaze = rng.uniform(-0.35, 0.35), rng.uniform(-0.25, 0.25)
    for eye in (-1, 1):
        ex, ey, er = cx + eye * rx * 0.38, cy - ry * 0.2, rx * 0.26
        draw.ellipse([ex - er, ey - er * 1.15, ex + er, ey + er * 1.15], fill=(255, 255, 255), outline=dark)
        px, py, pr = ex + gaze[0] * er, ey + gaze[1] * er, er * 0.5
        draw.ellipse([px - pr, py - pr, px + pr, py + pr], fill=(20, 20, 30))
    mouth = cy + ry * 0.35
    draw.arc([cx - rx * 0.25, mouth - ry * 0.15, cx + rx * 0.25, mouth + ry * 0.15], 10, 170, fill=dark, width=outline)
