"""Carried items: backpack, handbag, shoulder bag, umbrella, per view.

A backpack shows as straps from the front, a full pack from behind and a
bulge behind the back from the side; a handbag hangs from a hand; a shoulder
bag has a diagonal strap and sits at the hip; a closed umbrella is held like a
walking stick. Functions are called at the right point of the draw order by
`person.draw_person`.
"""

from __future__ import annotations

from common.data.synth.attributes import Identity
from common.data.synth.geometry import Y_HIP, Y_SHOULDER, Y_WAIST, Limb, Skeleton
from common.data.synth.look import Look, shade
from common.data.synth.paint import Painter


def _box(x0: float, y0: float, x1: float, y1: float, cut: float) -> list[tuple[float, float]]:
    """A rectangle with chamfered corners (a cheap rounded box)."""
    return [(x0 + cut, y0), (x1 - cut, y0), (x1, y0 + cut), (x1, y1 - cut), (x1 - cut, y1), (x0 + cut, y1), (x0, y1 - cut), (x0, y0 + cut)]


def backpack_behind(p: Painter, sk: Skeleton, ident: Identity, look: Look) -> None:
    """Parts of a backpack that the body hides partly (front: top edge; side: the pack)."""
    if ident.bag != "backpack":
        return
    ys, yw = sk.y(Y_SHOULDER), sk.y(Y_WAIST)
    w = 0.072 * min(sk.scale, 1.1)
    if sk.view == "front":
        p.poly(_box(-w, ys - 0.028, w, ys + 0.1, 0.02), shade(look.bag))
    elif sk.view == "side":
        back, _ = sk.edge(ys + 0.08)
        p.poly(_box(back - 0.065, ys - 0.004, back + 0.02, yw + 0.05, 0.02), look.bag)
        p.poly(_box(back - 0.075, yw - 0.05, back - 0.03, yw + 0.035, 0.012), shade(look.bag))


def backpack_front(p: Painter, sk: Skeleton, ident: Identity, look: Look) -> None:
    """Straps (front, side) or the whole pack (back view), drawn over the torso."""
    if ident.bag != "backpack":
        return
    ys, yw = sk.y(Y_SHOULDER), sk.y(Y_WAIST)
    strap = 0.018
    if sk.view == "front":
        for s in (-1, 1):
            p.capsule((s * 0.05, ys - 0.01), (s * 0.058, ys + 0.13), strap, strap * 0.9, look.bag)
    elif sk.view == "side":
        _, front = sk.edge(ys + 0.1)
        p.capsule((-0.01, ys - 0.008), (front - 0.01, ys + 0.09), strap, strap * 0.9, look.bag)
    else:
        w = 0.074 * min(sk.scale, 1.1)
        p.poly(_box(-w, ys + 0.005, w, yw + 0.06, 0.025), look.bag)
        p.poly(_box(-w * 0.7, yw - 0.04, w * 0.7, yw + 0.045, 0.015), shade(look.bag))
        p.capsule((-0.02, ys + 0.004), (0.02, ys + 0.004), 0.012, None, shade(look.bag), detail=True)


def shoulder_bag(p: Painter, sk: Skeleton, ident: Identity, look: Look) -> None:
    """A diagonal strap and a bag at the hip (drawn over the torso, under the arms)."""
    if ident.bag != "shoulder bag":
        return
    ys, yh = sk.y(Y_SHOULDER), sk.y(Y_HIP)
    d = shade(look.bag)
    if sk.view == "side":
        _, front = sk.edge(yh)
        p.line([(-0.02, ys - 0.005), (front - 0.02, yh - 0.05)], 0.011, d)
        p.poly(_box(front - 0.05, yh - 0.06, front + 0.03, yh + 0.015, 0.012), look.bag)
        return
    s = 1 if sk.view == "front" else -1  # strap over the left shoulder, bag on the right hip
    lx, rx = sk.edge(yh)
    hipx = rx if s > 0 else lx
    p.line([(-s * 0.06, ys - 0.008), (s * 0.02, sk.y(Y_WAIST)), (hipx, yh - 0.05)], 0.011, d)
    x0 = hipx - 0.035 if s > 0 else hipx - 0.045
    p.poly(_box(x0, yh - 0.06, x0 + 0.08, yh + 0.015, 0.012), look.bag)
    p.line([(x0 + 0.005, yh - 0.035), (x0 + 0.075, yh - 0.035)], 0.005, d)


def _holding_arm(sk: Skeleton) -> Limb:
    if sk.view == "side":
        return sk.arms[-1]  # the near arm
    return sk.arms[1] if sk.view == "front" else sk.arms[0]


def in_hand(p: Painter, sk: Skeleton, ident: Identity, look: Look) -> None:
    """A handbag or a closed umbrella in the hand of the holding arm (drawn after the arms)."""
    if ident.bag not in ("handbag", "umbrella"):
        return
    a = _holding_arm(sk)
    hx, hy = a.end[0] + (a.end[0] - a.mid[0]) * 0.13, a.end[1] + (a.end[1] - a.mid[1]) * 0.13
    d = shade(look.bag)
    if ident.bag == "handbag":
        w, top = 0.04, hy + 0.035
        p.line([(hx - w * 0.6, top), (hx, hy - 0.005), (hx + w * 0.6, top)], 0.006, d)
        p.poly([(hx - w, top), (hx + w, top), (hx + w * 1.12, top + 0.065), (hx - w * 1.12, top + 0.065)], look.bag)
        p.line([(hx - w * 0.9, top + 0.02), (hx + w * 0.9, top + 0.02)], 0.004, d)
    else:
        lean = 0.06 if sk.view == "side" else 0.03 * (1 if hx >= 0 else -1)
        tip = (hx + lean, sk.y(0.965))
        p.poly([(hx - 0.014, hy + 0.01), (hx + 0.014, hy + 0.01), (tip[0] + 0.003, tip[1] - 0.05), (tip[0] - 0.003, tip[1] - 0.05)], look.bag)
        p.line([(tip[0], tip[1] - 0.05), tip], 0.006, (70, 70, 74))
        p.line([(hx + 0.016, hy - 0.022), (hx, hy - 0.03), (hx, hy + 0.01)], 0.009, d)
