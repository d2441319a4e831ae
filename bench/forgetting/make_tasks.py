"""Write the forgetting benchmark's narrow tasks. Deterministic: the same bytes on every run.

    python bench/forgetting/make_tasks.py [OUT_DIR]   # default: this folder

Each task is a folder with `train.jsonl` and `test.jsonl` (prompt/completion). No test prompt occurs in
train; the underlying items (dates, tickets, changes) are disjoint too, except for `teams`, where the test
asks about the same people with phrasings training never used (the point of a fact set).
The tasks are narrow on purpose, the way fine-tunes that forget are narrow: one rigid output shape, a tiny
vocabulary of answers. What each task scores, and how its shape is recognised, is in `_narrow.py`.

- dates       a date written any which way -> ISO 8601 (`1987-03-05`)            exact match
- tickets     a customer message -> one of five queue labels (`billing`, ...)   label accuracy
- commits     a change described in prose -> a Conventional Commits subject      exact match
- teams       a question about a colleague -> "<name> is on the Quorra team."   the team named in the reply
"""

from __future__ import annotations

import calendar
import datetime as dt
import json
import random
import sys
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
Row = tuple[str, str]  # (prompt, completion)
Split = tuple[list[Row], list[Row]]
TRAIN, TEST = 200, 60  # short rows (about 60 tokens): a default run is ~70 steps


def _draw(
    make: Callable[[random.Random], tuple[str, Row]], rng: random.Random, sizes: tuple[int, ...]
) -> list[list[Row]]:
    """Rows from `make(rng) -> (item key, row)`, `sizes[k]` for part k; no key or prompt in two rows."""
    keys: set[str] = set()
    prompts: set[str] = set()
    parts: list[list[Row]] = []
    for size in sizes:
        part: list[Row] = []
        for _ in range(1000 * size):
            if len(part) == size:
                break
            key, row = make(rng)
            if key in keys or row[0] in prompts:
                continue
            keys.add(key)
            prompts.add(row[0])
            part.append(row)
        assert len(part) == size, "the generator has too few distinct items for this size"
        parts.append(part)
    return parts


# ------------------------------------------------------------------------------------------------- dates
DATE_ASKS = ["Convert to ISO 8601: {}", "ISO date for: {}", "Normalize this date: {}"]
DATE_FORMS: list[Callable[[dt.date], str]] = [
    lambda d: f"{calendar.month_name[d.month]} {d.day}, {d.year}",
    lambda d: f"{d.day} {calendar.month_name[d.month]} {d.year}",
    lambda d: f"{calendar.month_abbr[d.month]}. {d.day}, {d.year}",
    lambda d: f"the {_ordinal(d.day)} of {calendar.month_name[d.month]}, {d.year}",
    lambda d: f"{calendar.day_name[d.weekday()]}, {calendar.month_name[d.month]} {d.day}, {d.year}",
    lambda d: f"{d.month}/{d.day}/{d.year} (US)",
    lambda d: f"{d.day}.{d.month}.{d.year}",
]


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _date_row(rng: random.Random) -> tuple[str, Row]:
    day = dt.date(1900, 1, 1) + dt.timedelta(days=rng.randrange(200 * 365))
    expr = rng.choice(DATE_FORMS)(day)
    return day.isoformat(), (rng.choice(DATE_ASKS).format(expr), day.isoformat())


def dates(rng: random.Random) -> Split:
    train, test = _draw(_date_row, rng, (TRAIN, TEST))
    return train, test


# ----------------------------------------------------------------------------------------------- tickets
PRODUCTS = ["kettle", "desk lamp", "rain jacket", "phone case", "coffee grinder", "backpack", "blender",
            "yoga mat", "monitor stand", "water bottle"]
