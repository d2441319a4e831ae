"""Text-to-SQL against the shop schema in `sql_schema.sql` (chat messages, schema in the system message).

Every query is checked by SQLite against the schema when the file is generated: it must parse and run.
Cancelled orders never count toward revenue or sales; revenue is quantity * unit_price (the price paid).
"""

from __future__ import annotations

import random
import re
import sqlite3
from pathlib import Path

from _distinct import Distinct

SCHEMA_FILE = Path(__file__).with_name("sql_schema.sql")

CITIES = {"Paris": "France", "Lyon": "France", "Berlin": "Germany", "Munich": "Germany", "Madrid": "Spain",
          "Barcelona": "Spain", "London": "United Kingdom", "Manchester": "United Kingdom",
          "New York": "United States", "Chicago": "United States", "Toronto": "Canada", "Tokyo": "Japan"}
COUNTRIES = sorted(set(CITIES.values()))
CATEGORIES = ["Books", "Clothing", "Electronics", "Garden", "Kitchen", "Sports", "Toys"]
STATUSES = ["pending", "shipped", "delivered", "cancelled"]
YEARS = ["2021", "2022", "2023", "2024"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
NAMES = ["Alice Martin", "Bruno Keller", "Chen Wei", "Dana Okafor", "Elena Rossi", "Farid Haddad",
         "Grace Kim", "Hugo Lefebvre", "Ines Garcia", "Jonas Berg"]
WORDS = ["lamp", "mug", "cable", "jacket", "ball", "kettle", "novel", "puzzle"]

PAID = "o.status != 'cancelled'"
LINE = "oi.quantity * oi.unit_price"

# (question phrasings, SQL). Slots: {city} {country} {category} {status} {year} {month} {mm} {n} {k} {lo} {hi}
# {name} {word}.
TEMPLATES: list[tuple[list[str], str]] = [
    (["What's the customer count for {city}?", "{city}: how many customers?",
      "How many customers live in {city}?", "Count the customers based in {city}.",
      "Number of customers from the city of {city}?"],
     "SELECT COUNT(*) FROM customers WHERE city = '{city}';"),
    (["Give me an alphabetical list of customer names in {country}.",
      "Which customers are located in {country}?",
      "List the names of customers from {country}.", "Who are our customers in {country}? Names only, "
      "alphabetically.", "Show customer names for {country}, sorted by name."],
     "SELECT name FROM customers WHERE country = '{country}' ORDER BY name;"),
    (["I need the {category} products under ${n}, with prices.",
      "List cheap {category} items: price below {n}.",
      "Which {category} products cost less than ${n}?", "Show {category} items under {n} dollars with their "
      "price, cheapest first.", "Find products in the {category} category priced below ${n}."],
     "SELECT name, price FROM products WHERE category = '{category}' AND price < {n} ORDER BY price;"),
    (["Which {k} products have the highest price?", "List our {k} most costly products with prices.",
      "What are the {k} most expensive products?", "Top {k} products by price.", "Show the {k} priciest "
      "items we sell."],
     "SELECT name, price FROM products ORDER BY price DESC LIMIT {k};"),
    (["Tally the orders whose status is {status}.", "How many of our orders have the status '{status}'?",
      "How many orders are {status}?", "Count the {status} orders.", "What's the number of orders with "
      "status {status}?"],
     "SELECT COUNT(*) FROM orders WHERE status = '{status}';"),
    (["In {year}, how many orders did customers place?", "Give me the order count for the year {year}.",
      "How many orders were placed in {year}?", "Number of orders in {year}?", "Count all orders from "
      "{year}, cancelled ones included."],
     "SELECT COUNT(*) FROM orders WHERE strftime('%Y', order_date) = '{year}';"),
    (["Revenue for {year}?", "What did we earn from orders in {year}, not counting cancellations?",
      "What was the total revenue in {year}?", "How much did we sell in {year}, in dollars?", "Total sales "
      "for {year}, excluding cancelled orders."],
     f"SELECT SUM({LINE}) AS revenue FROM order_items oi JOIN orders o ON o.id = oi.order_id "
     f"WHERE {PAID} AND strftime('%Y', o.order_date) = '{{year}}';"),
    (["In {month} {year}, how many new customers registered?", "Signups during {month} {year}: how many?",
      "How many customers signed up in {month} {year}?", "New customer sign-ups in {month} {year}?",
      "Count customers who joined in {month} {year}."],
     "SELECT COUNT(*) FROM customers WHERE strftime('%Y-%m', signup_date) = '{year}-{mm}';"),
    (["Rank customers by total spend and give me the top {k}.",
      "Who spent the most? Show the top {k} with amounts.",
      "Who are the top {k} customers by total spending?", "List the {k} biggest spenders and how much they "
      "spent.", "Which {k} customers have spent the most money?"],
     f"SELECT c.name, SUM({LINE}) AS total_spent FROM customers c JOIN orders o ON o.customer_id = c.id "
     f"JOIN order_items oi ON oi.order_id = o.id WHERE {PAID} GROUP BY c.id, c.name "
     "ORDER BY total_spent DESC LIMIT {k};"),
    (["Are any {category} products out of stock? List them.", "{category} products with no stock left?",
      "Which {category} products are out of stock?", "List {category} items with zero stock.",
      "What's sold out in {category}?"],
     "SELECT name FROM products WHERE category = '{category}' AND stock = 0 ORDER BY name;"),
    (["Which items need restocking, with fewer than {k} left?", "Products where stock is less than {k}?",
      "Which products have fewer than {k} units in stock?", "Show products running low: stock under {k}.",
      "List items whose stock is below {k}, lowest first."],
     "SELECT name, stock FROM products WHERE stock < {k} ORDER BY stock;"),
    (["Mean price of items in {category}?", "On average, what do {category} products sell for?",
      "What is the average price of {category} products?", "Average price in the {category} category?",
      "How much does a {category} product cost on average?"],
     "SELECT AVG(price) FROM products WHERE category = '{category}';"),
    (["What is the average price in every product category?", "Give me each category with its average price.",
      "Show the average product price for each category.", "Average price per category, please.",
      "For every category, what's the mean price?"],
     "SELECT category, AVG(price) AS avg_price FROM products GROUP BY category ORDER BY category;"),
    (["What's the order count for every status?", "Group the orders by status and count them.",
      "How many orders are there in each status?", "Break down the orders by status.",
      "Count orders per status."],
     "SELECT status, COUNT(*) AS orders FROM orders GROUP BY status ORDER BY orders DESC;"),
    (["Who has an account but zero orders?", "Show customers that have not ordered anything yet.",
      "Which customers have never placed an order?", "List customers with no orders at all.",
      "Find the customers who signed up but never ordered."],
     "SELECT c.name FROM customers c LEFT JOIN orders o ON o.customer_id = c.id WHERE o.id IS NULL "
     "ORDER BY c.name;"),
    (["In {year}, which {city} customers made a purchase?",
      "List {city}-based customers with at least one order in {year}.",
      "Which customers from {city} placed an order in {year}?", "Names of {city} customers who ordered in "
      "{year}.", "Who in {city} bought something in {year}?"],
     "SELECT DISTINCT c.name FROM customers c JOIN orders o ON o.customer_id = c.id "
     "WHERE c.city = '{city}' AND strftime('%Y', o.order_date) = '{year}' ORDER BY c.name;"),
    (["Rank products by units sold and show the top {k}.",
      "Which products moved the most units? Top {k} please.",
      "What are the {k} best-selling products by units sold?", "Top {k} products by quantity sold.",
      "Which {k} products sold the most units?"],
     f"SELECT p.name, SUM(oi.quantity) AS units_sold FROM products p JOIN order_items oi "
     f"ON oi.product_id = p.id JOIN orders o ON o.id = oi.order_id WHERE {PAID} GROUP BY p.id, p.name "
     "ORDER BY units_sold DESC LIMIT {k};"),
    (["Find the orders with a total value over ${n}.", "Orders above ${n} in value, largest first?",
      "List orders worth more than ${n}.", "Which orders have a total above {n} dollars?", "Show every "
      "order whose value exceeds ${n}, biggest first."],
     f"SELECT o.id, SUM({LINE}) AS order_total FROM orders o JOIN order_items oi ON oi.order_id = o.id "
     "GROUP BY o.id HAVING order_total > {n} ORDER BY order_total DESC;"),
    (["Revenue split by category for {year}?", "For {year}, give me the sales per category.",
      "What was the revenue per category in {year}?", "Break down {year} sales by product category.",
      "How much did each category earn in {year}?"],
     f"SELECT p.category, SUM({LINE}) AS revenue FROM order_items oi JOIN orders o ON o.id = oi.order_id "
     f"JOIN products p ON p.id = oi.product_id WHERE {PAID} AND strftime('%Y', o.order_date) = '{{year}}' "
     "GROUP BY p.category ORDER BY revenue DESC;"),
    (["Give me a month-by-month count of orders in {year}.", "Orders per month in {year}?",
      "How many orders were placed each month in {year}?", "Monthly order counts for {year}.",
      "Show the number of orders per month during {year}."],
     "SELECT strftime('%m', order_date) AS month, COUNT(*) AS orders FROM orders "
     "WHERE strftime('%Y', order_date) = '{year}' GROUP BY month ORDER BY month;"),
    (["Which email address belongs to {name}?", "Get the email of the customer called {name}.",
      "What is the email address of {name}?", "Find {name}'s email.", "Look up the email we have for "
      "{name}."],
     "SELECT email FROM customers WHERE name = '{name}';"),
    (["Give me the order history of {name}.", "Orders of customer {name}, oldest first?",
      "Show all orders placed by {name}.", "List {name}'s orders with date and status.", "What has {name} "
      "ordered? Show order id, date and status."],
     "SELECT o.id, o.order_date, o.status FROM orders o JOIN customers c ON c.id = o.customer_id "
     "WHERE c.name = '{name}' ORDER BY o.order_date;"),
    (["In each category, how many products do we have?", "Show how many products each category has.",
      "How many products are in each category?", "Product count per category?", "Count the products in "
      "every category."],
     "SELECT category, COUNT(*) AS products FROM products GROUP BY category ORDER BY category;"),
    (["Cancelled orders from {city}: how many?", "How often did customers in {city} cancel an order?",
      "How many orders from customers in {city} were cancelled?", "Count cancelled orders for {city} "
      "customers.", "Number of cancellations by customers living in {city}?"],
     "SELECT COUNT(*) FROM orders o JOIN customers c ON c.id = o.customer_id "
     "WHERE c.city = '{city}' AND o.status = 'cancelled';"),
    (["Products with a price from ${lo} up to ${hi}?",
      "I want items costing at least ${lo} and at most ${hi}.",
      "Which products cost between ${lo} and ${hi}?", "List products priced from {lo} to {hi} dollars.",
      "Show items with a price in the ${lo}-${hi} range, cheapest first."],
     "SELECT name, price FROM products WHERE price BETWEEN {lo} AND {hi} ORDER BY price;"),
    (["Give me the {k} newest orders.", "Which {k} orders came in most recently?",
      "Show the {k} most recent orders.", "What are the latest {k} orders?", "List the last {k} orders "
      "placed, newest first."],
     "SELECT id, customer_id, order_date, status FROM orders ORDER BY order_date DESC LIMIT {k};"),
    (["Count our customers in {country}.", "What is the number of customers whose country is {country}?",
      "How many customers do we have in {country}?", "Customer count for {country}?", "Number of "
      "customers located in {country}?"],
     "SELECT COUNT(*) FROM customers WHERE country = '{country}';"),
    (["Show the products that were never sold.", "Which items have zero orders?",
      "Which products have never been ordered?", "List products nobody has bought yet.",
      "Find items with no order history."],
     "SELECT name FROM products WHERE id NOT IN (SELECT product_id FROM order_items) ORDER BY name;"),
    (["Mean order value for {year}, cancelled orders excluded?",
      "What did the average order come to in {year}?",
      "What was the average order value in {year}?", "Average order total for {year}?",
      "How much was a typical order worth in {year}, on average?"],
     f"SELECT AVG(order_total) FROM (SELECT o.id, SUM({LINE}) AS order_total FROM orders o "
     f"JOIN order_items oi ON oi.order_id = o.id WHERE {PAID} AND strftime('%Y', o.order_date) = '{{year}}' "
     "GROUP BY o.id);"),
    (["Look up products named like '{word}'.", "Any products with {word} in their name? Show prices.",
      "Find products with '{word}' in the name.", "Search products whose name contains {word}.",
      "Which products are called something with {word}?"],
     "SELECT name, price FROM products WHERE name LIKE '%{word}%' ORDER BY name;"),
    (["{country} customers with total purchases over ${n}?",
      "Find customers from {country} who spent above {n} dollars.",
      "Which customers in {country} spent more than ${n} in total?", "List {country} customers whose "
      "lifetime spending exceeds {n} dollars.", "Who in {country} has spent over ${n}?"],
     f"SELECT c.name, SUM({LINE}) AS total_spent FROM customers c JOIN orders o ON o.customer_id = c.id "
     f"JOIN order_items oi ON oi.order_id = o.id WHERE c.country = '{{country}}' AND {PAID} "
     "GROUP BY c.id, c.name HAVING total_spent > {n} ORDER BY total_spent DESC;"),
    (["What quantity of {category} goods was sold in {year}?",
      "In {year}, how many {category} items did we sell?",
      "How many {category} units did we sell in {year}?", "Units sold in {category} during {year}?",
      "Total quantity of {category} products sold in {year}?"],
     f"SELECT SUM(oi.quantity) FROM order_items oi JOIN orders o ON o.id = oi.order_id "
     f"JOIN products p ON p.id = oi.product_id WHERE p.category = '{{category}}' AND {PAID} "
     "AND strftime('%Y', o.order_date) = '{year}';"),
]


def system_prompt() -> str:
    """The instruction plus the schema without its comments."""
    schema = "\n".join(ln for ln in SCHEMA_FILE.read_text().splitlines() if not ln.startswith("--")).strip()
    return ("You write one SQLite query that answers the question, for the database below. Reply with the "
            f"SQL only.\n\n{schema}")


def make(rng: random.Random, count: int = 220) -> list[dict[str, list[dict[str, str]]]]:
    """`count` unique question/SQL chats, spread over the templates, each query checked by SQLite."""
    system = system_prompt()
    db = sqlite3.connect(":memory:")
    db.executescript(SCHEMA_FILE.read_text())
    rows, seen, tries, distinct = [], set(), 0, Distinct()
    while len(rows) < count:
        questions, sql = TEMPLATES[tries % len(TEMPLATES)]
        tries += 1
        assert tries < 50 * count, "cannot find enough unique questions"
        question = rng.choice(questions)
        slots = _slots(rng)
        text = question.format(**slots)
        if text.lower() in seen:
            continue
        seen.add(text.lower())
        query = sql.format(**slots)
        db.execute(query).fetchall()  # raises on any error against the schema
        messages = [{"role": "system", "content": system}, {"role": "user", "content": text},
                    {"role": "assistant", "content": query}]
        if distinct.add(messages):
            rows.append({"messages": messages})
    return rows


def _slots(rng: random.Random) -> dict[str, str]:
    city = rng.choice(sorted(CITIES))
    month = rng.randrange(12)
    lo = rng.choice([5, 10, 15, 20, 25, 40, 50])
    slots = {"city": city, "country": rng.choice(COUNTRIES), "category": rng.choice(CATEGORIES),
             "status": rng.choice(STATUSES), "year": rng.choice(YEARS), "month": MONTHS[month],
             "mm": f"{month + 1:02d}", "n": str(rng.choice([10, 15, 20, 25, 30, 50, 75, 100, 150, 200, 500])),
             "k": str(rng.choice([3, 5, 10, 20])), "lo": str(lo), "hi": str(lo + rng.choice([10, 20, 50, 100])),
             "name": rng.choice(NAMES), "word": rng.choice(WORDS)}
    assert all(re.fullmatch(r"[\w .-]+", v) for v in slots.values())  # nothing that needs SQL quoting
    return slots
