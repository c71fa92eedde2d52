"""Domain styles: how one generated dataset differs from another.

Each `DomainStyle` stands in for one real benchmark and differs from the
others along the axes on which CUHK-PEDES, ICFG-PEDES and RSTPReid differ:

- drawing style (`paint`): flat fill, outlined cartoon, or soft gradient shading;
- viewpoint mix (`views`) and camera height (`high_angle`, a surveillance tilt
  that enlarges the head and foreshortens the legs);
- framing (`scale`, `shift`): tight crops vs. loose detector boxes;
- background (`background`): plain, street clutter, or a paved floor seen from above;
- lighting (`gain`, `brightness`, `saturation`): e.g. a warm, dim cast;
- resolution (`render_scale`, `blur`, `noise`): low-res cameras are rendered
  small, upsampled and blurred;
- caption grammar (`grammar`, see `captions`): long sentences, terse phrase
  lists, or report-like notes with other words.

Attribute meaning is shared: the same `PALETTE` colour is drawn in every domain
and only shifted by the cast, so a model can adapt from one domain to another.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DomainStyle:
    """The look and language of one generated domain."""

    name: str
    mimics: str  # which real benchmark's character it borrows
    paint: str  # "flat" | "outline" | "shaded"
    views: tuple[float, float, float]  # probabilities of front, side, back
    high_angle: float  # 0 = eye level; >0 = camera above (perspective strength)
    scale: tuple[float, float]  # person height / image height
    shift: float  # max horizontal offset of the person, fraction of width
    background: str  # "plain" | "street" | "floor"
    gain: tuple[float, float, float]  # per-channel colour cast
    brightness: float
    saturation: float  # 1 = unchanged
    render_scale: float  # render at this fraction of the output size, then upsample
    blur: float  # Gaussian blur radius in output pixels
    noise: float  # sensor noise std in 0..255 units
    grammar: str  # caption grammar in `captions.GRAMMARS`
    stride: float  # how far people stride (walking amplitude, 0..1)
    outline_px: float = 0.0  # outline width, fraction of person height ("outline" paint)
    light: tuple[float, float] = (-0.6, -0.8)  # light direction in the image ("shaded" paint)


VIEWS = ("front", "side", "back")

DOMAINS: dict[str, DomainStyle] = {
    # CUHK-PEDES-like: many campus cameras at eye level, mostly frontal, tight
    # crops, clean backgrounds, sharp images, long sentence captions.
    "flat": DomainStyle(
        name="flat", mimics="CUHK-PEDES", paint="flat", views=(0.6, 0.25, 0.15), high_angle=0.0,
        scale=(0.84, 0.95), shift=0.05, background="plain", gain=(1.0, 1.0, 1.0), brightness=1.0,
        saturation=1.0, render_scale=1.0, blur=0.0, noise=0.0, grammar="sentences", stride=0.6,
    ),
    # ICFG-PEDES-like (MSMT17 images): outdoor streets, cluttered backgrounds,
    # all viewpoints, looser boxes, bold cartoon outlines, terse phrase captions.
    "outline": DomainStyle(
        name="outline", mimics="ICFG-PEDES", paint="outline", views=(0.36, 0.32, 0.32), high_angle=0.1,
        scale=(0.76, 0.92), shift=0.09, background="street", gain=(0.96, 1.0, 1.06), brightness=1.04,
        saturation=1.15, render_scale=1.0, blur=0.0, noise=2.0, grammar="phrases", stride=0.9,
        outline_px=0.016,
    ),
    # RSTPReid-like: high surveillance cameras, people mostly seen from the side
    # or behind, warm dim indoor light, low resolution, blur and noise, and
    # captions in other words and another order.
    "shaded": DomainStyle(
        name="shaded", mimics="RSTPReid", paint="shaded", views=(0.16, 0.42, 0.42), high_angle=0.35,
        scale=(0.70, 0.88), shift=0.12, background="floor", gain=(1.08, 0.93, 0.74), brightness=0.8,
        saturation=0.85, render_scale=0.5, blur=0.7, noise=5.0, grammar="notes", stride=1.0,
    ),
}
