"""Caption grammars: the same attributes, said three ways.

- ``sentences`` (CUHK-PEDES-like): two or three full sentences, about 25-40
  words, plain words; may mention the view ("walking away from the camera").
- ``phrases`` (terse ICFG/RSTP-style tags): a comma list, about 10-16 words,
  items in random order, British/shorthand words.
- ``notes`` (report style): field-like clauses in another order (bag and shoes
  first), colours often after the noun ("tee in crimson"), rarer synonyms.

Every caption names every attribute of the identity except, in some grammars,
an average build (which annotators rarely mention). Two captions of an image
are drawn until they differ.
"""

from __future__ import annotations

import re
from typing import Callable

import numpy as np

from common.data.synth.attributes import Identity
from common.data.synth.vocab import VOCABS, Vocabulary


def _a(phrase: str) -> str:
    return ("an " if phrase[:1].lower() in "aeiou" else "a ") + phrase


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


class _Say:
    """Picks words for one identity from one vocabulary."""

    def __init__(self, ident: Identity, v: Vocabulary, rng: np.random.Generator):
        self.i, self.v, self.rng = ident, v, rng
        self.he = "he" if ident.gender == "man" else "she"
        self.his = "his" if ident.gender == "man" else "her"

    def pick(self, options) -> str:
        return options[int(self.rng.integers(len(options)))]

    def col(self, name: str) -> str:
        return self.pick(self.v.colours[name])

    def noun(self) -> str:
        return self.pick(self.v.person[self.i.gender])

    def build(self) -> str:
        return self.pick(self.v.build[self.i.build])

    def head(self) -> str:
        i = self.i
        c = self.pick(self.v.hair[i.head_colour]) if i.has_hair_style else self.col(i.head_colour)
        return self.pick(self.v.head[i.head]).format(c=c)

    def garment(self, table: dict, kind: str, colour: str, after: bool = False) -> str:
        noun, c = self.pick(table[kind]), self.col(colour)
        return f"{noun} in {c}" if after else f"{c} {noun}"

    def upper(self, after: bool = False) -> str:
        return self.garment(self.v.upper, self.i.upper, self.i.upper_colour, after)

    def lower(self, after: bool = False) -> str | None:
        if self.i.lower is None:
            return None
        return self.garment(self.v.lower, self.i.lower, self.i.lower_colour, after)

    def shoes(self, after: bool = False) -> str:
        return self.garment(self.v.shoes, self.i.shoes, self.i.shoes_colour, after)

    def bag(self, after: bool = False) -> str:
        if self.i.bag == "none":
            return self.pick(self.v.bag["none"])
        return self.garment(self.v.bag, self.i.bag, self.i.bag_colour, after)


_VIEW_SENTENCE = {
    "front": ("{He} is walking towards the camera.", "{He} is facing the camera."),
    "back": ("{He} is walking away from the camera.", "The photo shows {him} from behind."),
    "side": ("{He} is walking past the camera.", "{He} is seen from the side."),
}


