"""Clothes on the body: legs with lower garments and shoes, the torso garment, arms with sleeves.

Each function draws one body region *with* its clothing so that the renderer
can order regions per view (far limbs first in side views). Garment shapes
follow the skeleton: trouser legs are wider capsules along the leg, a coat is
the torso outline extended to the knees and flared, a skirt is a flared
outline from the waist.
"""

from __future__ import annotations

from common.data.synth.attributes import Identity
from common.data.synth.geometry import Y_HIP, Y_SHOULDER, Y_WAIST, Limb, Skeleton
from common.data.synth.look import Look, shade
from common.data.synth.paint import Painter, mix_rgb

LONG_SLEEVES = ("shirt", "jacket", "coat", "hoodie", "sweater")
SOLE_WHITE = (236, 236, 230)


def _lerp(a, b, t):
    return (a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t)


def leg(p: Painter, sk: Skeleton, lg: Limb, ident: Identity, look: Look) -> None:
    """One leg: skin or trouser leg, shorts leg, then the shoe."""
    hip, knee, ankle = lg.root, lg.mid, lg.end
    low = (ankle[0], ankle[1] + 0.012)
    if ident.lower in ("jeans", "trousers"):
        grow = 0.010 if ident.lower == "trousers" else 0.006
        p.chain([hip, knee, low], [lg.w_root + grow, lg.w_root * 0.85 + grow, lg.w_end + grow * 1.3], look.lower)
        if ident.lower == "jeans":  # faded front of the thigh and a turned-up cuff
            fade = mix_rgb(look.lower, (235, 235, 240), 0.22)
            p.capsule(_lerp(hip, knee, 0.25), _lerp(knee, low, 0.2), lg.w_root * 0.3, lg.w_end * 0.3, fade, detail=True)
            p.capsule((low[0] - 0.004, low[1] - 0.006), (low[0] + 0.004, low[1] - 0.006), lg.w_end * 0.95, None, shade(look.lower), detail=True)
    else:
        p.chain([hip, knee, ankle], [lg.w_root, lg.w_root * 0.8, lg.w_end * 0.8], look.skin)
        if ident.lower == "shorts":
            p.capsule(hip, _lerp(hip, knee, 0.6), lg.w_root + 0.018, lg.w_root + 0.016, look.lower)
    shoe(p, sk, lg, ident, look)


def shoe(p: Painter, sk: Skeleton, lg: Limb, ident: Identity, look: Look) -> None:
    """The shoe at the end of a leg, by type; side views point the foot forward."""
    ax, ay = lg.end
    side = sk.view == "side"
    kind = ident.shoes
    if kind == "boots":
        p.capsule(_lerp(lg.mid, lg.end, 0.45), (ax, ay + 0.012), lg.w_end + 0.012, lg.w_end + 0.014, look.shoes)
    if kind == "sandals":
        foot = look.skin
    else:
        foot = look.shoes
    h = 0.016 if kind == "leather shoes" else 0.02
    if side:
        p.capsule((ax - 0.012, ay + 0.045 - h), (ax + 0.045, ay + 0.045 - h * 0.8), h * 2, h * 1.7, foot)
    else:
        p.ellipse((ax + lg.side * 0.004, ay + 0.045 - h), 0.025, h, foot)
    sole_y = ay + 0.041
    x0, x1 = (ax - 0.02, ax + 0.065) if side else (ax - 0.026 + lg.side * 0.004, ax + 0.026 + lg.side * 0.004)
    if kind == "sneakers":
        p.line([(x0, sole_y), (x1, sole_y)], 0.011, (150, 150, 150) if ident.shoes_colour == "white" else SOLE_WHITE)
    elif kind == "sandals":
        p.line([(x0, sole_y + 0.002), (x1, sole_y + 0.002)], 0.008, look.shoes)
        for t in (0.3, 0.65):
            x = x0 + (x1 - x0) * t
            p.line([(x - 0.008, sole_y - 0.02), (x + 0.008, sole_y - 0.004)], 0.007, look.shoes)
    elif kind == "leather shoes":
        hx = x1 - 0.02 if side else (x0 + x1) / 2 - 0.006
        p.ellipse((hx, sole_y - 0.014), 0.006, 0.003, mix_rgb(look.shoes, (255, 255, 255), 0.5), detail=True)


def pelvis(p: Painter, sk: Skeleton, ident: Identity, look: Look) -> None:
    """The top of the trousers / shorts, or the skirt (drawn over both legs)."""
    hip = sk.y(Y_HIP)
    if ident.lower in ("jeans", "trousers", "shorts"):
        p.poly(sk.torso(hip - 0.07, hip + 0.055, grow=0.006), look.lower)
    elif ident.lower == "skirt":
        p.poly(sk.torso(hip - 0.07, hip + 0.17, grow=0.006, flare=0.32), look.lower)
        for x in (-0.035, 0.035):
            p.line([(x * 0.6, hip + 0.0), (x, hip + 0.16)], 0.004, shade(look.lower))


def _neckline(p: Painter, sk: Skeleton, look: Look) -> None:
    if sk.view == "front":
        p.chord((0.0, sk.y(Y_SHOULDER) - 0.014), 0.026, 0.02, 0, 180, look.skin, detail=True)


