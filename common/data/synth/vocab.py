"""Words for attributes, one vocabulary per caption grammar.

The three vocabularies name the *same* attributes with partly different words,
as annotators of different datasets do: ``sentences`` uses plain everyday
terms (CUHK-PEDES), ``phrases`` British and shorthand variants (grey, tee,
trainers), ``notes`` rarer synonyms (crimson, cobalt, rucksack, slacks,
loafers). Every attribute value has at least one word in every vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass, field

Words = dict[str, tuple[str, ...]]


@dataclass(frozen=True)
class Vocabulary:
    colours: Words  # PALETTE name -> words
    hair: Words  # HAIR_COLOURS name -> words
    person: Words  # gender -> nouns
    build: Words  # build -> adjectives ("" allowed: not mentioned)
    upper: Words
    lower: Words
    shoes: Words
    bag: Words
    head: Words = field(default_factory=dict)  # head style -> phrase templates with {c}

    def colour_words(self, colour: str) -> tuple[str, ...]:
        """All words this vocabulary uses for a palette colour (for tests and analysis)."""
        return self.colours[colour]


_PLAIN_COLOURS: Words = {
    "black": ("black",), "white": ("white",), "gray": ("gray", "grey"), "red": ("red",), "orange": ("orange",),
    "yellow": ("yellow",), "green": ("green",), "blue": ("blue",), "purple": ("purple",), "pink": ("pink",),
    "brown": ("brown",),
}

SENTENCES = Vocabulary(
    colours=_PLAIN_COLOURS,
    hair={"black": ("black", "dark"), "brown": ("brown",), "blonde": ("blonde", "blond"), "gray": ("gray", "grey")},
    person={"man": ("man", "young man", "guy", "male"), "woman": ("woman", "young woman", "lady", "girl")},
    build={"slim": ("slim", "thin"), "average": ("",), "heavy": ("heavy", "heavy-set", "chubby")},
    upper={
        "t-shirt": ("t-shirt", "short-sleeved t-shirt", "short sleeve shirt"), "tank top": ("tank top", "sleeveless top"),
        "shirt": ("shirt", "long-sleeved shirt", "button-up shirt"), "jacket": ("jacket", "zip-up jacket"),
        "coat": ("long coat", "coat", "knee-length coat"), "hoodie": ("hoodie", "hooded sweatshirt"),
        "sweater": ("sweater", "knit sweater"), "dress": ("dress", "knee-length dress"),
    },
    lower={"jeans": ("jeans", "denim jeans"), "trousers": ("trousers", "pants", "long pants"), "shorts": ("shorts", "short pants"),
           "skirt": ("skirt", "short skirt")},
    shoes={"sneakers": ("sneakers", "running shoes"), "boots": ("boots", "ankle boots"), "sandals": ("sandals",),
           "leather shoes": ("leather shoes", "dress shoes")},
    bag={"backpack": ("backpack",), "handbag": ("handbag", "hand bag"), "shoulder bag": ("shoulder bag", "side bag"),
         "umbrella": ("umbrella", "closed umbrella"), "none": ("",)},
    head={
        "short hair": ("short {c} hair", "{c} short hair"), "long hair": ("long {c} hair", "{c} hair down past the shoulders"),
        "ponytail": ("{c} hair in a ponytail", "a {c} ponytail"), "bald": ("a bald head", "no hair"),
        "cap": ("a {c} cap", "a {c} baseball cap"), "hat": ("a {c} hat", "a {c} wide-brimmed hat"),
        "beanie": ("a {c} beanie", "a {c} knit cap"), "headscarf": ("a {c} headscarf", "a {c} hijab"),
    },
)

PHRASES = Vocabulary(
    colours={**_PLAIN_COLOURS, "gray": ("grey",)},
    hair={"black": ("black",), "brown": ("brown",), "blonde": ("blonde",), "gray": ("grey",)},
    person={"man": ("man", "male"), "woman": ("woman", "female")},
    build={"slim": ("slim", "skinny"), "average": ("",), "heavy": ("heavy", "stocky")},
    upper={
        "t-shirt": ("t-shirt", "tee"), "tank top": ("vest", "tank top"), "shirt": ("shirt", "long sleeve shirt"),
        "jacket": ("jacket",), "coat": ("coat", "overcoat"), "hoodie": ("hoodie",), "sweater": ("jumper", "sweater"),
        "dress": ("dress",),
    },
    lower={"jeans": ("jeans", "denims"), "trousers": ("trousers",), "shorts": ("shorts",), "skirt": ("skirt", "miniskirt")},
    shoes={"sneakers": ("trainers", "sneakers"), "boots": ("boots",), "sandals": ("sandals",), "leather shoes": ("leather shoes", "formal shoes")},
    bag={"backpack": ("backpack", "rucksack"), "handbag": ("handbag",), "shoulder bag": ("shoulder bag", "satchel"),
         "umbrella": ("umbrella",), "none": ("no bag", "nothing carried")},
    head={
        "short hair": ("short {c} hair",), "long hair": ("long {c} hair",), "ponytail": ("{c} ponytail",),
        "bald": ("bald",), "cap": ("{c} cap",), "hat": ("{c} hat",), "beanie": ("{c} beanie", "{c} woolly hat"),
        "headscarf": ("{c} headscarf", "{c} hijab"),
    },
)

NOTES = Vocabulary(
    colours={
        "black": ("black", "jet-black", "ebony"), "white": ("white", "ivory", "cream"), "gray": ("grey", "charcoal", "ash"),
        "red": ("crimson", "scarlet", "red"), "orange": ("orange", "tangerine", "amber"), "yellow": ("yellow", "mustard", "gold"),
        "green": ("green", "emerald", "olive"), "blue": ("blue", "navy", "cobalt"), "purple": ("purple", "violet", "plum"),
        "pink": ("pink", "rose", "magenta"), "brown": ("brown", "tan", "chocolate"),
    },
    hair={"black": ("dark", "black"), "brown": ("brunette", "brown"), "blonde": ("fair", "blonde"), "gray": ("silver", "grey")},
    person={"man": ("male", "gentleman", "man"), "woman": ("female", "lady", "woman")},
    build={"slim": ("lean", "slender"), "average": ("medium-built", "average-sized"), "heavy": ("large", "plump")},
    upper={
        "t-shirt": ("tee", "short-sleeve top"), "tank top": ("sleeveless vest", "singlet"), "shirt": ("button-down", "collared shirt"),
        "jacket": ("zip jacket", "windbreaker"), "coat": ("overcoat", "trench coat"), "hoodie": ("hooded top", "hoodie"),
        "sweater": ("pullover", "jumper"), "dress": ("frock", "dress"),
    },
    lower={"jeans": ("denims", "denim pants"), "trousers": ("slacks", "pants"), "shorts": ("short pants", "shorts"),
           "skirt": ("skirt", "mini skirt")},
    shoes={"sneakers": ("trainers", "running shoes"), "boots": ("boots", "high boots"), "sandals": ("sandals", "open shoes"),
           "leather shoes": ("loafers", "formal shoes")},
    bag={"backpack": ("rucksack", "knapsack"), "handbag": ("purse", "tote"), "shoulder bag": ("satchel", "messenger bag"),
         "umbrella": ("brolly", "umbrella"), "none": ("nothing", "none")},
    head={
        "short hair": ("{c} hair cut short", "short {c} hair"), "long hair": ("{c} hair worn long", "long {c} hair"),
        "ponytail": ("{c} hair tied back", "{c} ponytail"), "bald": ("shaved head", "bald head"), "cap": ("{c} peaked cap", "{c} cap"),
        "hat": ("{c} brimmed hat", "{c} hat"), "beanie": ("{c} knitted hat", "{c} beanie"), "headscarf": ("{c} head covering", "{c} scarf over the head"),
    },
)

VOCABS: dict[str, Vocabulary] = {"sentences": SENTENCES, "phrases": PHRASES, "notes": NOTES}
