"""Neck, head, face, hair styles and headwear, per view.

`hair_back` draws what lies behind the body (long hair seen from the front, a
ponytail peeking out); `head` draws the head itself with the face (front,
side), hair and headwear on top, and long hair falling over the back.
"""

from __future__ import annotations

from common.data.synth.attributes import Identity
from common.data.synth.geometry import Y_SHOULDER, Skeleton
from common.data.synth.look import Look, shade
from common.data.synth.paint import Painter, mix_rgb, scale_rgb

_EYE = (36, 28, 30)


def neck(p: Painter, sk: Skeleton, look: Look) -> None:
    hx, hy = sk.head
    p.capsule((hx * 0.5, hy + sk.head_ry * 0.5), (0.0, sk.y(Y_SHOULDER) - 0.004), sk.neck_w, sk.neck_w * 1.1, look.skin)


def hair_back(p: Painter, sk: Skeleton, ident: Identity, look: Look) -> None:
    """Hair behind the body in the front view (drawn before the torso)."""
    if sk.view != "front":
        return
    (hx, hy), rx, ry = sk.head, sk.head_rx, sk.head_ry
    ys = sk.y(Y_SHOULDER)
    if ident.head == "long hair":
        p.poly([(hx - rx * 1.15, hy), (hx + rx * 1.15, hy), (hx + rx * 1.4, ys + 0.08), (hx - rx * 1.4, ys + 0.08)], look.head)
    elif ident.head == "ponytail":
        p.capsule((hx + rx * 0.5, hy - ry * 0.3), (hx + rx * 1.25, hy + ry * 1.5), 0.028, 0.016, look.head)


def _face_front(p: Painter, sk: Skeleton, look: Look, scale: float = 1.0) -> None:
    (hx, hy), rx = sk.head, sk.head_rx
    for s in (-1, 1):
        p.ellipse((hx + s * rx * 0.38 * scale, hy + 0.006), 0.0055, 0.0065, _EYE, detail=True)
    p.line([(hx - 0.008, hy + 0.034), (hx + 0.008, hy + 0.034)], 0.0045, scale_rgb(look.skin, 0.72))


def _face_side(p: Painter, sk: Skeleton, look: Look) -> None:
    (hx, hy), rx = sk.head, sk.head_rx
    p.ellipse((hx + rx * 0.97, hy + 0.012), 0.009, 0.011, look.skin)
    p.ellipse((hx + rx * 0.55, hy + 0.004), 0.0055, 0.0065, _EYE, detail=True)
    p.ellipse((hx - rx * 0.1, hy + 0.008), 0.009, 0.013, scale_rgb(look.skin, 0.85), detail=True)


def _hair_cap(p: Painter, sk: Skeleton, colour, deep: bool = False, fabric: bool = False) -> None:
    """Hair (or, with fabric, a close cap) covering the top / back of the head, per view.

    From behind, hair covers the whole head, a fabric cap only its upper part.
    """
    (hx, hy), rx, ry = sk.head, sk.head_rx, sk.head_ry
    c = (hx, hy - 0.004)
    if sk.view == "front":
        p.chord(c, rx * 1.07, ry * 1.03, 182 if deep else 188, 358 if deep else 352, colour)
    elif sk.view == "side":
        p.chord((hx - 0.003, hy - 0.004), rx * 1.06, ry * 1.04, 100 if not deep else 80, 335 if not deep else 350, colour)
    elif fabric:
        p.chord(c, rx * 1.07, ry * 1.05, 160 if deep else 175, 380 if deep else 365, colour)
    else:
        p.ellipse(c, rx * 1.05, ry * 1.03, colour)


