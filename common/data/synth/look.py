"""The concrete colours of one identity in one image.

`make_look` turns the identity's colour *names* into RGB: the shared palette
colour, nudged by the identity's fixed tint (two people in "red" are not quite
the same red) and by a small per-image jitter (lighting differs between shots).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common.data.synth.attributes import HAIR_COLOURS, PALETTE, SKIN_TONES, Identity
from common.data.synth.paint import RGB, mix_rgb, scale_rgb


@dataclass(frozen=True)
class Look:
    skin: RGB
    hair: RGB
    head: RGB  # headwear colour (= hair for hair styles)
    upper: RGB
    lower: RGB
    shoes: RGB
    bag: RGB
    inner: RGB  # shirt under an open jacket or coat


def shade(c: RGB) -> RGB:
    """A visible darker (or, for very dark colours, lighter) variant for seams and trims."""
    lum = 0.3 * c[0] + 0.59 * c[1] + 0.11 * c[2]
    return mix_rgb(c, (150, 150, 150), 0.35) if lum < 60 else scale_rgb(c, 0.7)


def make_look(ident: Identity, rng: np.random.Generator) -> Look:
    """RGB colours for this image of `ident` (tint fixed per identity, jitter per image)."""

    def col(name: str | None, table: dict = PALETTE) -> RGB:
        if name is None:
            return (0, 0, 0)
        f = 1.0 + 0.07 * ident.tint + float(rng.uniform(-0.04, 0.04))
        return scale_rgb(table[name], f)

    upper = col(ident.upper_colour)
    lum = 0.3 * upper[0] + 0.59 * upper[1] + 0.11 * upper[2]
    return Look(
        skin=scale_rgb(SKIN_TONES[ident.skin], 1.0 + float(rng.uniform(-0.03, 0.03))),
        hair=col(ident.hair_colour, HAIR_COLOURS),
        head=col(ident.head_colour, HAIR_COLOURS if ident.has_hair_style else PALETTE),
        upper=upper,
        lower=col(ident.lower_colour),
        shoes=col(ident.shoes_colour),
        bag=col(ident.bag_colour),
        inner=(60, 60, 64) if lum > 150 else (230, 230, 226),
    )
