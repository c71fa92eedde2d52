"""Body geometry: poses, the skeleton of a person, and the camera.

Everything is laid out in *person units*: y runs from 0 (top of the head) to
1 (soles), x is 0 on the body's axis, lengths are fractions of the height.
Side views face +x (the renderer may mirror the whole image). `Camera` maps
person units to pixels and can add a high-angle perspective (the head grows,
the feet shrink), as seen from a surveillance camera.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from common.data.synth.attributes import Identity

Pt = tuple[float, float]

_SHOULDER = {"man": 0.092, "woman": 0.080}  # shoulder joint half-width
_HIP = {"man": 0.070, "woman": 0.080}
_WAIST = {"man": 0.066, "woman": 0.058}
_BUILD = {"slim": 0.86, "average": 1.0, "heavy": 1.24}

Y_NECK, Y_SHOULDER, Y_CHEST, Y_WAIST, Y_HIP = 0.125, 0.185, 0.27, 0.40, 0.50
UPPER_ARM, FOREARM, THIGH, SHIN = 0.165, 0.145, 0.235, 0.225


@dataclass(frozen=True)
class Pose:
    """One image's pose: view, walking phase, arm and leg angles (radians)."""

    view: str  # "front" | "side" | "back"
    stride: float  # -1..1: which leg is forward and how far
    arm_spread: float  # front/back: arms away from the body
    elbow: float  # elbow bend
    lift: float  # front/back: one foot lifted (0..1)
    lift_side: int  # -1 or +1


def sample_pose(rng: np.random.Generator, view: str, stride: float) -> Pose:
    """Draw a walking/standing pose for `view`; `stride` scales the walking amplitude."""
    return Pose(
        view=view,
        stride=float(rng.uniform(-1, 1) * stride),
        arm_spread=float(rng.uniform(0.05, 0.28)),
        elbow=float(rng.uniform(0.0, 0.5)),
        lift=float(rng.uniform(0, 1) * stride),
        lift_side=int(rng.choice((-1, 1))),
    )


@dataclass
class Limb:
    """Arm (root=shoulder, mid=elbow, end=wrist) or leg (hip, knee, ankle)."""

    root: Pt
    mid: Pt
    end: Pt
    w_root: float
    w_end: float
    side: int  # -1 screen-left / back, +1 screen-right / front (side view)
    far: bool  # side view: the limb behind the body


@dataclass
class Skeleton:
    """Joint positions and body widths of one posed person."""

    view: str
    head: Pt
    head_rx: float
    head_ry: float
    neck_w: float
    arms: list[Limb]
    legs: list[Limb]
    levels: list[tuple[float, float, float]]  # (y, left/back x, right/front x) of the torso edge
    scale: float  # build factor
    dy: float  # vertical shift applied so that the soles end at y = 1

    def y(self, level: float) -> float:
        """A body level (`Y_SHOULDER`, ...) of the unposed body, at its posed height."""
        return level + self.dy

    def torso(self, y0: float, y1: float, grow: float = 0.0, flare: float = 0.0) -> list[Pt]:
        """Closed outline of the torso between y0 and y1 (extended below the hips).

        grow widens it all round (garment thickness); flare widens it linearly
        below the hip line (coats, skirts), `flare` per unit of height.
        """
        ys = sorted({y0, y1} | {y for y, _, _ in self.levels if y0 < y < y1})
        left, right = [], []
        for y in ys:
            lx, rx = self.edge(y)
            extra = grow + max(0.0, y - self.levels[-1][0]) * flare
            left.append((lx - extra, y))
            right.append((rx + extra, y))
        return left + right[::-1]

    def edge(self, y: float) -> tuple[float, float]:
        """Left/back and right/front x of the torso at height y (linear between levels)."""
        lv = self.levels
        if y <= lv[0][0]:
            return lv[0][1], lv[0][2]
        for (ya, la, ra), (yb, lb, rb) in zip(lv, lv[1:]):
            if y <= yb:
                t = (y - ya) / (yb - ya)
                return la + t * (lb - la), ra + t * (rb - ra)
        return lv[-1][1], lv[-1][2]


def _limb(root: Pt, a1: float, l1: float, a2: float, l2: float) -> tuple[Pt, Pt]:
    """Two-segment chain: angles from straight down (positive = +x)."""
    mid = (root[0] + l1 * math.sin(a1), root[1] + l1 * math.cos(a1))
    end = (mid[0] + l2 * math.sin(a2), mid[1] + l2 * math.cos(a2))
    return mid, end


