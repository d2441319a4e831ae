"""A tiny model trained in seconds to follow scripted tool conversations of the Kettlebird support desk.

The conversations use the example's real tools and shop database (examples/agent_desk.py), so the agent
loop in examples/agent.py gets exactly the results the model was trained on and can be run end to end.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import agent_desk  # examples/agent_desk.py (conftest puts examples/ on the path)

SYSTEM = "You are Kettlebird's support assistant."
# The two tools the script calls, without descriptions: the tiny tokenizer spends a token on every few
# characters of schema, and every prompt carries them.
TOOLS = [{"type": "function", "function": {k: v for k, v in t["function"].items() if k != "description"}}
         for t in agent_desk.TOOLS if t["function"]["name"] in ("lookup_order", "check_warranty")]
FAQ = ("What payment methods do you accept?", "Visa, Mastercard, PayPal and Apple Pay.")


def script_orders(db: sqlite3.Connection) -> list[str]:
    """Four delivered orders of the shop, the same ones every time."""
    return [o["order_id"] for o in agent_desk.orders_by(db, "delivered IS NOT NULL")[:4]]


def _call(db: sqlite3.Connection, cid: str, name: str, args: dict[str, Any]) -> tuple[dict, dict, dict]:
    result = agent_desk.call(db, name, args)
    return ({"id": cid, "type": "function", "function": {"name": name, "arguments": json.dumps(args)}},
            {"role": "tool", "tool_call_id": cid, "content": result}, json.loads(result))


def script(db: sqlite3.Connection) -> list[dict[str, Any]]:
    """The scripted rows. First the conversation the agent test holds (a chained two-call warranty check, an
    order lookup, a question needing no call); then its second question alone, two parallel lookups, and
    the question that needs no call alone."""
    o1, o2, o3, o4 = script_orders(db)
    c1, r1, found = _call(db, "call_1", "lookup_order", {"order_id": o1})
    c2, r2, cover = _call(db, "call_2", "check_warranty", {"serial_number": found["serial_number"]})
    warranty = [{"role": "user", "content": f"Is the kettle from order {o1} still under warranty?"},
                {"role": "assistant", "content": None, "tool_calls": [c1]}, r1,
                {"role": "assistant", "content": None, "tool_calls": [c2]}, r2,
                {"role": "assistant", "content": f"Covered until {cover['warranty_until']}."}]
    c1, r1, found = _call(db, "call_3", "lookup_order", {"order_id": o2})
    status = [{"role": "user", "content": f"Where is my order {o2}?"},
              {"role": "assistant", "content": None, "tool_calls": [c1]}, r1,
              {"role": "assistant", "content": f"It was delivered on {found['delivered']}."}]
    faq = [{"role": "user", "content": FAQ[0]}, {"role": "assistant", "content": FAQ[1]}]
    c1, r1, _ = _call(db, "call_1", "lookup_order", {"order_id": o3})
    c2, r2, _ = _call(db, "call_2", "lookup_order", {"order_id": o4})
    parallel = [{"role": "user", "content": f"Where are orders {o3} and {o4}?"},
                {"role": "assistant", "content": None, "tool_calls": [c1, c2]}, r1, r2,
                {"role": "assistant", "content": "Both were delivered."}]
    return [{"messages": [{"role": "system", "content": SYSTEM}, *m]}
            for m in (warranty + status + faq, status, parallel, faq)]


def write_script(path: Path, db: sqlite3.Connection) -> Path:
    rows = [{"tools": TOOLS}, *script(db)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def train_scripted_model(folder: Path) -> Path:
    """A tiny model, its tokenizer fitted to the script's text (short prompts), fully fine-tuned on the
    script until it repeats it; returns the model folder."""
    from tiny import CORPUS, build_tiny_model
    from tunesmith.api import fine_tune
    from tunesmith.config import load_config
    from tunesmith.data.tool_template import tools_block

    data = write_script(folder / "script.jsonl", agent_desk.open_desk(seed=0))
    corpus = CORPUS + [tools_block(TOOLS)] + data.read_text().splitlines() * 2
    base = build_tiny_model(folder / "base", max_positions=2048, corpus=corpus, vocab_size=1500)
    config = load_config(data=str(data), model=str(base), method="full", out=str(folder / "run"), lr=1e-2,
                         max_steps=150, batch_size=4, eval_fraction=0.0, guard=False, warmup=0.0,
                         schedule="constant", max_length=2048, device="cpu", threads=1,
                         precision="fp32")  # lr 1e-2 until it repeats the script word for word: bf16 noise stops short
    return fine_tune(config).output
