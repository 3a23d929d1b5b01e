"""Writes the demo datasets of the default recipe (deterministic; rerun to regenerate them).

- demo_sft.jsonl: topic labelling. A sentence is labelled with exactly one word (sport, science, food, music).
  The base SmolLM2-135M-Instruct answers in full sentences and often picks the wrong topic: the recipe measures
  exact match of its greedy answer on held-out sentences before and after SFT.
- demo_dpo.jsonl: concise vs rambling answers to short factual questions. The chosen answer is the fact alone; the
  rejected one buries the same fact in filler. Success is the held-out implicit-reward margin and accuracy.
"""

import json
import random
from pathlib import Path

HERE = Path(__file__).parent
SEED = 20240721

TOPICS = {
    "sport": {
        "subjects": ["The striker", "The goalkeeper", "Our captain", "The young sprinter", "The home team",
                     "The tennis champion", "The coach", "The defender", "The cyclist", "The rowing crew"],
        "actions": ["scored in the last minute of the match", "won the final after extra time",
                    "trained twice a day before the tournament", "broke the league record for goals",
                    "missed a penalty in the semi-final", "sprinted past three defenders",
                    "lifted the trophy in front of the fans", "was sent off for a hard tackle",
                    "finished the marathon in under three hours", "served an ace to win the set"],
    },
    "science": {
        "subjects": ["The researchers", "A chemist", "The physicist", "Our biology lab", "The astronomer",
                     "A team of geologists", "The microbiologist", "The climate scientists", "An engineer",
                     "The lab assistant"],
        "actions": ["measured the mass of a new particle", "observed light from a distant galaxy",
                    "sequenced the genome of a rare bacterium", "published the results of the experiment",
                    "tested the hypothesis with a controlled trial", "analysed rock samples from the crater",
                    "cooled the sample close to absolute zero", "recorded the reaction rate of the enzyme",
                    "calibrated the microscope before the experiment", "modelled the orbit of the comet"],
    },
    "food": {
        "subjects": ["The baker", "My grandmother", "The chef", "Our neighbour", "The pastry cook",
                     "The street vendor", "The waiter", "My brother", "The cheesemaker", "The restaurant"],
        "actions": ["kneaded the dough and let it rise", "simmered the tomato sauce for hours",
                    "grilled the fish with lemon and garlic", "served a bowl of spicy noodle soup",
                    "baked a chocolate cake for dessert", "seasoned the roast with rosemary",
                    "fried the onions until golden", "whisked the eggs for an omelette",
                    "sliced fresh bread for the sandwiches", "marinated the chicken overnight"],
    },
    "music": {
        "subjects": ["The band", "The violinist", "Our choir", "The drummer", "The orchestra",
                     "The singer", "The pianist", "The jazz trio", "The guitarist", "The composer"],
        "actions": ["played a slow ballad on stage", "tuned the strings before the concert",
                    "recorded a new album in the studio", "sang the chorus in perfect harmony",
                    "kept the rhythm with a steady beat", "performed a symphony by Beethoven",
                    "improvised a solo in the second verse", "rehearsed the melody all afternoon",
                    "wrote a song about the summer", "released a single on the radio"],
    },
}
INSTRUCTION = "Which topic is this sentence about? Answer with one word: sport, science, food or music."

