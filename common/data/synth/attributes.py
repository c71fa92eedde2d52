"""The attribute space of a generated person, and sampling unique identities.

An identity is a fixed combination of visible attributes: gender and build,
hair or headwear (with its colour), upper garment type and colour, lower
garment type and colour, shoes and their colour, and a carried item with its
colour. Skin tone and a small per-identity colour tint are part of the
person's look but not of its *semantic* key, which is what captions describe
and what must be unique within a domain.

The colour names mean the same thing in every domain (`PALETTE` is shared);
domains only change how the colours are drawn (colour cast, blur) and which
words name them (see `vocab`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

RGB = tuple[int, int, int]

#: Garment/accessory colours: name -> base RGB. Eleven well-separated basic
#: colour terms, so that a colour stays recognisable under a domain's colour cast.
PALETTE: dict[str, RGB] = {
    "black": (28, 28, 32),
    "white": (236, 236, 232),
    "gray": (128, 128, 132),
    "red": (204, 30, 36),
    "orange": (242, 128, 22),
    "yellow": (240, 208, 40),
    "green": (36, 148, 62),
    "blue": (36, 84, 204),
    "purple": (122, 52, 164),
    "pink": (242, 138, 182),
    "brown": (122, 76, 40),
}
HAIR_COLOURS: dict[str, RGB] = {
    "black": (24, 20, 20),
    "brown": (104, 64, 32),
    "blonde": (222, 186, 108),
    "gray": (168, 168, 170),
}
SHOE_COLOURS = ("black", "white", "brown", "gray", "red", "blue")
SKIN_TONES: tuple[RGB, ...] = ((244, 208, 180), (226, 174, 140), (198, 140, 100), (152, 100, 70), (104, 68, 46))

GENDERS = ("man", "woman")
BUILDS = ("slim", "average", "heavy")
#: Hair styles take a `HAIR_COLOURS` colour; headwear takes a `PALETTE` colour.
HAIR_STYLES = ("short hair", "long hair", "ponytail", "bald")
HEADWEAR = ("cap", "hat", "beanie", "headscarf")
HEADS = HAIR_STYLES + HEADWEAR
UPPERS = ("t-shirt", "tank top", "shirt", "jacket", "coat", "hoodie", "sweater", "dress")
LOWERS = ("jeans", "trousers", "shorts", "skirt")
SHOES = ("sneakers", "boots", "sandals", "leather shoes")
BAGS = ("none", "backpack", "handbag", "shoulder bag", "umbrella")

# Sampling weights per gender, rough street frequencies (they only shape the mix).
_HEAD_W = {
    "man": (0.43, 0.04, 0.03, 0.08, 0.18, 0.08, 0.14, 0.02),
    "woman": (0.14, 0.32, 0.16, 0.00, 0.08, 0.08, 0.08, 0.14),
}
_UPPER_W = {
    "man": (0.22, 0.06, 0.16, 0.18, 0.12, 0.14, 0.12, 0.0),
    "woman": (0.18, 0.08, 0.12, 0.14, 0.12, 0.10, 0.10, 0.16),
}
_LOWER_W = {"man": (0.36, 0.42, 0.22, 0.0), "woman": (0.30, 0.24, 0.16, 0.30)}
_SHOE_W = (0.40, 0.22, 0.13, 0.25)
_BAG_W = (0.26, 0.26, 0.18, 0.18, 0.12)
_BAG_W_MAN = (0.30, 0.32, 0.04, 0.22, 0.12)


@dataclass(frozen=True)
class Identity:
    """One generated person. `key()` is the semantic attribute tuple.

    lower / lower_colour are None for a dress; bag_colour is None without a bag.
    head_colour names a `HAIR_COLOURS` entry for hair styles and a `PALETTE`
    entry for headwear; hair_colour is the hair seen under headwear (not in
    captions). tint (-1..1) nudges garment colours per identity; skin indexes
    `SKIN_TONES`.
    """

    pid: int
    gender: str
    build: str
    head: str
    head_colour: str
    upper: str
    upper_colour: str
    lower: str | None
    lower_colour: str | None
    shoes: str
    shoes_colour: str
    bag: str
    bag_colour: str | None
    skin: int
    hair_colour: str
    tint: float

    def key(self) -> tuple:
        """The attributes a caption describes; unique within a domain."""
        return (
            self.gender, self.build, self.head, self.head_colour, self.upper, self.upper_colour,
            self.lower, self.lower_colour, self.shoes, self.shoes_colour, self.bag, self.bag_colour,
        )

    def to_json(self) -> dict:
        return asdict(self)

    @property
    def has_hair_style(self) -> bool:
        return self.head in HAIR_STYLES


def _pick(rng: np.random.Generator, options: tuple, weights: tuple | None = None):
    if weights is None:
        return options[int(rng.integers(len(options)))]
    p = np.asarray(weights, dtype=float)
    return options[int(rng.choice(len(options), p=p / p.sum()))]


def _colour_except(rng: np.random.Generator, avoid: tuple[str, ...] = ()) -> str:
    names = tuple(c for c in PALETTE if c not in avoid)
    return _pick(rng, names)


def sample_identity(rng: np.random.Generator, pid: int) -> Identity:
    """Draw one identity's attributes from `rng` (no uniqueness check)."""
    gender = _pick(rng, GENDERS)
    build = _pick(rng, BUILDS, (0.34, 0.44, 0.22))
    head = _pick(rng, HEADS, _HEAD_W[gender])
    hair_colour = _pick(rng, tuple(HAIR_COLOURS), (0.45, 0.3, 0.15, 0.1))
    head_colour = hair_colour if head in HAIR_STYLES else _colour_except(rng)
    upper = _pick(rng, UPPERS, _UPPER_W[gender])
    upper_colour = _colour_except(rng)
    if upper == "dress":
        lower, lower_colour = None, None
    else:
        lower = _pick(rng, LOWERS, _LOWER_W[gender])
        if upper == "coat" and lower in ("shorts", "skirt"):  # a knee-length coat would hide them
            lower = _pick(rng, ("jeans", "trousers"))
        # Jeans are mostly blue, black or gray, as in the street; other garments any colour.
        if lower == "jeans" and rng.random() < 0.7:
            lower_colour = _pick(rng, ("blue", "black", "gray"))
        else:
            lower_colour = _colour_except(rng, avoid=(upper_colour,))
    shoes = _pick(rng, SHOES, _SHOE_W)
    shoes_colour = _pick(rng, SHOE_COLOURS)
    bag = _pick(rng, BAGS, _BAG_W_MAN if gender == "man" else _BAG_W)
    bag_colour = None if bag == "none" else _colour_except(rng, avoid=(upper_colour,))
    return Identity(
        pid=pid, gender=gender, build=build, head=head, head_colour=head_colour,
        upper=upper, upper_colour=upper_colour, lower=lower, lower_colour=lower_colour,
        shoes=shoes, shoes_colour=shoes_colour, bag=bag, bag_colour=bag_colour,
        skin=int(rng.integers(len(SKIN_TONES))), hair_colour=hair_colour,
        tint=float(rng.uniform(-1.0, 1.0)),
    )


def sample_identities(rng: np.random.Generator, n: int, first_pid: int = 1, taken: set | None = None) -> list[Identity]:
    """Draw `n` identities whose `key()`s are unique (and not in `taken`).

    Sequential rejection sampling from one generator, so the result depends
    only on the generator's state, never on scheduling.
    """
    seen: set = set() if taken is None else taken
    out: list[Identity] = []
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 100 * n + 1000:
            raise RuntimeError(f"could not draw {n} unique identities from the attribute space")
        ident = sample_identity(rng, first_pid + len(out))
        if ident.key() in seen:
            continue
        seen.add(ident.key())
        out.append(ident)
    return out
