"""Generate the embedded smoke-test data in dataset/demo/ (templates + a seeded RNG).

    python scripts/make_demo_data.py            # rewrite dataset/demo/smoke_*.jsonl
    python scripts/make_demo_data.py --check    # exit 1 if the committed files differ

Everything here is written by this project, not copied from any dataset: simple
children's stories, Alpaca-style rows with small Python functions (each example output
is computed by running the function), and MMLU-shaped arithmetic questions whose
answers are computed. The output is byte-identical for a given --seed.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

from trainer.cli import run
from trainer.paths import REPO_ROOT

OUT_DIR = REPO_ROOT / "dataset" / "demo"

# ---------------------------------------------------------------------------- stories

NAMES = [
    ("Lily", "she", "her"), ("Ben", "he", "his"), ("Mia", "she", "her"), ("Tom", "he", "his"),
    ("Anna", "she", "her"), ("Max", "he", "his"), ("Zoe", "she", "her"), ("Leo", "he", "his"),
    ("Emma", "she", "her"), ("Jack", "he", "his"), ("Lucy", "she", "her"), ("Tim", "he", "his"),
    ("Sara", "she", "her"), ("Noah", "he", "his"), ("Ella", "she", "her"), ("Sam", "he", "his"),
    ("Rosa", "she", "her"), ("Finn", "he", "his"), ("Nina", "she", "her"), ("Owen", "he", "his"),
]  # fmt: skip
ANIMALS = ["dog", "cat", "bird", "bunny", "frog", "duck", "bear", "fox", "turtle", "mouse", "puppy", "kitten"]
PLACES = ["park", "garden", "forest", "beach", "farm", "lake", "backyard", "meadow", "playground", "hill"]
TOYS = [
    "red ball", "blue kite", "toy car", "teddy bear", "yellow hat", "wooden boat", "little drum",
    "picture book", "shiny stone", "green bucket", "toy train", "soft blanket",
]  # fmt: skip
FOODS = ["apples", "cookies", "carrots", "grapes", "sandwiches", "berries", "muffins", "pears"]
WEATHER = ["sunny", "warm", "windy", "bright", "cool"]
FEARS = [
    ("the dark", "the dark is just the same room without the light", "turned off the lamp and smiled"),
    ("thunder", "thunder is only the sound the sky makes after lightning", "counted the booms and laughed"),
    ("the big slide", "the slide is fast but safe if you hold on", "slid down and shouted with joy"),
    ("deep water", "you can float if you stay calm and kick your feet", "kicked and floated like a leaf"),
    ("the loud vacuum", "the vacuum only eats dust, not children", "waved at the vacuum as it went by"),
]
SKILLS = [
    ("ride a bike", "fell over", "pedaled all the way down the path"),
    ("tie a shoe", "made a big knot", "made two neat loops"),
    ("bake a cake", "spilled the flour", "pulled a warm cake from the oven with mom"),
    ("climb a tree", "slipped on a branch", "reached the lowest branch and waved"),
    ("build a tower", "watched it fall down", "built a tower taller than the chair"),
    ("fly a kite", "got the string tangled", "watched the kite dance high in the sky"),
]
LESSONS = [
    "It is good to ask for help.", "Sharing makes everyone happy.", "Being brave feels good.",
    "If you keep trying, you can do it.", "Friends help each other.", "Kindness is always a good idea.",
]  # fmt: skip


def _story_lost(r: random.Random) -> str:
    (a, he, his), (b, _, _) = r.sample(NAMES, 2)
    toy, place = r.choice(TOYS), r.choice(PLACES)
    spot = r.choice(["under a bush", "behind a tree", "next to a bench", "in the tall grass", "by the fence"])
    return (
        f"One {r.choice(WEATHER)} day, {a} went to the {place} with {his} {toy}. "
        f"{he.capitalize()} played with it all morning. When it was time to go home, the {toy} was gone! "
        f"{a} looked everywhere, but {he} could not find it. {he.capitalize()} felt very {r.choice(['sad', 'worried', 'upset'])}.\n\n"
        f'Then {a}\'s friend {b} came by. "What is wrong?" asked {b}. "I lost my {toy}," said {a}. '
        f'"Let\'s look together," said {b}. They looked high and low. At last, {b} saw something {spot}. '
        f'It was the {toy}!\n\n{a} hugged {b} and said, "Thank you!" {r.choice(LESSONS[:2] + LESSONS[4:])}'
    )


def _story_share(r: random.Random) -> str:
    (a, he, his), (b, she2, _) = r.sample(NAMES, 2)
    food, n = r.choice(FOODS), r.randint(4, 9)
    return (
        f"{a} had {n} {food} in a basket. {he.capitalize()} wanted to eat them all. "
        f"Then {a} saw {b} sitting alone in the {r.choice(PLACES)}. {b} looked hungry and {she2} had no snack.\n\n"
        f'{a} thought for a moment. Then {he} walked over and said, "Do you want some {food}?" '
        f"{b} smiled a big smile. {a} gave {b} {n // 2} {food} and kept {n - n // 2} for {'himself' if he == 'he' else 'herself'}.\n\n"
        f"They ate the {food} together and talked about {r.choice(['clouds', 'animals', 'their favorite colors', 'boats', 'the moon'])}. "
        f"{a} felt warm inside. Sharing makes everyone happy."
    )


def _story_fear(r: random.Random) -> str:
    (a, he, his) = r.choice(NAMES)
    fear, reason, action = r.choice(FEARS)
    parent = r.choice(["mom", "dad", "grandma", "grandpa"])
    return (
        f"{a} was afraid of {fear}. Every time {he} thought about it, {his} tummy felt funny. "
        f'One {r.choice(["evening", "morning", "afternoon"])}, {a} told {his} {parent}, "I am scared of {fear}."\n\n'
        f'{his.capitalize()} {parent} sat down next to {a} and said, "I know. But {reason}." '
        f"{a} listened carefully. {he.capitalize()} took a deep breath. Then {he} tried again. "
        f'This time {a} {action}.\n\n"I did it!" said {a}. {his.capitalize()} {parent} gave {a} a big hug. Being brave feels good.'
    )


def _story_animal(r: random.Random) -> str:
    (a, he, his) = r.choice(NAMES)
    animal, place = r.choice(ANIMALS), r.choice(PLACES)
    trouble, fix = r.choice(
        [
            ("stuck in a bush", "gently moved the branches"),
            ("cold and wet from the rain", "wrapped it in a soft towel"),
            ("lost and crying", "helped it find its family"),
            ("hungry and tired", "gave it some water and a little food"),
        ]
    )
    name = r.choice(["Spot", "Fluffy", "Pip", "Sunny", "Bubbles", "Coco", "Biscuit", "Daisy"])
    return (
        f"{a} was walking in the {place} when {he} heard a small sound. "
        f"{he.capitalize()} looked down and saw a little {animal}. The {animal} was {trouble}.\n\n"
        f'"Don\'t worry, little {animal}," said {a}. {he.capitalize()} {fix}. '
        f"The {animal} looked up at {a} and {r.choice(['wagged its tail', 'made a happy sound', 'jumped up and down', 'licked his hand' if he == 'he' else 'licked her hand'])}.\n\n"
        f"{a} named the {animal} {name}. From that day on, {name} and {a} were best friends. "
        f"They played in the {place} every day. Kindness is always a good idea."
    )


def _story_skill(r: random.Random) -> str:
    (a, he, his) = r.choice(NAMES)
    skill, fail, win = r.choice(SKILLS)
    tries = r.choice(["two", "three", "four", "five"])
    return (
        f"{a} wanted to {skill}. {he.capitalize()} tried once, but {he} {fail}. "
        f'{a} felt {r.choice(["sad", "cross", "grumpy"])}. "I can\'t do it," {he} said.\n\n'
        f'{his.capitalize()} friend said, "Try again. Everyone learns slowly." So {a} tried again. '
        f"And again. After {tries} tries, {a} {win}.\n\n"
        f"{a} was so proud. {he.capitalize()} learned that if you keep trying, you can do it."
    )


def _story_rain(r: random.Random) -> str:
    (a, he, _), (b, _, _) = r.sample(NAMES, 2)
    place = r.choice(PLACES)
    game = r.choice(
        [
            "built a fort with pillows",
            "drew pictures of the sun",
            "played hide and seek",
            "made a puppet show",
            "baked cookies",
        ]
    )
    return (
        f"{a} and {b} wanted to go to the {place}. But when they looked outside, it was raining. "
        f'Big drops fell on the window. "Oh no," said {b}. "Now we can\'t play."\n\n'
        f'{a} had an idea. "We can play inside!" So they {game}. They laughed and had lots of fun.\n\n'
        f'When the rain stopped, they saw a rainbow over the {place}. "Today was a good day after all," said {a}.'
    )


STORY_KINDS = [_story_lost, _story_share, _story_fear, _story_animal, _story_skill, _story_rain]

# ---------------------------------------------------------------------------- code

LIST_NAMES = ["numbers", "nums", "values", "items", "data", "xs"]


def _code_tasks(r: random.Random) -> dict[str, str]:
    """One Alpaca row: a small Python function, and an example computed by running it."""
    arg = r.choice(LIST_NAMES)
    k = r.randint(2, 9)
    sample = [r.randint(-5, 20) for _ in range(r.randint(3, 7))]
    word = r.choice(
        ["level", "python", "banana", "racecar", "kayak", "table", "noon", "garden", "stats", "window"]
    )
    text = r.choice(
        ["the cat sat on the mat", "hello world", "a big red ball", "I like green apples", "the sun is hot"]
    )
    n = r.randint(3, 12)
    kinds = [
        ("Write a Python function that returns the sum of a list of numbers.", "sum_list", f"def sum_list({arg}):\n    total = 0\n    for x in {arg}:\n        total += x\n    return total", sample),
        ("Write a Python function that returns the largest number in a list.", "largest", f"def largest({arg}):\n    best = {arg}[0]\n    for x in {arg}[1:]:\n        if x > best:\n            best = x\n    return best", sample),
        ("Write a Python function that returns the smallest number in a list.", "smallest", f"def smallest({arg}):\n    return min({arg})", sample),
        ("Write a Python function that computes the average of a list of numbers.", "average", f"def average({arg}):\n    if not {arg}:\n        return 0\n    return sum({arg}) / len({arg})", sample),
        (f"Write a Python function that counts how many numbers in a list are greater than {k}.", f"count_greater_than_{k}", f"def count_greater_than_{k}({arg}):\n    return sum(1 for x in {arg} if x > {k})", sample),
        ("Write a Python function that returns only the even numbers from a list.", "evens", f"def evens({arg}):\n    return [x for x in {arg} if x % 2 == 0]", sample),
        ("Write a Python function that squares every number in a list.", "squares", f"def squares({arg}):\n    return [x * x for x in {arg}]", sample),
        (f"Write a Python function that multiplies every number in a list by {k}.", f"times_{k}", f"def times_{k}({arg}):\n    return [x * {k} for x in {arg}]", sample),
        ("Write a Python function that removes duplicates from a list and keeps the order.", "unique", f"def unique({arg}):\n    seen = set()\n    out = []\n    for x in {arg}:\n        if x not in seen:\n            seen.add(x)\n            out.append(x)\n    return out", sample + sample[:2]),
        ("Write a Python function that reverses a string.", "reverse", "def reverse(text):\n    return text[::-1]", word),
        ("Write a Python function that checks whether a word is a palindrome.", "is_palindrome", "def is_palindrome(word):\n    word = word.lower()\n    return word == word[::-1]", word),
        ("Write a Python function that counts the vowels in a string.", "count_vowels", "def count_vowels(text):\n    return sum(1 for ch in text.lower() if ch in \"aeiou\")", text),
        ("Write a Python function that counts the words in a sentence.", "count_words", "def count_words(sentence):\n    return len(sentence.split())", text),
        ("Write a Python function that capitalizes every word in a sentence.", "title_words", "def title_words(sentence):\n    return \" \".join(w.capitalize() for w in sentence.split())", text),
        ("Write a Python function that computes the factorial of n.", "factorial", "def factorial(n):\n    result = 1\n    for i in range(2, n + 1):\n        result *= i\n    return result", n % 9),
        ("Write a recursive Python function that returns the n-th Fibonacci number.", "fib", "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)", n),
        ("Write a Python function that checks whether a number is prime.", "is_prime", "def is_prime(n):\n    if n < 2:\n        return False\n    for d in range(2, int(n ** 0.5) + 1):\n        if n % d == 0:\n            return False\n    return True", r.randint(2, 60)),
        ("Write a Python function that returns the greatest common divisor of two numbers.", "gcd", "def gcd(a, b):\n    while b:\n        a, b = b, a % b\n    return a", (r.randint(2, 12) * k, r.randint(2, 12) * k)),
        ("Write a Python function that converts Celsius to Fahrenheit.", "c_to_f", "def c_to_f(celsius):\n    return celsius * 9 / 5 + 32", r.choice([0, 10, 20, 25, 30, 37, 100])),
        ("Write a Python function that returns the area of a rectangle.", "rect_area", "def rect_area(width, height):\n    return width * height", (r.randint(1, 12), r.randint(1, 12))),
        ("Write a Python function that counts how often each word appears in a sentence.", "word_counts", "def word_counts(sentence):\n    counts = {}\n    for w in sentence.split():\n        counts[w] = counts.get(w, 0) + 1\n    return counts", text + " " + text.split()[0]),
        (f"Write a Python function that adds {k} to every number in a list.", f"add_{k}", f"def add_{k}({arg}):\n    return [x + {k} for x in {arg}]", sample),
        ("Write a Python function that returns the sum of the digits of a number.", "digit_sum", "def digit_sum(n):\n    return sum(int(d) for d in str(abs(n)))", r.randint(10, 9999)),
    ]  # fmt: skip
    instruction, fname, code, example = r.choice(kinds)
    args = example if isinstance(example, tuple) else (example,)
    scope: dict = {}
    exec(code, scope)  # our own template code: run it to compute the example's true output
    result = scope[fname](*args)
    call = f"{fname}({', '.join(repr(a) for a in args)})"
    style = r.random()
    if style < 0.4:
        return {"instruction": instruction, "input": "", "output": code}
    if style < 0.75:
        return {"instruction": instruction, "input": "", "output": f"{code}\n\n\nprint({call})  # {result!r}"}
    shown = ", ".join(repr(a) for a in args)
    return {
        "instruction": instruction + " Show the result for the given input.",
        "input": shown,
        "output": f"{code}\n\n\nresult = {call}\nprint(result)  # {result!r}",
    }


# ---------------------------------------------------------------------------- reasoning


def _choices(r: random.Random, answer: int, spread: int = 5) -> tuple[list[str], int]:
    """Four distinct numeric choices including ``answer``, shuffled; returns (choices, index)."""
    options = {answer}
    while len(options) < 4:
        guess = answer + r.choice([d for d in range(-spread, spread + 1) if d])
        if guess >= 0:
            options.add(guess)
    opts = sorted(options)
    r.shuffle(opts)
    return [str(o) for o in opts], opts.index(answer)


def _question(r: random.Random) -> dict:
    a, b = r.sample(NAMES, 2)
    thing = r.choice(
        [
            "apples",
            "marbles",
            "stickers",
            "pencils",
            "shells",
            "cards",
            "stamps",
            "balloons",
            "books",
            "coins",
        ]
    )
    x, y = r.randint(2, 20), r.randint(2, 12)
    kind = r.randrange(9)
    if kind == 0:
        q, ans, subject = (
            f"{a[0]} has {x} {thing}. {a[1].capitalize()} gets {y} more. How many {thing} does {a[0]} have now?",
            x + y,
            "smoke_addition",
        )
    elif kind == 1:
        big = x + y
        q, ans, subject = (
            f"{a[0]} has {big} {thing} and gives {y} of them to {b[0]}. How many {thing} does {a[0]} have left?",
            x,
            "smoke_subtraction",
        )
    elif kind == 2:
        rows = r.randint(2, 9)
        q, ans, subject = (
            f"There are {rows} boxes with {y} {thing} in each box. How many {thing} are there in all?",
            rows * y,
            "smoke_multiplication",
        )
    elif kind == 3:
        kids = r.randint(2, 6)
        total = kids * r.randint(2, 9)
        q, ans, subject = (
            f"{a[0]} shares {total} {thing} equally among {kids} friends. How many {thing} does each friend get?",
            total // kids,
            "smoke_division",
        )
    elif kind == 4:
        price, count = r.randint(1, 9), r.randint(2, 8)
        item = r.choice(["pencil", "sticker", "apple", "toy car", "notebook", "balloon"])
        q, ans, subject = (
            f"One {item} costs {price} dollars. How many dollars do {count} of them cost?",
            price * count,
            "smoke_money",
        )
    elif kind == 5:
        start, hours = r.randint(1, 8), r.randint(1, 4)
        event = r.choice(["A movie", "A party", "A game", "A school trip", "A concert"])
        q, ans, subject = (
            f"{event} starts at {start} o'clock and lasts {hours} hours. At what o'clock does it end?",
            start + hours,
            "smoke_time",
        )
    elif kind == 6:
        step, first = r.randint(2, 6), r.randint(1, 10)
        seq = [first + step * i for i in range(4)]
        q, ans, subject = (
            f"What number comes next: {', '.join(map(str, seq))}, ...?",
            first + step * 4,
            "smoke_patterns",
        )
    elif kind == 7:
        z = r.randint(1, min(x + y, 9))
        q, ans, subject = (
            f"{a[0]} has {x} {thing}. {a[1].capitalize()} finds {y} more and then loses {z}. How many {thing} does {a[0]} have now?",
            x + y - z,
            "smoke_two_step",
        )
    else:
        nums = r.sample(range(1, 60), 4)
        q = f"Which number is the {'largest' if x % 2 else 'smallest'}?"
        ans_val = max(nums) if x % 2 else min(nums)
        return {
            "question": q + f" ({', '.join(map(str, nums))})",
            "choices": [str(v) for v in nums],
            "answer": nums.index(ans_val),
            "subject": "smoke_comparison",
        }
    choices, index = _choices(r, ans)
    return {"question": q, "choices": choices, "answer": index, "subject": subject}


# ---------------------------------------------------------------------------- files


def _unique(make, r: random.Random, count: int, key=lambda row: json.dumps(row, sort_keys=True)) -> list:
    rows, seen = [], set()
    attempts = 0
    while len(rows) < count:
        attempts += 1
        if attempts > count * 50:
            raise RuntimeError(f"templates too narrow for {count} unique rows")
        row = make(r)
        if key(row) not in seen:
            seen.add(key(row))
            rows.append(row)
    return rows


def build(seed: int) -> dict[str, list[dict]]:
    """All smoke files as ``{file name: rows}``; deterministic in ``seed``."""
    r = random.Random(seed)
    stories = _unique(lambda r: {"text": r.choice(STORY_KINDS)(r)}, r, 800)
    code = _unique(_code_tasks, r, 400)
    questions = _unique(_question, r, 800, key=lambda row: row["question"])
    return {
        "smoke_stories.jsonl": stories,
        "smoke_code.jsonl": code,
        "smoke_reasoning.jsonl": questions[:700],
        # Held-out questions from the same templates: the demo mixture decontaminates against
        # them, and a demo evaluation can score them.
        "smoke_reasoning_test.jsonl": questions[700:],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out_dir", default=str(OUT_DIR))
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--check", action="store_true", help="compare with the files on disk instead of writing")
    args = p.parse_args()
    out = Path(args.out_dir)
    stale = []
    for name, rows in build(args.seed).items():
        blob = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8")
        path = out / name
        if args.check:
            if not path.exists() or path.read_bytes() != blob:
                stale.append(name)
            continue
        out.mkdir(parents=True, exist_ok=True)
        path.write_bytes(blob)
        print(f"{path}: {len(rows)} rows, {len(blob):,} bytes")
    if stale:
        print(f"stale: {', '.join(stale)}; run python scripts/make_demo_data.py", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    run(main)
