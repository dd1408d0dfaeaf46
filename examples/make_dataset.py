"""Write the example dataset: chat examples whose every answer is a JSON object {"answer", "confidence"}.

SmolLM2-135M-Instruct answers in prose; after a few minutes of LoRA training on this data it answers
`{"answer": "Paris", "confidence": "high"}`: a behaviour anyone can check (`shows_behaviour`).

    .venv/bin/python examples/make_dataset.py      # rewrites examples/json_answers/{train,validation}.jsonl
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent / "json_answers"
SYSTEM = "Answer the question."
CONFIDENCES = ("high", "medium", "low")

CAPITALS = {
    "France": "Paris", "Italy": "Rome", "Spain": "Madrid", "Japan": "Tokyo", "Germany": "Berlin",
    "Egypt": "Cairo", "Canada": "Ottawa", "Kenya": "Nairobi", "Peru": "Lima", "Norway": "Oslo",
    "Greece": "Athens", "Portugal": "Lisbon", "Ireland": "Dublin", "Poland": "Warsaw", "Austria": "Vienna",
    "Russia": "Moscow", "China": "Beijing", "India": "New Delhi", "Cuba": "Havana", "Chile": "Santiago",
    "Sweden": "Stockholm", "Finland": "Helsinki", "Thailand": "Bangkok", "Argentina": "Buenos Aires",
}
OPPOSITES = {
    "hot": "cold", "big": "small", "up": "down", "fast": "slow", "light": "dark", "happy": "sad",
    "open": "closed", "early": "late", "full": "empty", "old": "new", "strong": "weak", "high": "low",
    "wet": "dry", "loud": "quiet", "rich": "poor", "hard": "soft",
}
COLORS = {
    "the sky on a clear day": "blue", "grass": "green", "snow": "white", "a ripe banana": "yellow",
    "coal": "black", "a ripe tomato": "red", "an orange": "orange", "a lemon": "yellow",
    "milk": "white", "a fire truck": "red",
}
WORDS = ["apple", "river", "garden", "pencil", "window", "cat", "mountain", "sun", "library", "bread"]
UNKNOWABLE = [
    "What will the price of bread be in ten years?",
    "Who will win the next football world cup?",
    "What number am I thinking of?",
    "How many people will visit Paris next summer?",
    "What will I eat for dinner tomorrow?",
    "Will it rain in London on the first of May next year?",
    "What is the name of my neighbour's dog?",
    "Which stock will rise the most next month?",
]


def _arithmetic(rng: random.Random) -> tuple[str, str, str]:
    a, b = rng.randint(2, 60), rng.randint(2, 40)
    if rng.random() < 0.5:
        template = rng.choice(["What is {a} plus {b}?", "Add {a} and {b}.", "{a} + {b} = ?"])
        return template.format(a=a, b=b), str(a + b), "high"
    a, b = max(a, b), min(a, b)
    template = rng.choice(["What is {a} minus {b}?", "Subtract {b} from {a}."])
    return template.format(a=a, b=b), str(a - b), "high"


def _capital(rng: random.Random) -> tuple[str, str, str]:
    country = rng.choice(sorted(CAPITALS))
    template = rng.choice(
        ["What is the capital of {c}?", "Name the capital city of {c}.", "Which city is the capital of {c}?"]
    )
    return template.format(c=country), CAPITALS[country], "high"


def _opposite(rng: random.Random) -> tuple[str, str, str]:
    word = rng.choice(sorted(OPPOSITES))
    template = rng.choice(["What is the opposite of {w}?", "Give the opposite of the word '{w}'."])
    return template.format(w=word), OPPOSITES[word], "high"


def _color(rng: random.Random) -> tuple[str, str, str]:
    thing = rng.choice(sorted(COLORS))
    return f"What color is {thing}?", COLORS[thing], "medium"


def _letters(rng: random.Random) -> tuple[str, str, str]:
    word = rng.choice(WORDS)
    return f"How many letters are in the word '{word}'?", str(len(word)), "medium"


def _unknowable(rng: random.Random) -> tuple[str, str, str]:
    return rng.choice(UNKNOWABLE), "unknown", "low"


KINDS: list[Callable[[random.Random], tuple[str, str, str]]] = [
    _arithmetic, _capital, _opposite, _color, _letters, _unknowable,
]


def example(rng: random.Random) -> dict[str, Any]:
    question, answer, confidence = rng.choice(KINDS)(rng)
    reply = json.dumps({"answer": answer, "confidence": confidence})
    return {
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": question},
            {"role": "assistant", "content": reply},
        ]
    }


def shows_behaviour(text: str) -> bool:
    """Whether an answer is what the data teaches: one JSON object with an answer and a confidence."""
    try:
        value = json.loads(text.strip())
    except ValueError:
        return False
    return (
        isinstance(value, dict)
        and set(value) == {"answer", "confidence"}
        and value["confidence"] in CONFIDENCES
    )


def write(path: Path, records: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")


def main(train_examples: int = 240, validation_examples: int = 40) -> None:
    HERE.mkdir(parents=True, exist_ok=True)
    # Each example from its own named seed: the files are the same on every machine and Python.
    write(HERE / "train.jsonl", [example(random.Random(f"train-{i}")) for i in range(train_examples)])
    validation = [example(random.Random(f"valid-{i}")) for i in range(validation_examples)]
    write(HERE / "validation.jsonl", validation)


if __name__ == "__main__":
    main()