FACTS = [
    ("What is the capital of France?", "Paris"), ("What is the capital of Japan?", "Tokyo"),
    ("What is the capital of Italy?", "Rome"), ("What is the capital of Spain?", "Madrid"),
    ("What is the capital of Germany?", "Berlin"), ("What is the capital of Egypt?", "Cairo"),
    ("What is the capital of Canada?", "Ottawa"), ("What is the capital of Kenya?", "Nairobi"),
    ("What is the capital of Peru?", "Lima"), ("What is the capital of Norway?", "Oslo"),
    ("What is the opposite of hot?", "Cold"), ("What is the opposite of up?", "Down"),
    ("What is the opposite of fast?", "Slow"), ("What is the opposite of early?", "Late"),
    ("What is the opposite of light?", "Dark"), ("What is the opposite of open?", "Closed"),
    ("What is the opposite of full?", "Empty"), ("What is the opposite of happy?", "Sad"),
    ("What colour is the sky on a clear day?", "Blue"), ("What colour is fresh grass?", "Green"),
    ("What colour is snow?", "White"), ("What colour is a ripe banana?", "Yellow"),
    ("What colour is coal?", "Black"), ("What colour is a ripe tomato?", "Red"),
    ("How many legs does a spider have?", "Eight"), ("How many days are in a week?", "Seven"),
    ("How many wheels does a bicycle have?", "Two"), ("How many hours are in a day?", "Twenty-four"),
    ("How many months are in a year?", "Twelve"), ("How many sides does a triangle have?", "Three"),
    ("Which animal says moo?", "A cow"), ("Which animal barks?", "A dog"), ("Which animal says meow?", "A cat"),
    ("Which animal has a trunk?", "An elephant"), ("Which bird cannot fly and lives in Antarctica?", "A penguin"),
    ("What do bees make?", "Honey"), ("What do cows give us to drink?", "Milk"),
    ("What falls from clouds when it rains?", "Water"), ("What is frozen water called?", "Ice"),
    ("Which planet do we live on?", "Earth"), ("What star is at the centre of our solar system?", "The Sun"),
    ("What is the largest ocean on Earth?", "The Pacific Ocean"), ("What gas do plants take in?", "Carbon dioxide"),
    ("What is two plus two?", "Four"), ("What is ten minus three?", "Seven"), ("What is three times three?", "Nine"),
    ("What language is spoken in Brazil?", "Portuguese"), ("What language is spoken in Mexico?", "Spanish"),
    ("Who wrote Romeo and Juliet?", "William Shakespeare"), ("What do you call a baby dog?", "A puppy"),
]
OPENERS = ["Great question! Let me think about this for a moment.", "Well, that is a really interesting thing to ask.",
           "Hmm, I have to say that many people wonder about this.", "Oh, I love questions like this one!",
           "That is a good question, and there is a lot one could say about it."]
HEDGES = ["I believe the answer is {a}, but please double-check it.", "If I remember correctly, it is {a}.",
          "As far as I know, the answer should be {a}, I think.", "It might be {a}, although I am not entirely sure."]
CLOSERS = ["I hope this helps, and let me know if you have any other questions!",
           "Feel free to ask me anything else you are curious about.", "Thanks for asking such a fun question!"]


def sft_examples(rng: random.Random) -> list[dict]:
    rows = []
    for topic, parts in TOPICS.items():
        for subject in parts["subjects"]:
            for action in parts["actions"]:
                rows.append({"messages": [
                    {"role": "user", "content": f"{INSTRUCTION}\n{subject} {action}."},
                    {"role": "assistant", "content": topic},
                ]})
    rng.shuffle(rows)
    return rows


def dpo_examples(rng: random.Random) -> list[dict]:
    rows = []
    for question, answer in FACTS:
        for _ in range(6):
            rambling = " ".join([rng.choice(OPENERS), rng.choice(HEDGES).format(a=answer), rng.choice(CLOSERS)])
            rows.append({"prompt": [{"role": "user", "content": question}],
                         "chosen": [{"role": "assistant", "content": f"{answer}."}],
                         "rejected": [{"role": "assistant", "content": rambling}]})
    rng.shuffle(rows)
    return rows


def write_jsonl(rows: list[dict], path: Path) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    rng = random.Random(SEED)
    write_jsonl(sft_examples(rng), HERE / "demo_sft.jsonl")
    write_jsonl(dpo_examples(rng), HERE / "demo_dpo.jsonl")
    print(f"wrote {HERE / 'demo_sft.jsonl'} and {HERE / 'demo_dpo.jsonl'}")