def sentences(ident: Identity, view: str, rng: np.random.Generator) -> str:
    """Long CUHK-PEDES-like description in full sentences."""
    s = _Say(ident, VOCABS["sentences"], rng)
    b = s.build()
    subj = f"{s.pick(('A', 'The', 'This'))} {b + ' ' if b else ''}{s.noun()}"
    if subj.startswith("A ") and subj[2] in "aeiou":
        subj = "An " + subj[2:]
    lower = s.lower()
    shoes = s.shoes() if rng.random() < 0.5 else "a pair of " + s.shoes()
    clothes = [_a(s.upper())] + ([lower if ident.lower != "skirt" else _a(lower)] if lower else []) + [shoes]
    bag = s.bag()
    bag_s = {
        "none": ("{He} is not carrying anything.", "{He} has nothing in {his} hands."),
        "backpack": ("{He} is carrying " + _a(bag) + " on {his} back.", "{He} wears " + _a(bag) + "."),
        "handbag": ("{He} holds " + _a(bag) + " in one hand.", "{He} is carrying " + _a(bag) + "."),
        "shoulder bag": ("{He} has " + _a(bag) + " over {his} shoulder.", "{He} carries " + _a(bag) + " on one side."),
        "umbrella": ("{He} is holding " + _a(bag) + ".", "{He} carries " + _a(bag) + " in {his} hand."),
    }[ident.bag]
    head = s.head()
    forms = (
        f"{subj} with {head} is wearing {_and(clothes)}. " + s.pick(bag_s),
        f"{subj} is wearing {_and(clothes)}. {{He}} has {head}. " + s.pick(bag_s),
        f"{subj} has {head} and is dressed in {clothes[0]}. {{He}} also wears {_and(clothes[1:])}. " + s.pick(bag_s),
        f"{subj} wearing {_and(clothes)} is walking. {{He}} has {head}, and " + s.pick(bag_s)[5:].replace(".", "") + ".",
    )
    text = s.pick(forms)
    if rng.random() < 0.5:
        text += " " + s.pick(_VIEW_SENTENCE[view])
    text = text.replace("{He}", _cap(s.he)).replace("{him}", "him" if ident.gender == "man" else "her").replace("{his}", s.his)
    return ". ".join(_cap(part) for part in text.split(". "))


def phrases(ident: Identity, view: str, rng: np.random.Generator) -> str:
    """Terse comma-separated tags in random order."""
    s = _Say(ident, VOCABS["phrases"], rng)
    b = s.build()
    subj = f"{b + ' ' if b else ''}{s.noun()}"
    items = [s.upper(), s.lower(), s.shoes(), s.head(), s.bag()]
    items = [x for x in items if x]
    rng.shuffle(items)
    form = int(rng.integers(3))
    if form == 0:
        return f"{subj}, " + ", ".join(items)
    if form == 1:
        return f"{subj} in {items[0]}, " + ", ".join(items[1:])
    return f"{subj} with " + ", ".join(items[:-1]) + " and " + items[-1]


def notes(ident: Identity, view: str, rng: np.random.Generator) -> str:
    """Report-like notes: bag and shoes first, other words, colours often after nouns."""
    s = _Say(ident, VOCABS["notes"], rng)
    after = bool(rng.random() < 0.6)
    who = f"{s.build()} {s.noun()}"
    seen = {"front": "from the front", "back": "from behind", "side": "from the side"}[view]
    lower = s.lower(after)
    bottom = f" Bottom: {lower}." if lower else ""
    form = int(rng.integers(3))
    if form == 0:
        return (f"{_cap(who)} seen {seen}. Carrying: {s.bag(after)}. Footwear: {s.shoes(after)}.{bottom} "
                f"Top: {s.upper(after)}. Head: {s.head()}.")
    if form == 1:
        legs = f"{lower} and {s.shoes(after)}" if lower else s.shoes(after)
        bag = f"with {s.bag(after)}" if ident.bag != "none" else s.pick(("no luggage", "empty-handed"))
        return f"{_cap(bag)}; {legs}, {s.upper(after)} on top and {s.head()}; {_a(who)}, seen {seen}."
    parts = [s.shoes(after), s.upper(after)] + ([lower] if lower else [])
    rng.shuffle(parts)
    return f"Luggage: {s.bag()}; {', '.join(parts)}; {s.head()}. Subject: {who}."


GRAMMARS: dict[str, Callable[[Identity, str, np.random.Generator], str]] = {
    "sentences": sentences,
    "phrases": phrases,
    "notes": notes,
}


def caption_pair(ident: Identity, view: str, grammar: str, rng: np.random.Generator) -> list[str]:
    """Two different captions of one image (redrawn up to 20 times until they differ)."""
    fn = GRAMMARS[grammar]
    first = _articles(fn(ident, view, rng))
    second = first
    for _ in range(20):
        second = _articles(fn(ident, view, rng))
        if second != first:
            break
    return [first, second]


_A_VOWEL = re.compile(r"\b([Aa]) (?=[aeiouAEIOU])")


def _articles(text: str) -> str:
    """'a orange hijab' -> 'an orange hijab' wherever a template put 'a' before a vowel."""
    return _A_VOWEL.sub(lambda m: m.group(1) + "n ", text)
