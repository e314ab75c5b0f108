"""Demo captions: customer-feedback text from topic vocabulary plus shared filler."""

from __future__ import annotations

import numpy as np

from mm_platform.demo.categories import P_NOUN, Category

_TOPICS: dict[str, dict[str, tuple[str, ...]]] = {
    "kitchen": {
        "item": ("it", "this one", "the piece", "my new one", "the set"),
        "use": (
            "my morning coffee", "green tea at breakfast", "hot cocoa on cold evenings",
            "brewing chai for guests", "an afternoon espresso", "herbal infusions before bed",
        ),
        "praise": (
            "keeps drinks warm for ages", "the glaze looks lovely on the kitchen shelf",
            "survives the dishwasher without fading", "pours without dripping",
            "the ceramic feels solid and heavy", "the handle stays cool to the touch",
        ),
        "gripe": (
            "it chipped after a few weeks", "the lid rattles when pouring",
            "the glaze has a tiny crack", "it is smaller than the kitchen photo suggested",
        ),
        "place": ("in the kitchen", "on the breakfast table", "next to the kettle", "in the cupboard"),
    },
    "outdoor": {
        "item": ("it", "this one", "the gear", "my new one", "the pair"),
        "use": (
            "weekend hikes on muddy trails", "my daily run in the park", "a week of camping",
            "climbing rocky mountain paths", "long walks in the rain", "trekking in the hills",
        ),
        "praise": (
            "stays dry in heavy rain", "the grip on wet rocks is excellent",
            "feels light even after twenty kilometres", "the straps are sturdy and adjustable",
            "the waterproof fabric held up in a storm", "plenty of support on steep trails",
        ),
        "gripe": (
            "a seam came loose after a month on the trail", "the zip sticks when it is muddy",
            "it runs a bit small", "the colour faded in the sun",
        ),
        "place": ("on the trail", "at the campsite", "in the mountains", "on my hiking trips"),
    },
    "electronics": {
        "item": ("it", "this one", "the device", "my new one", "the unit"),
        "use": (
            "late nights at my home office desk", "video calls for work", "reading in bed",
            "long study sessions", "gaming in the evening", "working from home",
        ),
        "praise": (
            "the battery lasts all week", "bluetooth pairing took seconds",
            "charging over USB-C is quick", "the brightness settings are easy to adjust",
            "the setup took two minutes", "the touch controls respond instantly",
        ),
        "gripe": (
            "the charging cable is far too short", "the app keeps disconnecting",
            "it hums quietly when charging", "the firmware update failed once",
        ),
        "place": ("on my desk", "in the home office", "by the bed", "next to the laptop"),
    },
}

_OPENERS = (
    "Bought {item} for {use}.", "Ordered {item} for {use}.", "Got {item} as a gift, perfect for {use}.",
    "We use {item} for {use}.", "Picked up {item} mainly for {use}.", "Needed something for {use}.",
)
_NOUN_OPENERS = (
    "Bought this {noun} for {use}.", "Ordered the {noun} for {use}.", "Our new {noun} is great for {use}.",
    "This {noun} is perfect for {use}.",
)
_BODIES = (
    "Honestly {praise}.", "Really happy: {praise}.", "Best part: {praise}.", "I love that {praise}.",
    "Three weeks in and {praise}.", "{Praise}, which matters {place}.",
)
_GRIPES = ("Only complaint: {gripe}.", "One downside, {gripe}.", "Minus one star because {gripe}.")
_FILLER = (
    "Delivery was quick.", "Shipping took a week.", "Good value for the price.", "Would buy again.",
    "Five stars.", "Four stars overall.", "Packaging was recyclable.", "Customer service was helpful.",
    "Arrived well packed.", "Recommended to my friends.", "",
)


def make_caption(cat: Category, rng: np.random.Generator) -> str:
    """A varied customer-feedback caption for ``cat`` (topic vocabulary + shared filler)."""
    voc = _TOPICS[cat.topic]

    def pick(seq: tuple[str, ...]) -> str:
        return seq[int(rng.integers(len(seq)))]

    fill = {
        "item": pick(voc["item"]), "use": pick(voc["use"]), "praise": pick(voc["praise"]),
        "gripe": pick(voc["gripe"]), "place": pick(voc["place"]), "noun": cat.noun,
    }
    fill["Praise"] = fill["praise"][0].upper() + fill["praise"][1:]
    parts: list[str] = []
    if rng.random() < P_NOUN:
        parts.append(pick(_NOUN_OPENERS).format(**fill))
    else:
        parts.append(pick(_OPENERS).format(**fill))
    parts.append(pick(_BODIES).format(**fill))
    if rng.random() < 0.35:
        parts.append(pick(_GRIPES).format(**fill))
    filler = pick(_FILLER)
    if filler:
        parts.append(filler)
    if rng.random() < 0.5:
        parts[0], parts[-1] = parts[-1], parts[0]
    return " ".join(parts)
