"""Draw one clothed person: the draw order of body parts per view.

Front: hair behind, legs, trouser top or skirt, neck, torso garment, bag
straps, arms, hand-held items, head. Back: the same with the backpack over the
torso and the hair over the back. Side: far arm and far leg (dimmed), the
backpack behind, near leg, torso, head, near arm.
"""

from __future__ import annotations

from common.data.synth import accessories, garments, headwear
from common.data.synth.attributes import Identity
from common.data.synth.geometry import Skeleton
from common.data.synth.look import Look
from common.data.synth.paint import Painter

FAR_DIM = 0.78  # far-side limbs are a little darker (depth cue)


def draw_person(p: Painter, sk: Skeleton, ident: Identity, look: Look) -> None:
    """Draw `ident` posed as `sk` with colours `look` through painter `p`."""
    if sk.view == "side":
        far_arm, near_arm = sk.arms
        far_leg, near_leg = sk.legs
        with p.dimmed(FAR_DIM):
            garments.arm(p, sk, far_arm, ident, look)
            garments.leg(p, sk, far_leg, ident, look)
        accessories.backpack_behind(p, sk, ident, look)
        garments.leg(p, sk, near_leg, ident, look)
        garments.pelvis(p, sk, ident, look)
        headwear.neck(p, sk, look)
        garments.upper(p, sk, ident, look)
        accessories.backpack_front(p, sk, ident, look)
        accessories.shoulder_bag(p, sk, ident, look)
        headwear.head(p, sk, ident, look)
        garments.arm(p, sk, near_arm, ident, look)
        accessories.in_hand(p, sk, ident, look)
        return
    headwear.hair_back(p, sk, ident, look)
    accessories.backpack_behind(p, sk, ident, look)
    for lg in sk.legs:
        garments.leg(p, sk, lg, ident, look)
    garments.pelvis(p, sk, ident, look)
    headwear.neck(p, sk, look)
    garments.upper(p, sk, ident, look)
    garments.hood_behind(p, sk, ident, look)
    accessories.backpack_front(p, sk, ident, look)
    accessories.shoulder_bag(p, sk, ident, look)
    for a in sk.arms:
        garments.arm(p, sk, a, ident, look)
    accessories.in_hand(p, sk, ident, look)
    headwear.head(p, sk, ident, look)
