"""Write the example datasets in this folder. Deterministic: same files on every run.

    python examples/make_examples.py [OUT_DIR]   # default: this folder

- support.jsonl      prompt/completion, 400 rows: support chatbot of Kettlebird, a fictional kettle maker
- support_questions.jsonl  24 held-out, reworded questions about support.jsonl's facts, with the `facts` to recall
- persona.jsonl      chat messages, 200 rows (50 multi-turn): Captain Saltbeard, a sarcastic pirate
- sql.jsonl          chat messages, 220 rows: text-to-SQL for the schema in sql_schema.sql
- glossary.csv       prompt/completion as CSV, 24 rows: fine-tuning terms explained
- plain_english.json Alpaca (instruction/input/output) as a JSON array, 20 rows: rewrite jargon plainly
- agent_train.jsonl  chat with tool calls, 400 rows: Kettlebird's support desk agent (tools in agent_desk.py)
- agent_eval.jsonl   the held-out split of the same, 80 rows about orders the training rows never mention
"""

from __future__ import annotations

import csv
import json
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _agent  # noqa: E402
import _persona  # noqa: E402
import _small  # noqa: E402
import _sql  # noqa: E402
import _support  # noqa: E402
import agent_desk  # noqa: E402


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def main(out: Path = HERE) -> None:
    """Write every dataset into `out` (this folder by default)."""
    write_jsonl(out / "support.jsonl", _support.make(random.Random(1)))
    write_jsonl(out / "support_questions.jsonl", _support.questions())
    write_jsonl(out / "persona.jsonl", _persona.make(random.Random(2)))
    write_jsonl(out / "sql.jsonl", _sql.make(random.Random(3)))
    with (out / "glossary.csv").open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["prompt", "completion"])
        writer.writerows(_small.GLOSSARY)
    rows = [{"instruction": i, "input": x, "output": o} for i, x, o in _small.PLAIN_ENGLISH]
    (out / "plain_english.json").write_text(json.dumps(rows, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    db = agent_desk.open_desk(seed=0)
    train_orders, eval_orders = _agent.split_orders(db, seed=4)
    header = _agent.tools_header()
    seen = _agent.Distinct()  # held-out rows must not nearly repeat a training row
    train = _agent.make(random.Random(5), db, 300, train_orders, seen)
    held_out = _agent.make(random.Random(6), db, 80, eval_orders, seen)
    # 100 more training rows on warranty and chained calls, drawn after the held-out split so that split
    # stays as it was; `seen` now holds it too, so none of them nearly repeats a held-out row.
    train += _agent.make(random.Random(7), db, 100, train_orders, seen, mix=_agent.WARRANTY_MIX)
    write_jsonl(out / "agent_train.jsonl", [header, *train])
    write_jsonl(out / "agent_eval.jsonl", [header, *held_out])


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)
