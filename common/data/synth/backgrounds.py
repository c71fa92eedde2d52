"""Scene backgrounds behind the person, one kind per domain.

- ``plain``: a light, nearly uniform studio-like backdrop with a floor band
  (clean campus crops);
- ``street``: a building wall with windows and a door, a tiled pavement and
  clutter (poles, bins, trees, parked cars), with cartoon outlines;
- ``floor``: a paved floor seen from a high camera, tiles in perspective,
  shadows and benches.

Each function draws on an RGB image in place, using only the given generator.
"""

from __future__ import annotations

import colorsys

import numpy as np
from PIL import Image, ImageDraw

from common.data.synth.paint import RGB, scale_rgb

_INK = (30, 28, 34)


def _hsv(h: float, s: float, v: float) -> RGB:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
    return (int(r * 255), int(g * 255), int(b * 255))


def _gradient(img: Image.Image, top: RGB, bottom: RGB, y0: int = 0, y1: int | None = None) -> None:
    """Fill rows y0..y1 with a vertical gradient from top to bottom colour."""
    w, h = img.size
    y1 = h if y1 is None else y1
    n = max(1, y1 - y0)
    t = np.linspace(0.0, 1.0, n, dtype=np.float32)[:, None]
    col = np.asarray(top, np.float32) * (1 - t) + np.asarray(bottom, np.float32) * t
    column = Image.fromarray(np.ascontiguousarray(col[:, None, :].astype(np.uint8)))
    img.paste(column.resize((w, n), Image.Resampling.NEAREST), (0, y0))


def plain(img: Image.Image, rng: np.random.Generator) -> float:
    """Light backdrop with a slightly darker floor; returns the floor line (fraction of height)."""
    w, h = img.size
    hue, sat = rng.uniform(0, 1), rng.uniform(0.03, 0.16)
    val = rng.uniform(0.78, 0.95)
    horizon = rng.uniform(0.7, 0.85)
    hy = int(h * horizon)
    _gradient(img, _hsv(hue, sat, min(1.0, val + 0.04)), _hsv(hue, sat, val - 0.04), 0, hy)
    floor = _hsv(hue + rng.uniform(-0.1, 0.1), sat * 0.8, val * rng.uniform(0.72, 0.88))
    _gradient(img, floor, scale_rgb(floor, 0.93), hy, h)
    return horizon


def _outlined(draw: ImageDraw.ImageDraw, kind: str, box, fill: RGB, width: int) -> None:
    if kind == "rect":
        draw.rectangle(box, fill=fill, outline=_INK, width=width)
    else:
        draw.ellipse(box, fill=fill, outline=_INK, width=width)


