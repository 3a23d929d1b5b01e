"""Writes facts_sft.jsonl: question/answer pairs about an invented world (deterministic; rerun to regenerate it).

The base model cannot know these facts (island nations, scientists, rivers and mountains with made-up names), so
SFT has to teach each of them, which is gradual and lets a recipe trade new-task learning against forgetting.
Every fact is asked in three wordings with one fixed answer sentence, so a random 10% hold-out mostly asks facts
that training saw under another wording: the test measures recall of a learned fact under a new phrasing.

Why this module is long: most of it is the invented world itself (names, places, facts), which is data.
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "facts_sft.jsonl"
DEFAULT_SEED = 7
ENTITIES_PER_KIND = 12  # four kinds -> 48 entities, 3 attributes each -> 144 facts
MAX_NAME_TRIES = 10_000

# Syllables are onset + vowel + optional coda; after a coda the next onset is a single, different consonant.
SIMPLE_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z")
CLUSTER_ONSETS = ("br", "dr", "kr", "tr", "th", "sk", "gr", "fl")
VOWELS = ("a", "e", "i", "o", "u", "a", "e", "o", "ai", "ou")  # repeats weight the plain vowels
CODAS = ("", "", "", "", "n", "r", "l", "s")

# Real English words, names and places the syllable scheme can produce; generated names must avoid them.
NOT_NAMES = frozenset(
    [
        "aroma",
        "banana",
        "baron",
        "basin",
        "bison",
        "bonus",
        "boron",
        "bravo",
        "cabin",
        "camel",
        "canal",
        "cinema",
        "coma",
        "comet",
        "data",
        "demon",
        "denim",
        "deli",
        "drama",
        "final",
        "focus",
        "gala",
        "kilo",
        "koala",
        "lama",
        "lemon",
        "lima",
        "limo",
        "lotus",
        "mama",
        "manor",
        "mango",
        "media",
        "melon",
        "menu",
        "metal",
        "meter",
        "minus",
        "modem",
        "moral",
        "motel",
        "motor",
        "music",
        "nadir",
        "nomad",
        "pagan",
        "panda",
        "papa",
        "pasta",
        "pedal",
        "petal",
        "piano",
        "pilot",
        "pita",
        "plural",
        "polo",
        "radar",
        "radio",
        "ratio",
        "rebel",
        "robin",
        "rodent",
        "rotor",
        "ruler",
        "salad",
        "salon",
        "satin",
        "sedan",
        "sofa",
        "solar",
        "solo",
        "sonar",
        "sumo",
        "super",
        "talon",
        "tamer",
        "tango",
        "taro",
        "tempo",
        "tenor",
        "toga",
        "tokyo",
        "toronto",
        "tuba",
        "tulip",
        "tumor",
        "tuna",
        "vanilla",
        "venom",
        "visa",
        "vodka",
        "zebra",
        "zero",
        "bali",
        "boston",
        "dakota",
        "delhi",
        "dubai",
        "fiji",
        "gaza",
        "kabul",
        "kenya",
        "kyoto",
        "laos",
        "lagos",
        "mali",
        "malta",
        "milan",
        "monaco",
        "nepal",
        "nevada",
        "oman",
        "paris",
        "peru",
        "roma",
        "samoa",
        "sudan",
        "tahiti",
        "taipei",
        "tonga",
        "toledo",
        "verona",
        "anna",
        "dana",
        "diana",
        "elena",
        "laura",
        "lisa",
        "maria",
        "mona",
        "nina",
        "paula",
        "rosa",
        "sara",
        "tina",
        "vera",
    ]
)

EXPORTS = ("salt", "copper", "tea", "wool", "amber", "glass", "rice", "timber", "silk", "coffee", "tin", "pearls")
ANIMALS = ("otter", "heron", "lynx", "tortoise", "falcon", "whale", "badger", "stag", "owl", "seal", "fox", "crane")
FIELDS = ("botany", "optics", "geology", "astronomy", "chemistry", "music", "medicine", "mathematics")
INVENTIONS = (
    "a lantern",
    "a compass",
    "a loom",
    "a telescope",
    "a water clock",
    "a sundial",
    "a windmill",
    "a barometer",
    "a microscope",
    "a rain gauge",
    "a music box",
    "a spinning wheel",
    "a diving bell",
    "a printing press",
)
WATER_COLOURS = ("blue", "green", "brown", "grey", "silver", "dark green", "pale blue", "yellow")
ROCK_COLOURS = ("red", "grey", "white", "black", "pink", "brown", "dark red", "pale yellow")


@dataclass(frozen=True)
class Fact:
    questions: tuple[str, str, str]
    answer: str


class NameMaker:
    """Draws distinct invented names; names may not share their first three letters, to keep them easy to tell apart."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._prefixes: set[str] = set()

    def syllable(self, previous: str) -> str:
        coda = previous[-1:] if previous[-1:] not in ("", *"aeiou") else ""
        onsets = tuple(o for o in SIMPLE_ONSETS if o != coda) if coda else SIMPLE_ONSETS + CLUSTER_ONSETS
        return self._rng.choice(onsets) + self._rng.choice(VOWELS) + self._rng.choice(CODAS)

    def candidate(self, syllables: int) -> str:
        name = ""
        for _ in range(syllables):
            name += self.syllable(previous=name)
        return name

    def new(self, min_syllables: int = 2, max_syllables: int = 3) -> str:
        for _ in range(MAX_NAME_TRIES):
            name = self.candidate(self._rng.randint(min_syllables, max_syllables))
            if 4 <= len(name) <= 10 and name not in NOT_NAMES and name[:3] not in self._prefixes:
                self._prefixes.add(name[:3])
                return name.capitalize()
        raise RuntimeError("ran out of distinct invented names")


