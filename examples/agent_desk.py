"""Kettlebird's support desk tools, backed by SQLite: what `agent.py` executes and the agent data shows.

Three tools, declared in OpenAI's `tools` shape (`TOOLS`) and implemented on one SQLite database of orders:
- `lookup_order(order_id)`: status, product, serial number and dates of an order;
- `start_return(order_id, reason)`: opens a return within 45 days of delivery;
- `check_warranty(serial_number)`: warranty end date of a kettle (2 years, 3 on the Pro, from delivery).

`open_desk(seed)` builds the same shop every time for a seed (orders, serial numbers, dates), and "today" is
fixed (`TODAY`), so the training conversations and a live agent see the same tool results.
"""

from __future__ import annotations

import json
import random
import sqlite3
from datetime import date, timedelta
from typing import Any

TODAY = date(2025, 6, 2)
RETURN_DAYS = 45
PRODUCTS = {"Kettlebird One": (89, 2), "Kettlebird Pro": (149, 3), "Kettlebird Mini": (59, 2)}  # price, warranty years
REASONS = ("faulty", "damaged", "wrong_item", "changed_mind")
FREE_LABEL = ("faulty", "damaged", "wrong_item")  # a change of mind pays the $6 label

TOOLS: list[dict[str, Any]] = [
    {"type": "function", "function": {
        "name": "lookup_order", "description": "Status, product and serial number of an order",
        "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}},
                       "required": ["order_id"]}}},
    {"type": "function", "function": {
        "name": "start_return", "description": "Open a return for a delivered order",
        "parameters": {"type": "object", "properties": {
            "order_id": {"type": "string"},
            "reason": {"type": "string", "enum": list(REASONS)}}, "required": ["order_id", "reason"]}}},
    {"type": "function", "function": {
        "name": "check_warranty", "description": "Warranty of a kettle by its serial number",
        "parameters": {"type": "object", "properties": {
            "serial_number": {"type": "string"}}, "required": ["serial_number"]}}},
]

SCHEMA = """
CREATE TABLE orders (order_id TEXT PRIMARY KEY, product TEXT, serial_number TEXT UNIQUE, ordered TEXT,
                     delivered TEXT, eta TEXT);
CREATE TABLE returns (return_id TEXT PRIMARY KEY, order_id TEXT UNIQUE, reason TEXT, opened TEXT);
"""


def open_desk(seed: int = 0, orders: int = 1200, path: str = ":memory:") -> sqlite3.Connection:
    """A shop database with `orders` orders from the last two and a half years, the same for the same seed."""
    rng = random.Random(seed)
    db = sqlite3.connect(path, check_same_thread=False)
    db.row_factory = sqlite3.Row
    db.executescript(SCHEMA)
    ids = rng.sample(range(100000, 1000000), orders)
    serials = rng.sample(range(100000, 1000000), orders)
    for oid, serial in zip(ids, serials, strict=True):
        age = rng.choice([rng.randint(0, 6), rng.randint(7, 60), rng.randint(7, 900)])
        ordered = TODAY - timedelta(days=age)
        delivered = ordered + timedelta(days=rng.randint(2, 5))
        done = delivered <= TODAY - timedelta(days=1)
        eta = None if done or age < 2 else delivered
        db.execute("INSERT INTO orders VALUES (?, ?, ?, ?, ?, ?)",
                   (f"KB-{oid}", rng.choice(sorted(PRODUCTS)), f"KS-{serial}", ordered.isoformat(),
                    delivered.isoformat() if done else None, eta.isoformat() if eta else None))
    db.commit()
    return db


def call(db: sqlite3.Connection, name: str, arguments: dict[str, Any]) -> str:
    """Run one tool call; the result is the JSON text a tool message carries."""
    functions = {"lookup_order": lookup_order, "start_return": start_return, "check_warranty": check_warranty}
    if name not in functions:
        return json.dumps({"error": f"unknown function {name}"})
    try:
        return json.dumps(functions[name](db, **arguments), separators=(",", ":"))
    except TypeError as e:  # wrong or missing arguments
        return json.dumps({"error": str(e)})


def lookup_order(db: sqlite3.Connection, order_id: str) -> dict[str, Any]:
    row = db.execute("SELECT * FROM orders WHERE order_id = ?", (order_id,)).fetchone()
    if row is None:
        return {"error": f"no order {order_id}"}
    out = {"order_id": order_id, "product": row["product"], "serial_number": row["serial_number"]}
    if row["delivered"]:
        return out | {"status": "delivered", "delivered": row["delivered"]}
    if row["eta"]:
        return out | {"status": "shipped", "eta": row["eta"]}
    return out | {"status": "processing"}


def start_return(db: sqlite3.Connection, order_id: str, reason: str) -> dict[str, Any]:
    row = db.execute("SELECT * FROM orders WHERE order_id = ?", (order_id,)).fetchone()
    if row is None:
        return {"error": f"no order {order_id}"}
    if reason not in REASONS:
        return {"error": f"reason must be one of {', '.join(REASONS)}"}
    if not row["delivered"]:
        return {"error": f"order {order_id} has not been delivered yet"}
    if date.fromisoformat(row["delivered"]) < TODAY - timedelta(days=RETURN_DAYS):
        return {"error": f"order {order_id} was delivered on {row['delivered']}; the {RETURN_DAYS}-day return "
                         "window has closed"}
    opened = db.execute("SELECT return_id FROM returns WHERE order_id = ?", (order_id,)).fetchone()
    if opened is not None:
        return {"error": f"return {opened['return_id']} is already open for order {order_id}"}
    return_id = f"RT-{int(order_id[3:]) % 90000 + 10000}"
    db.execute("INSERT INTO returns VALUES (?, ?, ?, ?)", (return_id, order_id, reason, TODAY.isoformat()))
    db.commit()
    price = PRODUCTS[row["product"]][0]
    return {"return_id": return_id, "order_id": order_id, "label_cost": 0 if reason in FREE_LABEL else 6,
            "refund": price}


def check_warranty(db: sqlite3.Connection, serial_number: str) -> dict[str, Any]:
    row = db.execute("SELECT * FROM orders WHERE serial_number = ?", (serial_number,)).fetchone()
    if row is None:
        return {"error": f"no kettle with serial number {serial_number}"}
    start = date.fromisoformat(row["delivered"] or row["ordered"])
    years = PRODUCTS[row["product"]][1]
    until = start.replace(year=start.year + years) if (start.month, start.day) != (2, 29) else start + timedelta(
        days=365 * years)
    return {"serial_number": serial_number, "product": row["product"], "warranty_until": until.isoformat(),
            "covered": until >= TODAY}


def orders_by(db: sqlite3.Connection, where: str = "1", args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
    """Orders matching a SQL condition, in id order (the data generator picks from these)."""
    return list(db.execute(f"SELECT * FROM orders WHERE {where} ORDER BY order_id", args))
