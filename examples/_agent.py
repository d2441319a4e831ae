"""Tool-calling conversations of Kettlebird's support desk (the tools of `agent_desk.py`).

Every tool result in a conversation is what the real tool returns on the shop database, so a model trained
on these rows and run by `agent.py` sees the same kind of results. The rows mix:
- calls: order status, returns (with a reason to classify), warranty by serial number, warranty by order
  (two chained calls: the serial number comes from the order), and two-turn chats that ask for a missing
  number first;
- rows that need no call: general questions from the support FAQ (returns, warranty and shipping policy
  among them) and requests that lack the order or serial number, answered by asking for it.
Train and held-out rows use disjoint orders, so the held-out split asks about numbers never seen in training.
"""

from __future__ import annotations

import json
import random
import re
import sqlite3
from collections.abc import Callable
from datetime import date
from typing import Any

from _distinct import Distinct
from _support import INTENTS, PREFIXES, _slots
from agent_desk import REASONS, TOOLS, call, orders_by

Row = dict[str, Any]
SYSTEM = "You are Kettlebird's support assistant."

STATUS_Q = ["Where is my order {order}?", "Has {order} shipped yet?", "Can you check the status of order {order}?",
            "Order {order}: when will it arrive?", "I ordered a kettle, order number {order}. Any news?",
            "Status of {order} please.", "My order is {order}, where is it?", "Could you track {order} for me?",
            "Was order {order} delivered?", "What's happening with {order}?", "Any update on {order}?",
            "Is {order} on its way?"]
RETURN_Q = ["I want to return order {order}, {cue}.", "Please start a return for {order}: {cue}.",
            "Can I send back {order}? {Cue}.", "{Cue}. It's order {order}, I'd like to return it.",
            "Return request for {order}, {cue}.", "I'd like a refund for {order} because {cue}.",
            "Order {order}: {cue}. Can you set up a return?"]
CUES = {
    "faulty": ["it stopped working", "it won't heat up anymore", "it keeps showing E2", "the switch is broken",
               "it leaks from the bottom", "it turns itself off before boiling"],
    "damaged": ["it arrived with a dented side", "the lid was cracked in the box", "it was damaged in delivery",
                "the parcel was crushed and the kettle is scratched"],
    "wrong_item": ["you sent me a Mini instead of a Pro", "I got the wrong model", "it's not the kettle I ordered",
                   "the box had a different kettle in it"],
    "changed_mind": ["I changed my mind", "I don't need it anymore", "I found one I like better",
                     "it was a gift nobody wanted"],
}
SERIAL_Q = ["Is my kettle {serial} still under warranty?", "Warranty check for serial {serial}, please.",
            "My kettle's serial is {serial}. Is it covered?", "{serial}: is this one still in warranty?",
            "The sticker under my kettle says {serial}. Am I covered?", "How long is the warranty on {serial}?"]
BY_ORDER_Q = ["Is the kettle from order {order} still under warranty?",
              "Order {order}: is my kettle still covered by the warranty?",
              "I bought a kettle with order {order}. Is the warranty still valid?",
              "Warranty status for the kettle in {order}?"]
MISSING = [  # (questions, reply asking for the number, what the number is for)
    (["Where is my order?", "Has my kettle shipped?", "Can you track my order?", "When will my kettle arrive?",
      "My parcel hasn't arrived yet.", "I haven't received my kettle.", "Where's my kettle?",
      "Is my order on its way?", "Can you check on my delivery?", "How long until my order gets here?"],
     ["What's your order number?", "Could you give me your order number?", "Which order is it?"], "status"),
    (["I want to return my kettle, {cue}.", "Can I return my kettle? {Cue}.", "Please start a return, {cue}.",
      "I'd like to send my kettle back, {cue}.", "I need to return a kettle: {cue}.",
      "Can you set up a return for me? {Cue}."],
     ["What's the order number?", "Which order is the kettle from?", "Could you tell me the order number?"],
     "return"),
    (["Is my kettle still under warranty?", "Can you check my warranty?", "Is my kettle covered?",
      "My kettle broke, is it still under guarantee?", "Warranty check, please.", "Am I still covered?",
      "Does the warranty still cover my kettle?", "How much warranty is left on my kettle?"],
     ["What's the kettle's serial number?", "Could you give me the serial number?", "Which serial number is it?"],
     "warranty"),
]
ACKS = ["I can check that for you.", "Happy to help with that.", "Sure, let me look into it.", "Of course.",
        "I can help with that."]
# No made-up example numbers: a model shown "KB-123456" learns to call tools with it when the number is missing.
HINTS = {"KB": ["It starts with KB- and is in your confirmation email.", "You'll find it in your confirmation "
                "email.", "It's in the confirmation email and starts with KB-."],
         "KS": ["It's on the sticker under the base and starts with KS-.", "Look under the base: it's on the "
                "sticker.", "You'll find it on the sticker under the base."]}