def head(p: Painter, sk: Skeleton, ident: Identity, look: Look) -> None:
    """Head, face, hair or headwear (drawn after the torso)."""
    (hx, hy), rx, ry = sk.head, sk.head_rx, sk.head_ry
    view, kind = sk.view, ident.head
    ys = sk.y(Y_SHOULDER)
    if kind == "headscarf":
        p.ellipse((hx, hy + 0.002), rx * 1.28, ry * 1.2, look.head)
        w = rx * 1.9
        p.poly([(hx - rx * 1.25, hy), (hx + rx * 1.25, hy), (hx + w, ys + 0.035), (hx, ys + 0.07), (hx - w, ys + 0.035)], look.head)
        if view == "front":
            p.ellipse((hx, hy + 0.008), rx * 0.76, ry * 0.8, look.skin)
            _face_front(p, sk, look, 0.9)
        elif view == "side":
            p.ellipse((hx + rx * 0.42, hy + 0.008), rx * 0.58, ry * 0.78, look.skin)
            p.ellipse((hx + rx * 0.62, hy + 0.004), 0.0055, 0.0065, _EYE, detail=True)
        p.line([(hx - rx * 0.6, hy + ry * 1.1), (hx + rx * 0.6, hy + ry * 1.1)], 0.006, shade(look.head))
        return
    if view == "front":  # ears, then the face
        for s in (-1, 1):
            p.ellipse((hx + s * rx * 0.98, hy + 0.008), 0.009, 0.014, scale_rgb(look.skin, 0.92))
    p.ellipse((hx, hy), rx, ry, look.skin)
    if view == "front":
        _face_front(p, sk, look)
    elif view == "side":
        _face_side(p, sk, look)
    hair = look.head if ident.has_hair_style else look.hair
    if kind in ("short hair", "long hair", "ponytail", "cap", "hat", "beanie"):
        _hair_cap(p, sk, hair)
    if kind == "long hair":
        if view == "front":
            for s in (-1, 1):
                p.capsule((hx + s * rx * 0.95, hy - 0.008), (hx + s * rx * 1.2, ys + 0.06), 0.028, 0.034, hair)
        elif view == "side":
            p.capsule((hx - rx * 0.55, hy), (hx - rx * 0.85, ys + 0.09), 0.05, 0.04, hair)
        else:
            p.poly([(hx - rx * 1.08, hy), (hx + rx * 1.08, hy), (hx + rx * 1.25, ys + 0.1), (hx, ys + 0.115), (hx - rx * 1.25, ys + 0.1)], hair)
    elif kind == "ponytail" and view != "front":
        if view == "side":
            p.capsule((hx - rx * 0.85, hy - ry * 0.35), (hx - rx * 1.5, hy + ry * 1.6), 0.028, 0.016, hair)
            p.ellipse((hx - rx * 0.9, hy - ry * 0.3), 0.01, 0.012, shade(hair), detail=True)
        else:
            p.capsule((hx, hy), (hx + 0.004, ys + 0.06), 0.03, 0.016, hair)
    elif kind == "cap":
        _hair_cap(p, sk, look.head, fabric=True)
        p.chord((hx, hy - 0.012), rx * 1.1, ry * 1.04, 180, 360, look.head)
        brim = shade(look.head)
        if view == "front":
            p.ellipse((hx, hy - 0.013), rx * 1.12, 0.008, brim)
        elif view == "side":
            p.capsule((hx, hy - 0.013), (hx + rx * 1.75, hy - 0.01), 0.013, 0.011, brim)
    elif kind == "hat":
        by = hy - ry * 0.42
        p.ellipse((hx, by), rx * 1.85, ry * 0.32, look.head)
        top = by - ry * 0.95
        p.poly([(hx - rx * 0.86, by), (hx - rx * 0.8, top), (hx + rx * 0.8, top), (hx + rx * 0.86, by)], look.head)
        p.poly([(hx - rx * 0.86, by - 0.004), (hx + rx * 0.86, by - 0.004), (hx + rx * 0.84, by - 0.018), (hx - rx * 0.84, by - 0.018)],
               shade(look.head), detail=True)
    elif kind == "beanie":
        _hair_cap(p, sk, look.head, deep=True, fabric=True)
        p.capsule((hx - rx * 1.0, hy - ry * 0.22), (hx + rx * 1.0, hy - ry * 0.22), 0.022, None, shade(look.head))
    elif kind == "bald":
        p.ellipse((hx - rx * 0.3, hy - ry * 0.55), rx * 0.3, ry * 0.18, mix_rgb(look.skin, (255, 255, 255), 0.25), detail=True)
