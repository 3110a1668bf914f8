"""The words of ShapeWorld: shape categories, colours, sizes, textures and the words drawn for OCR.

Names are plain English because a tiny model is trained on them ("red circle", "small blue star").
Category ids are fixed by the order of `SHAPES`, so every split shares one COCO category table.
"""
from __future__ import annotations

SHAPES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "star",
    "hexagon",
    "ring",
    "cross",
    "heart",
    "diamond",
    "crescent",
)

# Saturated, well separated hues; each object's colour is jittered a little around these.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (240, 220, 40),
    "green": (40, 170, 60),
    "cyan": (40, 200, 220),
    "blue": (40, 80, 225),
    "purple": (140, 60, 200),
    "pink": (245, 125, 190),
}

SIZES: tuple[str, ...] = ("small", "medium", "large")
TEXTURES: tuple[str, ...] = ("plain", "striped", "dotted")

# Shapes with a solid middle that can carry a word (OCR).
WORD_CARRIERS: frozenset[str] = frozenset({"circle", "square", "hexagon"})

# Short common words drawn in capitals; none is a colour or shape name, so OCR answers never
# collide with category or colour answers.
WORDS: tuple[str, ...] = (
    "CAT", "DOG", "SUN", "MAP", "BOX", "KEY", "CUP", "HAT", "PEN", "BUS", "CAR", "EGG", "FOX", "OWL",
    "BEE", "ANT", "COW", "PIG", "BAT", "ICE", "TEA", "JAM", "NET", "OAK", "SEA", "SKY", "TOY", "WEB",
    "ZIP", "BED", "BAG", "ARM", "LEG", "EAR", "EYE", "LID", "MUD", "FAN", "GYM", "INK", "JAR", "KID",
    "LOG", "MIX", "NUT", "OIL", "POT", "RUG", "SAW", "TIN", "VAN", "WAX", "YAK", "ZOO",
    "BOOK", "FISH", "BIRD", "TREE", "DOOR", "LAMP", "MILK", "BOAT", "CAKE", "COAT", "DESK", "DRUM",
    "FARM", "FROG", "GIFT", "GOAT", "HILL", "KITE", "LEAF", "LION", "MOON", "NEST", "PARK", "RAIN",
    "ROAD", "ROCK", "ROOF", "SALT", "SHIP", "SHOE", "SNOW", "SOAP", "SOCK", "TENT", "TOWN", "WAVE",
    "WIND", "WOLF", "WOOD", "YARD", "APPLE", "BREAD", "CHAIR", "CLOCK", "CLOUD", "HORSE", "HOUSE",
    "LEMON", "MOUSE", "PIANO", "PLANT", "RIVER", "SHEEP", "SPOON", "TABLE", "TIGER", "TRAIN", "WATER",
)

SIZE_ADJECTIVE = {"small": "small", "medium": "", "large": "large"}

NUMBER_WORDS = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
)


def plural(noun: str) -> str:
    if noun.endswith(("s", "x", "sh", "ch")):
        return noun + "es"
    return noun + "s"


def number_word(count: int) -> str:
    return NUMBER_WORDS[count] if count < len(NUMBER_WORDS) else str(count)


def category_id(shape: str) -> int:
    """COCO category id of a shape (1-based, fixed by `SHAPES`)."""
    return SHAPES.index(shape) + 1
