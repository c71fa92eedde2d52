"""Drawing primitives in person units, in one of three styles.

`Painter` turns capsules (limbs), polygons (garments), ellipses and chords
(heads, hair) given in person units into pixels through a `Camera`, in the
domain's paint style:

- ``flat``: plain fills;
- ``outline``: every body/garment shape gets a dark cartoon contour;
- ``shaded``: a shading mask is drawn alongside (dark rim, lit core, highlight
  toward the light), blurred and multiplied in by `finish`, which gives smooth
  cylinder-like gradients.

Shapes drawn with ``detail=True`` (buttons, seams, eyes) get neither contour nor
shading of their own.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from common.data.synth.geometry import Camera, Pt

RGB = tuple[int, int, int]
NEUTRAL = 200  # shading-mask value meaning "unchanged"
_RIM, _CORE, _HIGH = 150, 206, 234


def scale_rgb(c: RGB, f: float) -> RGB:
    return tuple(int(max(0, min(255, round(v * f)))) for v in c)  # type: ignore[return-value]


def mix_rgb(a: RGB, b: RGB, t: float) -> RGB:
    return tuple(int(round(x + (y - x) * t)) for x, y in zip(a, b))  # type: ignore[return-value]


class Painter:
    """Draws one person (and props) onto `img` in `paint` style through `cam`."""

    def __init__(self, img: Image.Image, cam: Camera, paint: str, outline_px: float = 0.0, light: Pt = (-0.6, -0.8)):
        if paint not in ("flat", "outline", "shaded"):
            raise ValueError(f"unknown paint style {paint!r}")
        self.img = img
        self.draw = ImageDraw.Draw(img)
        self.cam = cam
        self.paint = paint
        self.stroke = max(1.0, outline_px * cam.h) if paint == "outline" else 0.0
        n = math.hypot(*light) or 1.0
        self.light = (light[0] / n, light[1] / n)
        self.mask = Image.new("L", img.size, NEUTRAL) if paint == "shaded" else None
        self.mdraw = ImageDraw.Draw(self.mask) if self.mask is not None else None
        self._dim = 1.0

    @contextlib.contextmanager
    def dimmed(self, factor: float) -> Iterator[None]:
        """Darken everything drawn inside (limbs on the far side of the body)."""
        old = self._dim
        self._dim = old * factor
        try:
            yield
        finally:
            self._dim = old

    def _col(self, c: RGB) -> RGB:
        return scale_rgb(c, self._dim) if self._dim != 1.0 else c

    def _ink(self, c: RGB) -> RGB:
        return tuple(int(v * 0.22) + 18 for v in c)  # type: ignore[return-value]

    # ---- primitives -----------------------------------------------------
    def capsule(self, p0: Pt, p1: Pt, w0: float, w1: float | None, colour: RGB, detail: bool = False) -> None:
        """A limb-like stroke from p0 to p1, full width w0 at p0 and w1 at p1 (person units)."""
        self.chain([p0, p1], [w0, w0 if w1 is None else w1], colour, detail)

    def chain(self, pts: list[Pt], widths: list[float], colour: RGB, detail: bool = False) -> None:
        """Joined capsules through pts (a whole limb), one contour around all of them."""
        px = [self.cam.pt(q) for q in pts]
        rs = [self.cam.len(w / 2, q[1]) for w, q in zip(widths, pts)]
        segs = list(zip(px, px[1:], rs, rs[1:]))
        col = self._col(colour)
        if self.stroke and not detail:
            for a, b, r0, r1 in segs:
                self._capsule_px(self.draw, a, b, r0 + self.stroke, r1 + self.stroke, self._ink(col))
        for a, b, r0, r1 in segs:
            self._capsule_px(self.draw, a, b, r0, r1, col)
        if self.mdraw is None or detail:
            return
        for f, off, v in ((1.0, 0.0, _RIM), (0.62, 0.3, _CORE), (0.26, 0.55, _HIGH)):
            for a, b, r0, r1 in segs:
                dx, dy = b[0] - a[0], b[1] - a[1]
                d = math.hypot(dx, dy) or 1.0
                nx, ny = -dy / d, dx / d
                s = (self.light[0] * nx + self.light[1] * ny) * off
                self._capsule_px(self.mdraw, (a[0] + nx * s * r0, a[1] + ny * s * r0), (b[0] + nx * s * r1, b[1] + ny * s * r1), r0 * f, r1 * f, v)

    def poly(self, pts: list[Pt], colour: RGB, detail: bool = False) -> None:
        """A filled polygon (person units)."""
        px = [self.cam.pt(p) for p in pts]
        col = self._col(colour)
        if self.stroke and not detail:
            self.draw.polygon(px, fill=col, outline=self._ink(col), width=max(1, round(self.stroke * 1.6)))
        else:
            self.draw.polygon(px, fill=col)
        if self.mdraw is not None and not detail:
            xs, ys = [p[0] for p in px], [p[1] for p in px]
            cx, cy = sum(xs) / len(xs), sum(ys) / len(ys)
            bw, bh = max(xs) - min(xs), max(ys) - min(ys)
            self.mdraw.polygon(px, fill=_RIM + 10)
            for f, off, v in ((0.74, 0.13, _CORE), (0.36, 0.26, _HIGH - 6)):
                ox, oy = self.light[0] * bw * off, self.light[1] * bh * off * 0.4
                self.mdraw.polygon([(cx + (x - cx) * f + ox, cy + (y - cy) * f + oy) for x, y in px], fill=v)

    def ellipse(self, c: Pt, rx: float, ry: float, colour: RGB, detail: bool = False) -> None:
        """A filled ellipse centred at c with radii rx, ry (person units)."""
        x, y = self.cam.pt(c)
        prx, pry = self.cam.len(rx, c[1]), self.cam.len(ry, c[1])
        col = self._col(colour)
        if self.stroke and not detail:
            s = self.stroke
            self.draw.ellipse((x - prx - s, y - pry - s, x + prx + s, y + pry + s), fill=self._ink(col))
        self.draw.ellipse((x - prx, y - pry, x + prx, y + pry), fill=col)
        if self.mdraw is not None and not detail:
            for f, off, v in ((1.0, 0.0, _RIM), (0.68, 0.22, _CORE), (0.3, 0.45, _HIGH)):
                ex, ey = x + self.light[0] * prx * off, y + self.light[1] * pry * off
                self.mdraw.ellipse((ex - prx * f, ey - pry * f, ex + prx * f, ey + pry * f), fill=v)

    def chord(self, c: Pt, rx: float, ry: float, start: float, end: float, colour: RGB, detail: bool = False) -> None:
        """The part of an ellipse cut off by the chord from angle start to end (degrees, clockwise from 3 o'clock)."""
        x, y = self.cam.pt(c)
        prx, pry = self.cam.len(rx, c[1]), self.cam.len(ry, c[1])
        box = (x - prx, y - pry, x + prx, y + pry)
        col = self._col(colour)
        if self.stroke and not detail:
            self.draw.chord(box, start, end, fill=col, outline=self._ink(col), width=max(1, round(self.stroke * 1.4)))
        else:
            self.draw.chord(box, start, end, fill=col)
        if self.mdraw is not None and not detail:
            self.mdraw.chord(box, start, end, fill=_CORE - 8)

    def line(self, pts: list[Pt], width: float, colour: RGB) -> None:
        """A thin detail line (seams, straps, handles), width in person units."""
        px = [self.cam.pt(p) for p in pts]
        w = max(1, round(self.cam.len(width, pts[0][1])))
        self.draw.line(px, fill=self._col(colour), width=w, joint="curve")

    # ---- helpers ----------------------------------------------------------
    @staticmethod
    def _capsule_px(draw: ImageDraw.ImageDraw, a: Pt, b: Pt, r0: float, r1: float, fill) -> None:
        dx, dy = b[0] - a[0], b[1] - a[1]
        d = math.hypot(dx, dy)
        if d > 1e-6:
            nx, ny = -dy / d, dx / d
            draw.polygon([(a[0] + nx * r0, a[1] + ny * r0), (b[0] + nx * r1, b[1] + ny * r1),
                          (b[0] - nx * r1, b[1] - ny * r1), (a[0] - nx * r0, a[1] - ny * r0)], fill=fill)
        draw.ellipse((a[0] - r0, a[1] - r0, a[0] + r0, a[1] + r0), fill=fill)
        draw.ellipse((b[0] - r1, b[1] - r1, b[0] + r1, b[1] + r1), fill=fill)

    def finish(self) -> Image.Image:
        """Apply the shading mask (``shaded`` style) and return the image."""
        if self.mask is None:
            return self.img
        radius = max(1.0, 0.012 * self.cam.h)
        m = np.asarray(self.mask.filter(ImageFilter.GaussianBlur(radius)), dtype=np.float32) / NEUTRAL
        arr = np.asarray(self.img, dtype=np.float32) * m[..., None]
        return Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8))
