"""How ShapeWorld talks about its objects: noun phrases, descriptions, positions."""
from __future__ import annotations

from dataclasses import dataclass

from vlmfo1.data.shapeworld.scene import ShapeObject
from vlmfo1.data.shapeworld.vocab import SIZE_ADJECTIVE, number_word, plural


@dataclass(frozen=True)
class NounPhrase:
    """A description that picks out objects: any of shape, colour and texture may be left open."""

    category: str | None = None
    colour: str | None = None
    texture: str | None = None

    def matches(self, obj: ShapeObject) -> bool:
        return (
            (self.category is None or obj.category == self.category)
            and (self.colour is None or obj.colour == self.colour)
            and (self.texture is None or obj.texture == self.texture)
        )

    def text(self, count: int = 1) -> str:
        """ "red circle", "striped stars", "blue shape"; plural unless `count` is 1."""
        noun = self.category or "shape"
        if count != 1:
            noun = plural(noun)
        return " ".join(word for word in (self.texture, self.colour, noun) if word)

    def to_dict(self) -> dict:
        return {"category": self.category, "colour": self.colour, "texture": self.texture}


def with_article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def counted(phrase: NounPhrase, count: int) -> str:
    """ "a red circle", "three blue stars"."""
    if count == 1:
        return with_article(phrase.text(1))
    return f"{number_word(count)} {phrase.text(count)}"


def join_list(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def brief_description(obj: ShapeObject) -> str:
    """ "a small striped red star" (medium size goes unsaid)."""
    words = [SIZE_ADJECTIVE[obj.size], "" if obj.texture == "plain" else obj.texture, obj.colour, obj.category]
    return with_article(" ".join(word for word in words if word))


def position_name(center: tuple[float, float], width: int, height: int) -> str:
    """Where a point lies on a 3x3 grid: "top left", "centre", "bottom", ..."""
    column = ("left", "", "right")[min(2, int(3 * center[0] / width))]
    row = ("top", "", "bottom")[min(2, int(3 * center[1] / height))]
    return " ".join(word for word in (row, column) if word) or "centre"


def position_phrase(center: tuple[float, float], width: int, height: int) -> str:
    name = position_name(center, width, height)
    return "in the centre of the image" if name == "centre" else f"at the {name} of the image"


def detailed_description(obj: ShapeObject, width: int, height: int) -> str:
    size = {"small": "A small", "medium": "A medium-sized", "large": "A large"}[obj.size]
    first = f"{size} {obj.colour} {obj.category}"
    details = []
    if obj.texture != "plain":
        details.append(f"a {obj.texture} pattern")
    if obj.outline:
        details.append("a dark outline")
    if details:
        first += " with " + join_list(details)
    sentences = [first + ".", f"It is {position_phrase(obj.center, width, height)}."]
    if obj.visible_fraction < 0.9:
        sentences.append("It is partly hidden behind other shapes.")
    if obj.word:
        sentences.append(f'The word "{obj.word}" is written on it.')
    return " ".join(sentences)


BLOB_BRIEF = "an irregular blob"


def blob_detailed_description(center: tuple[float, float], width: int, height: int) -> str:
    return f"An irregular blob that is not one of the known shapes. It is {position_phrase(center, width, height)}."
