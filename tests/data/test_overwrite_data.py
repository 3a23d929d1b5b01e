"""The overwrite task's data: false capitals for countries the retention questions do not ask about."""

import importlib.util
import json
import random
import re

from goft.evaluation import assets
from goft.evaluation.knowledge import load_questions
from tests.support.recipes import REPO


def generator():
    spec = importlib.util.spec_from_file_location("make_overwrite_data", REPO / "data" / "make_overwrite_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_shipped_file_is_what_the_generator_writes(tmp_path):
    make = generator()
    rows = make.build_rows(random.Random(make.DEFAULT_SEED))
    shipped = [json.loads(line) for line in (REPO / "data" / "overwrite_sft.jsonl").read_text().splitlines()]
    assert rows == shipped and len(rows) == 3 * len(make.CAPITALS) == 144


def test_every_country_gets_another_countrys_capital_in_every_wording():
    make = generator()
    taught = {}
    for row in make.build_rows(random.Random(make.DEFAULT_SEED)):
        country, capital = re.fullmatch(r"The capital of (.+) is (.+)\.", row["messages"][1]["content"]).groups()
        assert country in row["messages"][0]["content"]
        taught.setdefault(country, set()).add(capital)
    assert set(taught) == set(make.CAPITALS)
    assert all(len(capitals) == 1 for capitals in taught.values())  # one fixed answer per country
    false = {country: capitals.pop() for country, capitals in taught.items()}
    assert all(false[c] != make.CAPITALS[c] for c in false)  # nobody keeps its own capital
    assert sorted(false.values()) == sorted(make.CAPITALS.values())  # a permutation of the real capitals


def test_no_country_of_the_set_is_asked_by_the_retention_questions():
    make = generator()
    asked = " ".join(q.question for q in load_questions(assets.RETENTION_QUESTIONS) if "capital" in q.question)
    assert not [country for country in make.CAPITALS if country.removeprefix("the ") in asked]