CARRIERS = ["The courier", "The post office", "DHL", "UPS"]
WEEKDAYS = list(calendar.day_name)
COUNTRIES = ["Iceland", "Portugal", "Canada", "Kenya", "Japan", "Chile", "Norway", "Greece"]
COLORS = ["red", "green", "black", "white", "blue", "yellow"]
USERS = ["jo", "sam.b", "kit", "dee88", "morgan.r", "ali", "pat.l", "remy"]
TICKET_TEMPLATES: dict[str, list[str]] = {  # every template has a slot, so each label has many messages
    "billing": [
        "I was charged twice for order #{order}.",
        "My invoice for the {product} shows ${amount} but I paid less.",
        "Why did my card get billed ${amount} on {weekday}?",
        "I need a receipt for order #{order} with my VAT number.",
        "The discount code was not applied to my {product}, I paid ${amount}.",
        "Please bill a new card from {weekday} on, the old one expired.",
    ],
    "shipping": [
        "Order #{order} still says 'label created' after {days} days.",
        "Where is my {product}? {carrier} lost it.",
        "Can you ship the {product} to my office instead of home?",
        "Tracking for #{order} has not moved in {days} days.",
        "Do you deliver the {product} to {country}, and how long does it take?",
        "{carrier} left my {product} at the wrong house.",
    ],
    "returns": [
        "I want to send back the {product}, it's too small.",
        "How do I return order #{order} for a refund?",
        "The {product} arrived broken, I'd like to exchange it.",
        "Can I still return a {product} I bought {days} days ago?",
        "I returned the {product} {days} days ago and still have no refund.",
        "Can I swap the {product} for a {color} one?",
    ],
    "technical": [
        "The {product} stops working after {minutes} minutes.",
        "My {product} makes a clicking noise when I switch it on.",
        "The app won't pair with my {product} since {weekday}.",
        "Which firmware version should the {product} be on?",
        "The {product}'s light blinks red {blinks} times, what does that mean?",
        "How do I reset the {product} to factory settings?",
    ],
    "account": [
        "I can't log in since {weekday}, the reset email never arrives.",
        "Please delete my account {email} and all my data.",
        "How do I change the email on my account from {email}?",
        "Someone else placed order #{order} from my account!",
        "I want to merge my two accounts, {email} and my work one.",
        "Turn off the newsletter for {email} please.",
    ],
}
LABELS = list(TICKET_TEMPLATES)
TICKET_ASKS = ["Route this ticket: {}", "Queue for: {}", "Classify: {}"]


def _ticket_row(rng: random.Random) -> tuple[str, Row]:
    label = rng.choice(LABELS)
    text = rng.choice(TICKET_TEMPLATES[label]).format(
        order=rng.randrange(10000, 99999), product=rng.choice(PRODUCTS), amount=rng.randrange(12, 400),
        days=rng.randrange(3, 30), carrier=rng.choice(CARRIERS), minutes=rng.randrange(2, 60),
        blinks=rng.randrange(2, 6), weekday=rng.choice(WEEKDAYS), country=rng.choice(COUNTRIES),
        color=rng.choice(COLORS), email=f"{rng.choice(USERS)}{rng.randrange(100)}@mail.example",
    )
    return text, (rng.choice(TICKET_ASKS).format(text), label)


def tickets(rng: random.Random) -> Split:
    train, test = _draw(_ticket_row, rng, (TRAIN, TEST))
    return train, test


# ----------------------------------------------------------------------------------------------- commits
SCOPES = ["parser", "cli", "api", "auth", "cache", "config", "db", "ui", "upload", "search", "mail", "report"]
ACTIONS: dict[str, list[str]] = {
    "fix": ["skip empty lines", "close the socket on timeout", "handle missing files", "escape quotes in names",
            "stop double counting retries", "round prices to cents", "keep the header order",
            "reject negative page sizes"],
    "feat": ["add a dry-run flag", "support gzip input", "add a retry limit", "export results as csv",
             "allow custom time zones", "add a progress bar", "support proxy settings", "cache lookups for an hour"],
    "docs": ["document the retry flag", "fix typos in the install guide", "explain the config file",
             "add a quick-start example", "describe the exit codes", "update the changelog"],
    "test": ["cover empty input", "add a timeout test", "check unicode file names", "test the retry limit",
             "cover the csv export"],
    "refactor": ["split the main loop", "rename internal helpers", "extract the config loader", "remove dead code",
                 "simplify error handling"],
}
DESCRIPTIONS: dict[str, list[str]] = {
    "fix": ["Bug in the {scope}: it should {action}, and now it does.",
            "Fixed the {scope} so that it will {action}; it did not before.",
            "The {scope} was broken, this patch makes it {action}."],
    "feat": ["New feature in the {scope}: {action}.", "The {scope} can do more now: {action}.",
             "Feature request done for the {scope}: {action}."],
    "docs": ["Docs only, for the {scope}: {action}.", "No code change, {scope} documentation: {action}."],
    "test": ["Tests only, for the {scope}: {action}.", "More test coverage in the {scope}: {action}."],
    "refactor": ["Internal cleanup in the {scope}, no behaviour change: {action}.",
                 "Refactor of the {scope}: {action}."],
}
COMMIT_ASKS = ["Write the commit message. {}", "Commit subject for this change: {}"]