def _ask_number(question: str, asks: list[str], kind: str) -> str:
    """The reply to a request that lacks its order or serial number: ask for it, and say where it is. The
    wording is chosen by the question, so a question asked twice gets the same reply (no conflicting rows)."""
    pick = random.Random(question)
    return f"{pick.choice(ACKS)} {pick.choice(asks)} {pick.choice(HINTS['KS' if kind == 'warranty' else 'KB'])}"

GIVE_NUMBER = ["It's {n}.", "{n}", "The number is {n}.", "Sure, {n}.", "Here it is: {n}"]
SMALL_TALK = [("Hello!", "Hello! How can I help you today?"),
              ("Thanks, that's all.", "You're welcome! Have a nice day."),
              ("Thank you so much!", "Happy to help! Enjoy your tea."), ("Hi there", "Hi! What can I do for you?"),
              ("ok great, thanks", "Glad I could help!"), ("Good morning", "Good morning! How can I help?"),
              ("Are you a bot?", "I'm Kettlebird's support assistant. How can I help?"),
              ("Bye!", "Goodbye, and happy brewing!"), ("You've been very helpful.", "Thank you! Glad I could help."),
              ("Can I talk to a human?", "Of course: live chat is open Monday to Saturday, 8:00–20:00 CET.")]
NO_CALL_INTENTS = [i for i in INTENTS if not any("{order}" in a for a in i["a"])]


def make(rng: random.Random, db: sqlite3.Connection, count: int, orders: list[sqlite3.Row],
         distinct: Distinct | None = None, mix: list[tuple[Maker, int]] | None = None) -> list[Row]:
    """`count` rows about `orders` (each used once at most), types mixed as in `mix` (default `MIX`), none a
    near duplicate of another or of a row `distinct` already holds (pass the training rows' to keep a held-out
    split apart)."""
    pool = list(orders)
    rng.shuffle(pool)
    makers = [maker for maker, weight in (mix or MIX) for _ in range(weight)]
    rows: list[Row] = []
    distinct = distinct if distinct is not None else Distinct()
    tries = 0
    while len(rows) < count:
        tries += 1
        assert tries < 50 * count, "cannot find enough distinct rows"
        row = makers[tries % len(makers)](rng, db, pool)
        if distinct.add([{**m, "content": m["content"] or ""} for m in row["messages"]]):
            rows.append(row)
    return rows


def _chat(*turns: dict[str, Any]) -> Row:
    return {"messages": [{"role": "system", "content": SYSTEM}, *turns]}