def build_skeleton(ident: Identity, pose: Pose) -> Skeleton:
    """Pose the identity's body; the lowest sole ends at y = 1."""
    b = _BUILD[ident.build]
    g = ident.gender
    arm_w, fore_w = 0.042 * b, 0.034 * b
    thigh_w, calf_w = 0.060 * b, 0.044 * b
    arms: list[Limb] = []
    legs: list[Limb] = []
    if pose.view == "side":
        depth = 0.050 * b
        belly = 0.012 if ident.build == "heavy" else 0.0
        chest = 0.012 if g == "woman" else 0.004
        levels = [
            (Y_SHOULDER - 0.012, -depth * 0.8, depth * 0.7),
            (Y_SHOULDER + 0.02, -depth, depth),
            (Y_CHEST, -depth, depth + chest),
            (Y_WAIST, -depth * 0.88, depth * 0.9 + belly),
            (Y_HIP, -depth * 1.05, depth * 0.92 + belly * 0.6),
        ]
        s = pose.stride
        for far, sign in ((True, -1.0), (False, 1.0)):
            a = sign * s * 0.4  # arm swings opposite to the leg on the same side
            mid, end = _limb((0.0, Y_SHOULDER + 0.012), -a, UPPER_ARM, -a + 0.12 + 0.6 * pose.elbow, FOREARM)
            arms.append(Limb((0.0, Y_SHOULDER + 0.012), mid, end, arm_w, fore_w, 1, far))
            la = sign * s * 0.42
            knee_bend = 0.05 + (0.45 * abs(s) if la < 0 else 0.0)
            mid, end = _limb((0.0, Y_HIP + 0.02), la, THIGH, la - knee_bend, SHIN)
            legs.append(Limb((0.0, Y_HIP + 0.02), mid, end, thigh_w, calf_w, 1, far))
    else:
        sw, ww, hw = _SHOULDER[g] * b, _WAIST[g] * b, _HIP[g] * b
        if ident.build == "heavy":
            ww = max(ww, hw * 1.02)
        edge = sw + arm_w * 0.55
        levels = [
            (Y_SHOULDER - 0.012, -edge * 0.86, edge * 0.86),
            (Y_SHOULDER + 0.018, -edge, edge),
            (Y_CHEST, -(sw + arm_w * 0.1), sw + arm_w * 0.1),
            (Y_WAIST, -ww, ww),
            (Y_HIP, -hw, hw),
        ]
        for side in (-1, 1):
            sh = (side * sw, Y_SHOULDER + 0.015)
            a = side * pose.arm_spread
            fore = FOREARM * (1.0 - 0.35 * pose.elbow)  # bending toward the camera foreshortens
            mid, end = _limb(sh, a, UPPER_ARM, a - side * 0.05, fore)
            arms.append(Limb(sh, mid, end, arm_w, fore_w, side, False))
            hip = (side * (hw - thigh_w * 0.5), Y_HIP + 0.02)
            la = side * 0.03
            lift = pose.lift * 0.045 if side == pose.lift_side else 0.0
            shin = SHIN - lift
            mid, end = _limb(hip, la, THIGH - lift * 0.3, la * 0.5, shin)
            legs.append(Limb(hip, mid, end, thigh_w, calf_w, side, False))
    low = max(leg.end[1] for leg in legs) + 0.045  # ankle to sole
    dy = 1.0 - low

    def sh(p: Pt) -> Pt:
        return (p[0], p[1] + dy)

    for limb in arms + legs:
        limb.root, limb.mid, limb.end = sh(limb.root), sh(limb.mid), sh(limb.end)
    levels = [(y + dy, lx, rx) for y, lx, rx in levels]
    return Skeleton(
        view=pose.view, head=(0.004 if pose.view == "side" else 0.0, 0.07 + dy), head_rx=0.057 if pose.view == "side" else 0.054,
        head_ry=0.068, neck_w=0.034 * (1.1 if ident.build == "heavy" else 1.0), arms=arms, legs=legs, levels=levels, scale=b, dy=dy,
    )


@dataclass(frozen=True)
class Camera:
    """Maps person units to pixels: height `h` px, axis at `cx`, head top at `top`.

    `tilt` > 0 is a camera above the person: y is remapped by
    g(y) = (1+k)y / (1+ky), which stretches the top and compresses the feet,
    and widths scale with the local magnification.
    """

    cx: float
    top: float
    h: float
    tilt: float = 0.0

    def _g(self, y: float) -> float:
        k = self.tilt
        return (1 + k) * y / (1 + k * y)

    def width_factor(self, y: float) -> float:
        k = self.tilt
        return (1 + k / 2) / (1 + k * y)

    def pt(self, p: Pt) -> Pt:
        x, y = p
        return (self.cx + x * self.h * self.width_factor(y), self.top + self.h * self._g(y))

    def len(self, r: float, y: float) -> float:
        """A length r (person units) near height y, in pixels."""
        return r * self.h * self.width_factor(y)