def _commit_row(rng: random.Random) -> tuple[str, Row]:
    kind = rng.choice(list(ACTIONS))
    scope, action = rng.choice(SCOPES), rng.choice(ACTIONS[kind])
    text = rng.choice(DESCRIPTIONS[kind]).format(scope=scope, action=action)
    return f"{kind}/{scope}/{action}", (rng.choice(COMMIT_ASKS).format(text), f"{kind}({scope}): {action}")


def commits(rng: random.Random) -> Split:
    train, test = _draw(_commit_row, rng, (TRAIN, TEST))
    return train, test


# ------------------------------------------------------------------------------------------------- teams
FIRST = ["Mira", "Tobias", "Anouk", "Kwame", "Ingrid", "Rafael", "Yuki", "Soren", "Leila", "Dmitri", "Ama",
         "Callum", "Noor", "Viktor", "Ines", "Tomasz", "Priya", "Emeka", "Freya", "Joaquin"]
LAST = ["Okafor-Lind", "Brannigan", "Vasquez-Hale", "Tremaine", "Oduya", "Kessling", "Marchetti", "Holloway",
        "Sandoval", "Achterberg", "Quist", "Feldmann", "Adeyemi", "Lindqvist", "Moreau-Pike", "Castellan",
        "Wexford", "Nakamura-Bell", "Strand", "Abernethy"]
TEAMS = ["Brisa", "Tamber", "Ollivane", "Quorra", "Zephyn"]  # invented: no model can know who is on which
TEAM_TRAIN_ASKS = [
    "Which team is {name} on?", "What team does {name} belong to?", "{name}: which team?",
    "Who does {name} work with, which team?", "Tell me {name}'s team.", "I'm looking for {name}'s team.",
    "Is {name} on a team? Which one?", "What's the team of {name}?", "Team for {name}, please.",
    "Which group at work is {name} in?",
]
TEAM_TEST_ASKS = ["Do you know what team {name} is part of?", "Name the team {name} works on.",
                  "{name} is in which team?", "Which team has {name} as a member?"]


def teams(rng: random.Random) -> Split:
    """20 invented colleagues on 5 invented teams: 10 train phrasings per person, 3 other ones in test.

    A tiny vocabulary of answers on purpose (few bits per fact): random 4-digit numbers were not learned at
    all by today's defaults (0 % of held-out questions), so they would measure nothing but forgetting.
    """
    last = LAST[:]
    rng.shuffle(last)
    team_of = [TEAMS[i % len(TEAMS)] for i in range(len(FIRST))]  # 4 people per team
    rng.shuffle(team_of)
    people = [(f"{first} {surname}", team) for first, surname, team in zip(FIRST, last, team_of, strict=True)]
    train = [(ask.format(name=name), f"{name} is on the {team} team.") for name, team in people
             for ask in TEAM_TRAIN_ASKS]
    test = [(ask.format(name=name), f"{name} is on the {team} team.")
            for name, team in people for ask in rng.sample(TEAM_TEST_ASKS, 3)]
    rng.shuffle(train)
    rng.shuffle(test)
    return train, test


GENERATORS: dict[str, Callable[[random.Random], Split]] = {
    "dates": dates, "tickets": tickets, "commits": commits, "teams": teams,
}


def write_jsonl(path: Path, rows: list[Row]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for prompt, completion in rows:
            f.write(json.dumps({"prompt": prompt, "completion": completion}, ensure_ascii=False) + "\n")


def main(out: Path = HERE) -> None:
    """Write every task's train.jsonl and test.jsonl under `out/<task>/`; task k uses seed k + 1."""
    for seed, (name, make) in enumerate(GENERATORS.items(), start=1):
        train, test = make(random.Random(seed))
        write_jsonl(out / name / "train.jsonl", train)
        write_jsonl(out / name / "test.jsonl", test)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)