def upper(p: Painter, sk: Skeleton, ident: Identity, look: Look) -> None:
    """The torso garment with its type's tell-tale details."""
    ys, hip, waist = sk.y(Y_SHOULDER), sk.y(Y_HIP), sk.y(Y_WAIST)
    kind, c, d = ident.upper, look.upper, shade(look.upper)
    view = sk.view
    mid = sk.edge(ys + 0.1)[1] - 0.006 if view == "side" else 0.0  # where the front opening shows
    if kind == "coat":
        p.poly(sk.torso(ys - 0.012, hip + 0.24, grow=0.010, flare=0.16), c)
    elif kind == "dress":
        p.poly(sk.torso(ys + 0.012, waist + 0.02, grow=0.002), c)
        p.poly(sk.torso(waist, hip + 0.2, grow=0.004, flare=0.34), c)
        if view != "side":
            for x in (-0.045, 0.045):
                p.line([(x, ys - 0.008), (x * 0.9, ys + 0.02)], 0.010, c)
    elif kind == "tank top":
        p.poly(sk.torso(ys + 0.012, hip + 0.03, grow=0.002), c)
        if view != "side":
            for x in (-0.045, 0.045):
                p.line([(x, ys - 0.008), (x * 0.9, ys + 0.02)], 0.012, c)
    else:
        bottom = hip + (0.045 if kind == "jacket" else 0.03)
        p.poly(sk.torso(ys - 0.012, bottom, grow=0.006 if kind in ("jacket", "hoodie", "sweater") else 0.004), c)
    if kind in ("t-shirt", "tank top", "dress", "sweater"):
        _neckline(p, sk, look)
    if kind == "sweater":  # ribbed hem band
        lx, rx = sk.edge(hip)
        p.poly([(lx - 0.008, hip + 0.008), (rx + 0.008, hip + 0.008), (rx + 0.008, hip + 0.032), (lx - 0.008, hip + 0.032)], d, detail=True)
    elif kind == "shirt" and view != "back":
        if view == "front":
            for s in (-1, 1):
                p.poly([(0.0, ys + 0.02), (s * 0.03, ys - 0.014), (s * 0.006, ys - 0.014)], mix_rgb(c, (255, 255, 255), 0.3), detail=True)
        for k in range(3):
            p.ellipse((mid, ys + 0.05 + 0.08 * k), 0.004, 0.004, d, detail=True)
    elif kind in ("jacket", "coat") and view != "back":
        if view == "front":
            p.poly([(-0.022, ys - 0.012), (0.022, ys - 0.012), (0.006, ys + 0.10), (-0.006, ys + 0.10)], look.inner, detail=True)
            for s in (-1, 1):
                p.poly([(s * 0.022, ys - 0.014), (s * 0.05, ys - 0.006), (s * 0.008, ys + 0.085)], d, detail=True)
        p.line([(mid, ys + 0.08), (mid, hip + (0.22 if kind == "coat" else 0.04))], 0.006, d)
        if kind == "coat":
            p.line([sk.torso(waist, waist + 0.001, grow=0.012)[0], sk.torso(waist, waist + 0.001, grow=0.012)[-1]], 0.012, d)
    elif kind == "hoodie":
        if view == "back":
            p.ellipse((0.0, ys + 0.03), 0.05, 0.045, d)
        elif view == "side":
            lx, _ = sk.edge(ys)
            p.ellipse((lx + 0.012, ys + 0.0), 0.022, 0.03, d)
            p.poly([(mid - 0.04, waist + 0.01), (mid + 0.004, waist + 0.01), (mid + 0.004, hip - 0.005), (mid - 0.03, hip - 0.005)], d, detail=True)
        else:
            p.poly([(-0.05, waist + 0.01), (0.05, waist + 0.01), (0.06, hip - 0.005), (-0.06, hip - 0.005)], d, detail=True)
            for x in (-0.014, 0.014):
                p.line([(x, ys - 0.005), (x, ys + 0.07)], 0.005, (235, 235, 235))


def hood_behind(p: Painter, sk: Skeleton, ident: Identity, look: Look) -> None:
    """A hoodie's hood gathered behind the neck (front view, drawn before the head)."""
    if ident.upper == "hoodie" and sk.view == "front":
        p.ellipse((0.0, sk.y(Y_SHOULDER) - 0.018), 0.056, 0.024, shade(look.upper))


def arm(p: Painter, sk: Skeleton, a: Limb, ident: Identity, look: Look) -> None:
    """One arm with its sleeve (long, short or none) and the hand."""
    sh, el, wr = a.root, a.mid, a.end
    sleeve = ident.upper in LONG_SLEEVES
    if sleeve:
        g = 0.016 if ident.upper in ("coat", "jacket", "hoodie") else 0.012
        p.chain([sh, el, _lerp(el, wr, 0.92)], [a.w_root + g, a.w_root * 0.9 + g, a.w_end + g], look.upper)
        if ident.upper == "sweater":
            p.capsule(_lerp(el, wr, 0.8), _lerp(el, wr, 0.92), a.w_end + g, None, shade(look.upper), detail=True)
    else:
        p.chain([sh, el, wr], [a.w_root, a.w_root * 0.85, a.w_end * 0.9], look.skin)
        if ident.upper in ("t-shirt", "dress") and not (ident.upper == "dress" and sk.view == "side"):
            w = 0.018 if ident.upper == "t-shirt" else 0.008
            p.capsule(sh, _lerp(sh, el, 0.5), a.w_root + w, a.w_root + w * 0.9, look.upper)
    hand = _lerp(el, wr, 1.13)
    p.ellipse(hand, 0.018, 0.021, look.skin)