def street(img: Image.Image, rng: np.random.Generator) -> float:
    """Wall with windows, tiled pavement and street furniture, outlined."""
    w, h = img.size
    draw = ImageDraw.Draw(img)
    lw = max(1, round(h / 110))
    horizon = rng.uniform(0.5, 0.68)
    hy = int(h * horizon)
    wall = _hsv(rng.choice([0.02, 0.07, 0.1, 0.55, 0.6, 0.0]), rng.uniform(0.1, 0.45), rng.uniform(0.5, 0.85))
    _gradient(img, scale_rgb(wall, 1.05), scale_rgb(wall, 0.9), 0, hy)
    glass = _hsv(rng.uniform(0.5, 0.65), rng.uniform(0.2, 0.5), rng.uniform(0.25, 0.6))
    ww, wh = w * rng.uniform(0.22, 0.34), h * rng.uniform(0.1, 0.16)
    x0, y0 = -rng.uniform(0, ww), rng.uniform(0.02, 0.1) * h
    y = y0
    while y + wh < hy - h * 0.05:
        x = x0
        while x < w:
            _outlined(draw, "rect", (x, y, x + ww * 0.7, y + wh), glass, lw)
            draw.line((x + ww * 0.35, y, x + ww * 0.35, y + wh), fill=_INK, width=lw)
            x += ww
        y += wh * 1.6
    if rng.random() < 0.5:  # a door
        dx = rng.uniform(0, w * 0.8)
        _outlined(draw, "rect", (dx, hy - h * 0.22, dx + w * 0.3, hy), scale_rgb(wall, 0.55), lw)
    pave = _hsv(rng.uniform(0.05, 0.12), rng.uniform(0.0, 0.15), rng.uniform(0.55, 0.75))
    _gradient(img, pave, scale_rgb(pave, 0.85), hy, h)
    draw.line((0, hy, w, hy), fill=_INK, width=lw)
    step = h * rng.uniform(0.06, 0.1)
    yy = hy + step
    while yy < h:
        draw.line((0, yy, w, yy), fill=scale_rgb(pave, 0.75), width=max(1, lw // 2))
        step *= 1.25
        yy += step
    for _ in range(int(rng.integers(1, 4))):  # street furniture
        kind = int(rng.integers(4))
        x = rng.uniform(-0.1, 1.0) * w
        base = hy + rng.uniform(0.0, 0.12) * h
        col = _hsv(rng.uniform(0, 1), rng.uniform(0.2, 0.8), rng.uniform(0.3, 0.9))
        if kind == 0:  # pole
            _outlined(draw, "rect", (x, base - h * 0.6, x + w * 0.05, base), (90, 92, 96), lw)
        elif kind == 1:  # bin
            _outlined(draw, "rect", (x, base - h * 0.12, x + w * 0.2, base), col, lw)
        elif kind == 2:  # tree
            _outlined(draw, "rect", (x + w * 0.08, base - h * 0.3, x + w * 0.14, base), (110, 78, 50), lw)
            _outlined(draw, "ellipse", (x - w * 0.1, base - h * 0.55, x + w * 0.32, base - h * 0.25), _hsv(rng.uniform(0.22, 0.36), 0.6, 0.55), lw)
        else:  # parked car
            _outlined(draw, "rect", (x - w * 0.3, base - h * 0.14, x + w * 0.4, base - h * 0.03), col, lw)
            for wx in (x - w * 0.2, x + w * 0.2):
                _outlined(draw, "ellipse", (wx, base - h * 0.06, wx + w * 0.15, base), (30, 30, 30), lw)
    return horizon


def floor(img: Image.Image, rng: np.random.Generator) -> float:
    """Paved floor in perspective from a high camera, with shadows and benches."""
    w, h = img.size
    base = _hsv(rng.uniform(0.05, 0.14), rng.uniform(0.05, 0.3), rng.uniform(0.45, 0.7))
    _gradient(img, scale_rgb(base, 0.86), scale_rgb(base, 1.05))
    draw = ImageDraw.Draw(img, "RGBA")
    line = scale_rgb(base, 0.78) + (255,)
    lw = max(1, round(h / 160))
    vx, vy = w * rng.uniform(-0.5, 1.5), -h * rng.uniform(0.6, 1.4)  # vanishing point above the frame
    spacing = w * rng.uniform(0.25, 0.45)
    for k in range(-8, 9):
        draw.line((vx, vy, w / 2 + k * spacing * 1.6, h * 1.2), fill=line, width=lw)
    y, step = rng.uniform(0, 0.1) * h, h * rng.uniform(0.08, 0.14)
    while y < h:
        draw.line((0, y, w, y), fill=line, width=lw)
        y += step
        step *= 1.12
    for _ in range(int(rng.integers(1, 4))):  # soft shadows and objects
        x, yy = rng.uniform(-0.2, 1.0) * w, rng.uniform(0, 1) * h
        if rng.random() < 0.6:
            draw.ellipse((x, yy, x + w * rng.uniform(0.2, 0.6), yy + h * rng.uniform(0.04, 0.12)), fill=(0, 0, 0, int(rng.integers(30, 70))))
        else:
            col = _hsv(rng.uniform(0, 1), rng.uniform(0.1, 0.5), rng.uniform(0.25, 0.6))
            draw.rectangle((x, yy, x + w * 0.5, yy + h * 0.05), fill=col + (255,))
            draw.rectangle((x, yy + h * 0.05, x + w * 0.5, yy + h * 0.07), fill=scale_rgb(col, 0.6) + (255,))
    return 1.0


BACKGROUNDS = {"plain": plain, "street": street, "floor": floor}


def draw_background(img: Image.Image, kind: str, rng: np.random.Generator) -> float:
    """Draw background `kind` on `img`; returns where the floor begins (fraction of height)."""
    try:
        fn = BACKGROUNDS[kind]
    except KeyError:
        raise ValueError(f"unknown background {kind!r}; choose from {sorted(BACKGROUNDS)}") from None
    return fn(img, rng)


def ground_shadow(img: Image.Image, x: float, y: float, rx: float, ry: float, alpha: int) -> None:
    """A soft dark ellipse under the feet."""
    ImageDraw.Draw(img, "RGBA").ellipse((x - rx, y - ry, x + rx, y + ry), fill=(0, 0, 0, alpha))
