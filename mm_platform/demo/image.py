"""Demo pictures: jittered PIL drawings in each category's style, with a subtle variant cue."""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from mm_platform.demo.categories import P_VARIANT_CUE, Category


def _jitter_rgb(rng: np.random.Generator, base: tuple[int, int, int], amount: int) -> tuple[int, int, int]:
    r, g, b = (int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in base)
    return (r, g, b)


def _noisy_background(rng: np.random.Generator, size: int, base: tuple[int, int, int], sigma: float) -> Image.Image:
    arr = np.empty((size, size, 3), dtype=np.float32)
    arr[...] = np.asarray(_jitter_rgb(rng, base, 18), dtype=np.float32)
    arr += rng.normal(0.0, sigma, size=(size, size, 3)).astype(np.float32)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def _draw_discs(rng: np.random.Generator, size: int, variant: int) -> Image.Image:
    img = _noisy_background(rng, size, (245, 232, 205), 10.0)
    d = ImageDraw.Draw(img)
    palette = ((214, 48, 38), (235, 120, 30), (200, 30, 70), (240, 160, 40))
    n = int(rng.integers(1, 3)) if variant == 0 else int(rng.integers(3, 6))
    for _ in range(n):
        r = size * (rng.uniform(0.22, 0.34) if variant == 0 else rng.uniform(0.10, 0.18))
        cx, cy = rng.uniform(r, size - r, size=2)
        col = _jitter_rgb(rng, palette[int(rng.integers(len(palette)))], 20)
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=col, outline=(90, 20, 10), width=2)
        # dotted texture on the disc
        for _ in range(int(r)):
            a, rr = rng.uniform(0, 2 * math.pi), rng.uniform(0, r * 0.85)
            x, y = cx + rr * math.cos(a), cy + rr * math.sin(a)
            d.ellipse((x - 1.5, y - 1.5, x + 1.5, y + 1.5), fill=(255, 225, 170))
    return img


def _draw_stripes(rng: np.random.Generator, size: int, variant: int) -> Image.Image:
    big = size * 2
    layer = _noisy_background(rng, big, (215, 235, 245), 8.0)
    d = ImageDraw.Draw(layer)
    palette = ((30, 80, 200), (20, 150, 170), (40, 60, 150), (60, 170, 220))
    period = rng.uniform(10, 16) if variant == 0 else rng.uniform(14, 22)
    width = period * rng.uniform(0.35, 0.55)
    col = _jitter_rgb(rng, palette[int(rng.integers(len(palette)))], 20)
    col2 = _jitter_rgb(rng, palette[int(rng.integers(len(palette)))], 20)
    x = rng.uniform(0, period)
    k = 0
    while x < big:
        d.rectangle((x, 0, x + width, big), fill=col if k % 2 == 0 else col2)
        x += period
        k += 1
    if variant == 1:  # a few thin cross stripes
        y = rng.uniform(0, 30)
        while y < big:
            d.rectangle((0, y, big, y + 2), fill=(250, 250, 255))
            y += rng.uniform(24, 36)
    angle = rng.uniform(20, 70) * (1 if rng.random() < 0.5 else -1)
    layer = layer.rotate(angle, resample=Image.Resampling.BILINEAR)
    off = int(rng.integers(0, size // 2 + 1)), int(rng.integers(0, size // 2 + 1))
    return layer.crop((size // 4 + off[0] // 2, size // 4 + off[1] // 2,
                       size // 4 + off[0] // 2 + size, size // 4 + off[1] // 2 + size))


def _draw_checker(rng: np.random.Generator, size: int, variant: int) -> Image.Image:
    img = _noisy_background(rng, size, (200, 230, 190), 10.0)
    d = ImageDraw.Draw(img)
    cell = int(rng.integers(10, 17))
    ox, oy = int(rng.integers(0, cell)), int(rng.integers(0, cell))
    dark = _jitter_rgb(rng, (40, 120, 50), 20)
    for i in range(-1, size // cell + 2):
        for j in range(-1, size // cell + 2):
            if (i + j) % 2 == 0:
                x0, y0 = i * cell - ox, j * cell - oy
                d.rectangle((x0, y0, x0 + cell - 1, y0 + cell - 1), fill=dark)
    n = int(rng.integers(1, 3))
    for _ in range(n):
        r = size * rng.uniform(0.2, 0.3)
        cx, cy = rng.uniform(r, size - r, size=2)
        a0 = rng.uniform(0, 2 * math.pi)
        sides = 3 if variant == 0 else 4
        pts = [(cx + r * math.cos(a0 + 2 * math.pi * t / sides), cy + r * math.sin(a0 + 2 * math.pi * t / sides))
               for t in range(sides)]
        d.polygon(pts, fill=_jitter_rgb(rng, (150, 210, 60), 25), outline=(20, 60, 20))
    return img


_STYLES = {"discs": _draw_discs, "stripes": _draw_stripes, "checker": _draw_checker}


def make_picture(cat: Category, rng: np.random.Generator) -> Image.Image:
    """A jittered 96-128 px RGB picture in ``cat``'s style."""
    size = int(rng.integers(96, 129))
    variant = cat.variant if rng.random() < P_VARIANT_CUE else 1 - cat.variant
    img = _STYLES[cat.style](rng, size, variant)
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.3, 1.0))))
    return img


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()