def _user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def _say(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": text}


def _ask(rng: random.Random, template: str, **slots: str) -> str:
    cue = slots.get("cue", "")
    text = template.format(**slots, Cue=cue[:1].upper() + cue[1:])
    prefix = rng.choice(PREFIXES)
    return prefix + (text[0].lower() + text[1:] if prefix.endswith(", ") and text[1:2].islower() else text)


def _tool_turns(db: sqlite3.Connection, k: int, name: str, args: dict[str, Any]) -> tuple[list[dict], dict]:
    """An assistant call and its tool result (the real tool's output); also the result, parsed."""
    cid = f"call_{k}"
    result = call(db, name, args)
    return [{"role": "assistant", "content": None, "tool_calls": [
        {"id": cid, "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}]},
        {"role": "tool", "tool_call_id": cid, "content": result}], json.loads(result)


def _day(iso: str) -> str:
    d = date.fromisoformat(iso)
    return f"{d.day} {d.strftime('%B')} {d.year}"


def status_answer(r: dict[str, Any]) -> str:
    if "error" in r:
        return f"I can't find order {r['error'].split()[-1]}. Could you check the number in your confirmation email?"
    if r["status"] == "delivered":
        return f"Order {r['order_id']} ({r['product']}) was delivered on {_day(r['delivered'])}."
    if r["status"] == "shipped":
        return f"Order {r['order_id']} ({r['product']}) is on its way and should arrive by {_day(r['eta'])}."
    return f"Order {r['order_id']} ({r['product']}) is being packed and will ship within one business day."


def return_answer(r: dict[str, Any]) -> str:
    if "error" in r:
        text = r["error"]
        if "not been delivered" in text:
            return ("That order hasn't been delivered yet, so it can't be returned. Refuse the parcel and we'll "
                    "refund you.")
        if "window has closed" in text:
            day = _day(re.search(r"\d{4}-\d\d-\d\d", text).group())
            return (f"That order was delivered on {day}, so the 45-day return window has closed. A faulty kettle is "
                    "still covered by its warranty.")
        if "no order" in text:
            return status_answer(r)
        return f"A return is already open for that order: {text.split()[1]}."
    label = "free" if r["label_cost"] == 0 else f"${r['label_cost']}"
    return (f"I've opened return {r['return_id']} for order {r['order_id']}. The return label is {label}, and "
            f"your ${r['refund']} refund follows within 5 business days of the kettle reaching us.")


def warranty_answer(r: dict[str, Any]) -> str:
    if "error" in r:
        return (f"I can't find a kettle with serial number {r['error'].split()[-1]}. It's on the sticker under "
                "the base; could you check it?")
    if r["covered"]:
        return f"Yes, your {r['product']} ({r['serial_number']}) is under warranty until {_day(r['warranty_until'])}."
    return (f"Your {r['product']} ({r['serial_number']}) was covered until {_day(r['warranty_until'])}, so its "
            "warranty has ended.")


def _fake(rng: random.Random, prefix: str, db: sqlite3.Connection, column: str) -> str:
    while True:
        value = f"{prefix}-{rng.randint(100000, 999999)}"
        if db.execute(f"SELECT 1 FROM orders WHERE {column} = ?", (value,)).fetchone() is None:
            return value


def status_row(rng: random.Random, db: sqlite3.Connection, pool: list[sqlite3.Row]) -> Row:
    order = _fake(rng, "KB", db, "order_id") if rng.random() < 0.08 else pool.pop()["order_id"]
    turns, result = _tool_turns(db, 1, "lookup_order", {"order_id": order})
    return _chat(_user(_ask(rng, rng.choice(STATUS_Q), order=order)), *turns, _say(status_answer(result)))


def return_row(rng: random.Random, db: sqlite3.Connection, pool: list[sqlite3.Row]) -> Row:
    recent = [o for o in pool[-40:]
              if o["delivered"] and (date(2025, 6, 2) - date.fromisoformat(o["delivered"])).days < 45]
    order = (recent[-1] if recent and rng.random() < 0.75 else pool[-1])["order_id"]
    pool.remove(next(o for o in pool if o["order_id"] == order))
    reason = rng.choice(REASONS)
    question = _ask(rng, rng.choice(RETURN_Q), order=order, cue=rng.choice(CUES[reason]))
    turns, result = _tool_turns(db, 1, "start_return", {"order_id": order, "reason": reason})
    return _chat(_user(question), *turns, _say(return_answer(result)))


def serial_row(rng: random.Random, db: sqlite3.Connection, pool: list[sqlite3.Row]) -> Row:
    serial = _fake(rng, "KS", db, "serial_number") if rng.random() < 0.08 else pool.pop()["serial_number"]
    turns, result = _tool_turns(db, 1, "check_warranty", {"serial_number": serial})
    return _chat(_user(_ask(rng, rng.choice(SERIAL_Q), serial=serial)), *turns, _say(warranty_answer(result)))


def by_order_row(rng: random.Random, db: sqlite3.Connection, pool: list[sqlite3.Row]) -> Row:
    order = pool.pop()
    first, found = _tool_turns(db, 1, "lookup_order", {"order_id": order["order_id"]})
    second, result = _tool_turns(db, 2, "check_warranty", {"serial_number": found["serial_number"]})
    question = _ask(rng, rng.choice(BY_ORDER_Q), order=order["order_id"])
    return _chat(_user(question), *first, *second, _say(warranty_answer(result)))


def two_turn_row(rng: random.Random, db: sqlite3.Connection, pool: list[sqlite3.Row]) -> Row:
    questions, asks, kind = rng.choice(MISSING)
    order = pool.pop()
    reason = rng.choice(REASONS)
    first = _ask(rng, rng.choice(questions), cue=rng.choice(CUES[reason]))
    number = order["serial_number"] if kind == "warranty" else order["order_id"]
    name, args, answer = {
        "status": ("lookup_order", {"order_id": number}, status_answer),
        "return": ("start_return", {"order_id": number, "reason": reason}, return_answer),
        "warranty": ("check_warranty", {"serial_number": number}, warranty_answer)}[kind]
    turns, result = _tool_turns(db, 1, name, args)
    given = _user(rng.choice(GIVE_NUMBER).format(n=number))
    return _chat(_user(first), _say(_ask_number(first, asks, kind)), given, *turns, _say(answer(result)))


def missing_row(rng: random.Random, db: sqlite3.Connection, pool: list[sqlite3.Row]) -> Row:
    questions, asks, kind = rng.choice(MISSING)
    cue = rng.choice([c for cues in CUES.values() for c in cues])
    question = _ask(rng, rng.choice(questions), cue=cue)
    return _chat(_user(question), _say(_ask_number(question, asks, kind)))


def faq_row(rng: random.Random, db: sqlite3.Connection, pool: list[sqlite3.Row]) -> Row:
    if rng.random() < 0.1:
        question, answer = rng.choice(SMALL_TALK)
        return _chat(_user(question), _say(answer))
    intent = rng.choice(NO_CALL_INTENTS)
    slots = _slots(rng)
    question = rng.choice([q for q in intent["q"] if "{order}" not in q])
    names = set(re.findall(r"{(\w+)}", question))
    answers = [a for a in intent["a"] if _fits(a, names)]
    question = _ask(rng, question, **slots)
    return _chat(_user(question), _say(random.Random(question).choice(answers).format(**slots)))


def _fits(answer: str, names: set[str]) -> bool:
    """An answer may use only the placeholders its question fills (model facts count as the model)."""
    from _support import ROOT

    return {ROOT.get(n, n) for n in re.findall(r"{(\w+)}", answer)} <= {ROOT.get(n, n) for n in names}


def two_turn_warranty_row(rng: random.Random, db: sqlite3.Connection, pool: list[sqlite3.Row]) -> Row:
    """A warranty question without its serial number, answered by asking for it, then the check."""
    questions, asks, kind = MISSING[2]
    order = pool.pop()
    first = _ask(rng, rng.choice(questions))
    turns, result = _tool_turns(db, 1, "check_warranty", {"serial_number": order["serial_number"]})
    given = _user(rng.choice(GIVE_NUMBER).format(n=order["serial_number"]))
    return _chat(_user(first), _say(_ask_number(first, asks, kind)), given, *turns, _say(warranty_answer(result)))


FOLLOW_WARRANTY = ["Is the kettle from that order still under warranty?", "And is it still under warranty?",
                   "Is that kettle still covered?", "What about the warranty on it?",
                   "Can you check its warranty too?", "Is it still in warranty?"]
FOLLOW_RETURN = ["I'd like to return it, {cue}.", "Then I want to send it back: {cue}.",
                 "Can I return it? {Cue}.", "Please start a return for it, {cue}."]


def follow_up_row(rng: random.Random, db: sqlite3.Connection, pool: list[sqlite3.Row]) -> Row:
    """A conversation that builds on its own tool results: an order lookup, then its kettle's warranty (the
    serial number comes from the lookup), and sometimes a return of the same order."""
    recent = [o for o in pool[-40:]
              if o["delivered"] and (date(2025, 6, 2) - date.fromisoformat(o["delivered"])).days < 45]
    order = recent[-1] if recent and rng.random() < 0.5 else pool[-1]
    pool.remove(order)
    first, found = _tool_turns(db, 1, "lookup_order", {"order_id": order["order_id"]})
    turns = [_user(_ask(rng, rng.choice(STATUS_Q), order=order["order_id"])), *first, _say(status_answer(found))]
    second, result = _tool_turns(db, 2, "check_warranty", {"serial_number": found["serial_number"]})
    turns += [_user(rng.choice(FOLLOW_WARRANTY)), *second, _say(warranty_answer(result))]
    if rng.random() < 0.5:
        reason = rng.choice(REASONS)
        cue = rng.choice(CUES[reason])
        third, done = _tool_turns(db, 3, "start_return", {"order_id": order["order_id"], "reason": reason})
        ask = rng.choice(FOLLOW_RETURN).format(cue=cue, Cue=cue[:1].upper() + cue[1:])
        turns += [_user(ask), *third, _say(return_answer(done))]
    return _chat(*turns)


Maker = Callable[[random.Random, sqlite3.Connection, list[sqlite3.Row]], Row]
MIX: list[tuple[Maker, int]] = [
    (status_row, 4), (return_row, 5), (serial_row, 3), (by_order_row, 4), (two_turn_row, 3), (missing_row, 3),
    (faq_row, 5),
]
# Extra training rows on what a model confuses most: a serial number (KS-) goes to check_warranty, an order
# number (KB-) to lookup_order, and a warranty question about an order needs both, chained. Status rows stay
# in the mix so the same lookup result is seen ending in an answer as often as in a second call.
WARRANTY_MIX: list[tuple[Maker, int]] = [
    (serial_row, 3), (by_order_row, 4), (two_turn_warranty_row, 2), (follow_up_row, 2), (status_row, 2),
]


def tools_header() -> dict[str, Any]:
    """The file's first record: the tools every row may call."""
    return {"tools": TOOLS}


def split_orders(db: sqlite3.Connection, seed: int) -> tuple[list[sqlite3.Row], list[sqlite3.Row]]:
    """Orders for training rows and for held-out rows: disjoint, so held-out numbers are new to the model."""
    orders = orders_by(db)
    random.Random(seed).shuffle(orders)
    cut = len(orders) * 4 // 5
    return orders[:cut], orders[cut:]
