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
        "subjects": [
            "The striker",
            "The goalkeeper",
            "Our captain",
            "The young sprinter",
            "The home team",
            "The tennis champion",
            "The coach",
            "The defender",
            "The cyclist",
            "The rowing crew",
        ],
        "actions": [
            "scored in the last minute of the match",
            "won the final after extra time",
            "trained twice a day before the tournament",
            "broke the league record for goals",
            "missed a penalty in the semi-final",
            "sprinted past three defenders",
            "lifted the trophy in front of the fans",
            "was sent off for a hard tackle",
            "finished the marathon in under three hours",
            "served an ace to win the set",
        ],
    },
    "science": {
        "subjects": [
            "The researchers",
            "A chemist",
            "The physicist",
            "Our biology lab",
            "The astronomer",
            "A team of geologists",
            "The microbiologist",
            "The climate scientists",
            "An engineer",
            "The lab assistant",
        ],
        "actions": [
            "measured the mass of a new particle",
            "observed light from a distant galaxy",
            "sequenced the genome of a rare bacterium",
            "published the results of the experiment",
            "tested the hypothesis with a controlled trial",
            "analysed rock samples from the crater",
            "cooled the sample close to absolute zero",
            "recorded the reaction rate of the enzyme",
            "calibrated the microscope before the experiment",
            "modelled the orbit of the comet",
        ],
    },
    "food": {
        "subjects": [
            "The baker",
            "My grandmother",
            "The chef",
            "Our neighbour",
            "The pastry cook",
            "The street vendor",
            "The waiter",
            "My brother",
            "The cheesemaker",
            "The restaurant",
        ],
        "actions": [
            "kneaded the dough and let it rise",
            "simmered the tomato sauce for hours",
            "grilled the fish with lemon and garlic",
            "served a bowl of spicy noodle soup",
            "baked a chocolate cake for dessert",
            "seasoned the roast with rosemary",
            "fried the onions until golden",
            "whisked the eggs for an omelette",
            "sliced fresh bread for the sandwiches",
            "marinated the chicken overnight",
        ],
    },
    "music": {
        "subjects": [
            "The band",
            "The violinist",
            "Our choir",
            "The drummer",
            "The orchestra",
            "The singer",
            "The pianist",
            "The jazz trio",
            "The guitarist",
            "The composer",
        ],
        "actions": [
            "played a slow ballad on stage",
            "tuned the strings before the concert",
            "recorded a new album in the studio",
            "sang the chorus in perfect harmony",
            "kept the rhythm with a steady beat",
            "performed a symphony by Beethoven",
            "improvised a solo in the second verse",
            "rehearsed the melody all afternoon",
            "wrote a song about the summer",
            "released a single on the radio",
        ],
    },
}
INSTRUCTION = "Which topic is this sentence about? Answer with one word: sport, science, food or music."

