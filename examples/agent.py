"""An agent on a fine-tuned model: Kettlebird's support desk, answering with its own tools.

    tunesmith train examples/agent_train.jsonl --out runs/agent --lr 1e-3 --epochs 3 --max-length 768
    tunesmith serve --adapter desk=runs/agent &
    python examples/agent.py --model desk "Is the kettle from order KB-209712 still under warranty?"

The loop is the usual one for OpenAI's API: send the conversation and the tools; when the reply calls tools,
run each on the shop database (`agent_desk.py`) and send the results back as tool messages; the first reply
without a call is the answer (or stop after `--max-steps` model calls). Several questions are asked in turn,
in one conversation. Needs the `openai` package (`pip install openai`).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _agent import SYSTEM
from agent_desk import TOOLS, call, open_desk

Say = Callable[[str], None]


def answer(client: Any, model: str, messages: list[dict[str, Any]], db: sqlite3.Connection, *,
           max_steps: int = 5, say: Say = print) -> str:
    """Run the model and its tools until it answers; `messages` (ending with the user's) grows in place."""
    for _ in range(max_steps):
        reply = client.chat.completions.create(model=model, messages=messages, tools=TOOLS, temperature=0,
                                               max_tokens=200)
        message = reply.choices[0].message
        calls = message.tool_calls or []
        messages.append({"role": "assistant", "content": message.content,
                         **({"tool_calls": [c.model_dump() for c in calls]} if calls else {})})
        if not calls:
            say(f"assistant: {message.content}")
            return message.content or ""
        for c in calls:
            try:
                arguments = json.loads(c.function.arguments)
                result = call(db, c.function.name, arguments)
            except (json.JSONDecodeError, TypeError) as e:
                result = json.dumps({"error": f"bad arguments: {e}"})
            say(f"  -> {c.function.name}({c.function.arguments})")
            say(f"  <- {result}")
            messages.append({"role": "tool", "tool_call_id": c.id, "content": result})
    say(f"(no answer after {max_steps} model calls)")
    return ""


def converse(client: Any, model: str, questions: list[str], db: sqlite3.Connection, *, max_steps: int = 5,
             say: Say = print) -> list[dict[str, Any]]:
    """Ask each question in turn, in one conversation; returns the whole conversation."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": SYSTEM}]
    for question in questions:
        say(f"user: {question}")
        messages.append({"role": "user", "content": question})
        answer(client, model, messages, db, max_steps=max_steps, say=say)
    return messages


def main() -> None:
    import openai

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("questions", nargs="+", help="what the customer asks, one argument per turn")
    parser.add_argument("--model", default="desk", help="served model or adapter name (default: desk)")
    parser.add_argument("--base-url", default="http://127.0.0.1:8000/v1", help="the tunesmith server")
    parser.add_argument("--api-key", default="none", help="the server's --api-key, if it has one")
    parser.add_argument("--max-steps", type=int, default=5, help="model calls per question at most")
    args = parser.parse_args()
    client = openai.OpenAI(base_url=args.base_url, api_key=args.api_key)
    converse(client, args.model, args.questions, open_desk(seed=0), max_steps=args.max_steps)


if __name__ == "__main__":
    main()
