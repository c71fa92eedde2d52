"""Render one image of one identity in one domain's style.

Steps: pick a view from the domain's viewpoint mix and a walking pose; draw
the background and the person super-sampled (anti-aliasing) at the domain's
render resolution; mirror at random; downsample; upsample and blur for
low-resolution domains; apply the domain's colour cast, saturation and sensor
noise. Everything random comes from the generator passed in, so an image
depends only on (seed, domain, identity, shot).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter, ImageOps

from common.data.synth.attributes import Identity
from common.data.synth.backgrounds import draw_background, ground_shadow
from common.data.synth.domains import VIEWS, DomainStyle
from common.data.synth.geometry import Camera, build_skeleton, sample_pose
from common.data.synth.look import make_look
from common.data.synth.paint import Painter
from common.data.synth.person import draw_person

SUPERSAMPLE = 3  # drawing at 3x then box-filtering gives clean edges at a low cost


@dataclass(frozen=True)
class Shot:
    """What varies between the images of one identity (returned for captions/tests)."""

    view: str
    flipped: bool
    scale: float


def render_image(ident: Identity, style: DomainStyle, rng: np.random.Generator, size: tuple[int, int]) -> tuple[Image.Image, Shot]:
    """Draw `ident` in `style`; size is (width, height) of the output image."""
    out_w, out_h = size
    view = VIEWS[int(rng.choice(len(VIEWS), p=np.asarray(style.views) / sum(style.views)))]
    pose = sample_pose(rng, view, style.stride)
    flipped = bool(rng.random() < 0.5)
    w = max(8, round(out_w * style.render_scale))
    h = max(16, round(out_h * style.render_scale))
    W, H = w * SUPERSAMPLE, h * SUPERSAMPLE
    canvas = Image.new("RGB", (W, H))
    draw_background(canvas, style.background, rng)

    scale = float(rng.uniform(*style.scale))
    ph = scale * H
    top = (H - ph) * float(rng.uniform(0.25, 0.75))
    cx = W / 2 + float(rng.uniform(-style.shift, style.shift)) * W
    cam = Camera(cx=cx, top=top, h=ph, tilt=style.high_angle)
    sk = build_skeleton(ident, pose)
    look = make_look(ident, rng)
    fx, fy = cam.pt((0.0, 0.995))
    ground_shadow(canvas, fx + (0.02 * ph if view == "side" else 0.0), fy, cam.len(0.11 if view != "side" else 0.13, 1.0), cam.len(0.02, 1.0), 70)
    painter = Painter(canvas, cam, style.paint, style.outline_px, style.light)
    draw_person(painter, sk, ident, look)
    img = painter.finish().reduce(SUPERSAMPLE)
    if flipped:
        img = ImageOps.mirror(img)
    if (w, h) != (out_w, out_h):
        img = img.resize((out_w, out_h), Image.Resampling.BILINEAR)
    if style.blur > 0:
        img = img.filter(ImageFilter.GaussianBlur(style.blur))
    img = _photometric(img, style, rng)
    return img, Shot(view=view, flipped=flipped, scale=scale)


_NOISE_BANK: list[np.ndarray] = []


def _noise_window(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Unit Gaussian noise of `shape`: a random window of a fixed noise field.

    Drawing fresh normals costs more than the rest of the post-processing; a
    window at a random offset of one field (fixed seed, identical in every
    process) is as good for sensor noise and keeps images deterministic.
    """
    h, w, c = shape
    if not _NOISE_BANK or _NOISE_BANK[0].shape[0] < 2 * h or _NOISE_BANK[0].shape[1] < 2 * w:
        size = (max(2 * h, 512), max(2 * w, 256), 3)
        _NOISE_BANK[:] = [np.random.default_rng(20240601).standard_normal(size, dtype=np.float32)]
    bank = _NOISE_BANK[0]
    y = int(rng.integers(bank.shape[0] - h + 1))
    x = int(rng.integers(bank.shape[1] - w + 1))
    return bank[y:y + h, x:x + w, :c]


def _photometric(img: Image.Image, style: DomainStyle, rng: np.random.Generator) -> Image.Image:
    """Colour cast, brightness (with a little per-image jitter), saturation and noise."""
    jitter = float(rng.uniform(0.93, 1.07))
    a = np.asarray(img, dtype=np.float32)
    a = a * (np.asarray(style.gain, np.float32) * np.float32(style.brightness * jitter))
    if style.saturation != 1.0:
        lum = a @ np.asarray([0.299, 0.587, 0.114], np.float32)
        a = lum[..., None] + (a - lum[..., None]) * np.float32(style.saturation)
    if style.noise > 0:
        a += _noise_window(rng, a.shape) * np.float32(style.noise)
    np.clip(a + 0.5, 0, 255, out=a)
    return Image.fromarray(a.astype(np.uint8))