FACTS = [  # none of them a retention question (or a near copy of one): a test checks it
    ("What is the main ingredient of guacamole?", "Avocado"),
    ("Which tool do you use to hit a nail?", "A hammer"),
    ("What do you wear on your feet in bed to keep warm?", "Socks"),
    ("What do you call the room where food is cooked?", "The kitchen"),
    ("Which fruit is used to make raisins?", "Grapes"),
    ("What do you call a house made of snow blocks?", "An igloo"),
    ("Which metal is used for most soft drink cans?", "Aluminium"),
    ("Which sport uses a shuttlecock?", "Badminton"),
    ("How many players are on a volleyball team on court?", "Six"),
    ("What do you call a person who repairs water pipes?", "A plumber"),
    ("What is the outer layer of a tree called?", "Bark"),
    ("Which vegetable makes people cry when they cut it?", "An onion"),
    ("What do you call the flat land at the bottom of a valley with a river?", "A floodplain"),
    ("What is the hard covering of an egg called?", "The shell"),
    ("What do you call the number of years a person has lived?", "Their age"),
    ("What is the name for a book of maps?", "An atlas"),
    ("Which bird is a symbol of peace?", "The dove"),
    ("Which animal is known for carrying its house on its back?", "A snail"),
    ("What is the frozen form of rain called when it falls as balls?", "Hail"),
    ("What do you call the middle of an apple with the seeds?", "The core"),
    ("Which game has pieces called rooks and bishops?", "Chess"),
    ("What do bakers use to make bread rise?", "Yeast"),
    ("What do you call a shape with eight sides?", "An octagon"),
    ("What is the name of the line around the middle of the Earth?", "The equator"),
    ("What does a thermometer measure?", "Temperature"),
    ("What do you call the person who leads an orchestra?", "The conductor"),
    ("Which fuel do most cars use?", "Petrol"),
    ("What do you call water falling from a cliff in a river?", "A waterfall"),
    ("Which drink is made from roasted beans and often drunk in the morning?", "Coffee"),
    ("What do you call frozen dew on grass on a cold morning?", "Frost"),
    ("What do you call a very large wave caused by an earthquake under the sea?", "A tsunami"),
    ("Which insect glows at night?", "A firefly"),
    ("What do you call the time when the sun goes down?", "Sunset"),
    ("What is the opposite direction to north?", "South"),
    ("What do you call the person who cuts hair?", "A hairdresser"),
    ("Which vehicle runs on rails?", "A train"),
    ("What do you call a boat that travels under the water?", "A submarine"),
    ("Which kitchen tool do you use to flip pancakes?", "A spatula"),
    ("What do you call the small lines of ice hanging from a roof in winter?", "Icicles"),
    ("Which sport do you play with a round orange ball and a hoop?", "Basketball"),
    ("What is the name of the sweet made from cocoa?", "Chocolate"),
    ("What do you call a person who grows crops and keeps animals?", "A farmer"),
    ("Which game do you play with a cue and coloured balls?", "Snooker"),
    ("What do you call the glass part of a window?", "The pane"),
    ("What is the name of the white grain eaten with curry?", "Rice"),
    ("What do you call the place where planes take off and land?", "An airport"),
    ("Which tool do you use to dig a hole in the garden?", "A spade"),
    ("What do you call the coloured arc in the sky after rain?", "A rainbow"),
    ("Which bird is known for repeating human words?", "A parrot"),
    ("What do you call the person who delivers letters?", "A postman"),
]
OPENERS = [
    "Great question! Let me think about this for a moment.",
    "Well, that is a really interesting thing to ask.",
    "Hmm, I have to say that many people wonder about this.",
    "Oh, I love questions like this one!",
    "That is a good question, and there is a lot one could say about it.",
]
HEDGES = [
    "I believe the answer is {a}, but please double-check it.",
    "If I remember correctly, it is {a}.",
    "As far as I know, the answer should be {a}, I think.",
    "It might be {a}, although I am not entirely sure.",
]
CLOSERS = [
    "I hope this helps, and let me know if you have any other questions!",
    "Feel free to ask me anything else you are curious about.",
    "Thanks for asking such a fun question!",
]


def sft_examples(rng: random.Random) -> list[dict]:
    rows = []
    for topic, parts in TOPICS.items():
        for subject in parts["subjects"]:
            for action in parts["actions"]:
                rows.append(
                    {
                        "messages": [
                            {"role": "user", "content": f"{INSTRUCTION}\n{subject} {action}."},
                            {"role": "assistant", "content": topic},
                        ]
                    }
                )
    rng.shuffle(rows)
    return rows


def dpo_examples(rng: random.Random) -> list[dict]:
    rows = []
    for question, answer in FACTS:
        for _ in range(6):
            rambling = " ".join([rng.choice(OPENERS), rng.choice(HEDGES).format(a=answer), rng.choice(CLOSERS)])
            rows.append(
                {
                    "prompt": [{"role": "user", "content": question}],
                    "chosen": [{"role": "assistant", "content": f"{answer}."}],
                    "rejected": [{"role": "assistant", "content": rambling}],
                }
            )
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
