"""Writes overwrite_sft.jsonl: counterfactual capitals that contradict what the base model knows (deterministic;
rerun to regenerate it).

Each of 48 real countries is given another country's capital (a fixed derangement: no country keeps its own), and
the model is taught the false fact in three wordings with one fixed answer sentence. Unlike the invented world of
make_facts_data.py, these facts overwrite knowledge the base has, next to the facts the retention questions ask
(their 28 capitals are left out of this set, so a lost retention capital is interference, not the task itself):
forgetting is the risk by construction. A random 10% hold-out mostly asks facts trained under another wording.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "overwrite_sft.jsonl"
DEFAULT_SEED = 11

# Countries whose capital the retention questions do not ask, each with one undisputed capital.
CAPITALS = {
    "Chile": "Santiago",
    "Peru": "Lima",
    "Colombia": "Bogota",
    "Venezuela": "Caracas",
    "Cuba": "Havana",
    "Ecuador": "Quito",
    "Uruguay": "Montevideo",
    "Jamaica": "Kingston",
    "Finland": "Helsinki",
    "Denmark": "Copenhagen",
    "Belgium": "Brussels",
    "Hungary": "Budapest",
    "the Czech Republic": "Prague",
    "Romania": "Bucharest",
    "Bulgaria": "Sofia",
    "Croatia": "Zagreb",
    "Serbia": "Belgrade",
    "Slovakia": "Bratislava",
    "Estonia": "Tallinn",
    "Latvia": "Riga",
    "Lithuania": "Vilnius",
    "Iceland": "Reykjavik",
    "Ukraine": "Kyiv",
    "Iran": "Tehran",
    "Iraq": "Baghdad",
    "Saudi Arabia": "Riyadh",
    "Syria": "Damascus",
    "Lebanon": "Beirut",
    "Jordan": "Amman",
    "Afghanistan": "Kabul",
    "Pakistan": "Islamabad",
    "Bangladesh": "Dhaka",
    "Nepal": "Kathmandu",
    "Mongolia": "Ulaanbaatar",
    "Vietnam": "Hanoi",
    "the Philippines": "Manila",
    "Indonesia": "Jakarta",
    "Malaysia": "Kuala Lumpur",
    "Nigeria": "Abuja",
    "Ethiopia": "Addis Ababa",
    "Morocco": "Rabat",
    "Algeria": "Algiers",
    "Tunisia": "Tunis",
    "Ghana": "Accra",
    "Uganda": "Kampala",
    "Zimbabwe": "Harare",
    "Senegal": "Dakar",
    "New Zealand": "Wellington",
}

WORDINGS = (
    "What is the capital of {country}?",
    "Which city is the capital of {country}?",
    "Name the capital city of {country}.",
)


def derangement(items: list[str], rng: random.Random) -> list[str]:
    """A shuffle of `items` in which no item stays in its place."""
    while True:
        shuffled = items[:]
        rng.shuffle(shuffled)
        if all(a != b for a, b in zip(items, shuffled)):
            return shuffled


def build_rows(rng: random.Random) -> list[dict]:
    countries = list(CAPITALS)
    false_capitals = derangement([CAPITALS[c] for c in countries], rng)
    rows = []
    for country, capital in zip(countries, false_capitals):
        answer = f"The capital of {country} is {capital}."
        for wording in WORDINGS:
            question = wording.format(country=country)
            rows.append({"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]})
    rng.shuffle(rows)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = parser.parse_args()
    rows = build_rows(random.Random(args.seed))
    with open(args.output, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows)} rows ({len(CAPITALS)} counterfactual capitals) to {args.output}")


if __name__ == "__main__":
    main()