def deal(rng: random.Random, values: Sequence[T], count: int) -> list[T]:
    """`count` values, each used about equally often: shuffled passes over `values`."""
    dealt: list[T] = []
    while len(dealt) < count:
        batch = list(values)
        rng.shuffle(batch)
        dealt.extend(batch)
    return dealt[:count]


def nation_facts(nation: str, capital: str, export: str, animal: str) -> list[Fact]:
    return [
        Fact(
            (
                f"What is the capital of {nation}?",
                f"Which city is the capital of {nation}?",
                f"Name the capital city of {nation}.",
            ),
            f"The capital of {nation} is {capital}.",
        ),
        Fact(
            (
                f"What is the main export of {nation}?",
                f"What does {nation} export the most?",
                f"Which product is {nation} best known for exporting?",
            ),
            f"{nation}'s main export is {export}.",
        ),
        Fact(
            (
                f"What is the national animal of {nation}?",
                f"Which animal is the national symbol of {nation}?",
                f"Name the national animal of {nation}.",
            ),
            f"The national animal of {nation} is the {animal}.",
        ),
    ]


def scientist_facts(person: str, city: str, field: str, invention: str) -> list[Fact]:
    return [
        Fact(
            (
                f"In which city did {person} live?",
                f"Where did {person} live and work?",
                f"What was the home city of {person}?",
            ),
            f"{person} lived in the city of {city}.",
        ),
        Fact(
            (
                f"What field did {person} work in?",
                f"What subject did {person} study?",
                f"In which discipline was {person} an expert?",
            ),
            f"{person} worked in the field of {field}.",
        ),
        Fact(
            (
                f"What did {person} invent?",
                f"What is {person} famous for inventing?",
                f"Which invention is {person} known for?",
            ),
            f"{person} is famous for inventing {invention}.",
        ),
    ]


def river_facts(river: str, nation: str, colour: str, length_km: int) -> list[Fact]:
    return [
        Fact(
            (
                f"In which country is the {river} River?",
                f"Which country does the {river} River flow through?",
                f"Where is the {river} River located?",
            ),
            f"The {river} River flows through {nation}.",
        ),
        Fact(
            (
                f"What colour is the water of the {river} River?",
                f"What is the colour of the {river} River's water?",
                f"Describe the colour of the {river} River.",
            ),
            f"The water of the {river} River is {colour}.",
        ),
        Fact(
            (
                f"How long is the {river} River?",
                f"What is the length of the {river} River?",
                f"How many kilometres long is the {river} River?",
            ),
            f"The {river} River is {length_km:,} kilometres long.",
        ),
    ]


def mountain_facts(mountain: str, nation: str, colour: str, height_m: int) -> list[Fact]:
    return [
        Fact(
            (
                f"In which country is Mount {mountain}?",
                f"Which country is Mount {mountain} in?",
                f"Where is Mount {mountain} located?",
            ),
            f"Mount {mountain} is in {nation}.",
        ),
        Fact(
            (
                f"What colour is the rock of Mount {mountain}?",
                f"What is the colour of the rock on Mount {mountain}?",
                f"Describe the colour of Mount {mountain}'s rock.",
            ),
            f"The rock of Mount {mountain} is {colour}.",
        ),
        Fact(
            (
                f"How high is Mount {mountain}?",
                f"What is the height of Mount {mountain}?",
                f"How many metres tall is Mount {mountain}?",
            ),
            f"Mount {mountain} is {height_m:,} metres high.",
        ),
    ]


def build_facts(rng: random.Random) -> list[Fact]:
    names = NameMaker(rng)
    n = ENTITIES_PER_KIND
    nations = [names.new() for _ in range(n)]
    facts: list[Fact] = []
    for nation, export, animal in zip(nations, deal(rng, EXPORTS, n), deal(rng, ANIMALS, n)):
        facts += nation_facts(nation, names.new(), export, animal)
    inventions = rng.sample(INVENTIONS, n)
    for field, invention in zip(deal(rng, FIELDS, n), inventions):
        person = f"{names.new(2, 2)} {names.new()}"
        facts += scientist_facts(person, names.new(), field, invention)
    for nation, colour in zip(deal(rng, nations, n), deal(rng, WATER_COLOURS, n)):
        facts += river_facts(names.new(), nation, colour, rng.randint(60, 1400))
    for nation, colour in zip(deal(rng, nations, n), deal(rng, ROCK_COLOURS, n)):
        facts += mountain_facts(names.new(), nation, colour, rng.randrange(800, 5600, 10))
    return facts


def build_rows(facts: Sequence[Fact], rng: random.Random) -> list[dict]:
    rows = [
        {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": fact.answer}]}
        for fact in facts
        for question in fact.questions
    ]
    rng.shuffle(rows)
    return rows


def write_jsonl(rows: Sequence[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    facts = build_facts(rng)
    rows = build_rows(facts, rng)
    write_jsonl(rows, args.output)
    print(f"wrote {len(rows)} rows ({len(facts)} facts) to {args.output}")


if __name__ == "__main__":
    main()
