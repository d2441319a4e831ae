"""Likely secrets and personal data in examples: a model can learn and repeat them verbatim.

Pattern matching, so it finds likely cases, not all of them. Secrets (API keys, tokens, private keys) are
problems; personal data (emails, phone numbers) are warnings. Addresses at the reserved example domains
(example.com, *.example, *.test, ...: RFC 2606) are not personal data and are not reported.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from tunesmith.data.formats import Example


@dataclass(frozen=True)
class Pattern:
    name: str
    kind: str  # "secret" or "pii"
    regex: re.Pattern[str]


PATTERNS: tuple[Pattern, ...] = (
    Pattern("private key", "secret", re.compile(r"-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----")),
    Pattern("OpenAI-style API key", "secret", re.compile(r"\bsk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,}")),
    Pattern("AWS access key id", "secret", re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")),
    Pattern("GitHub token", "secret", re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,}\b")),
    Pattern("Slack token", "secret", re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}")),
    Pattern("bearer token", "secret", re.compile(r"\b[Bb]earer\s+[A-Za-z0-9._~+/-]{16,}=*")),
    Pattern("email address", "pii", re.compile(r"\b[\w.%+-]+@[\w-]+(?:\.[\w-]+)*\.[A-Za-z]{2,}\b")),
    # +1 555 123 4567, (555) 123-4567, 020 7946 0958: 7+ digits in separated groups.
    Pattern("phone number", "pii", re.compile(
        r"(?<![\w.+-])(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)[ .-]?|\d{2,4}[ .-])\d{3,4}[ .-]\d{3,4}(?![\w-]|\.\d)"
    )),
)

_RESERVED_DOMAIN = re.compile(
    r"@(?:[\w-]+\.)*(?:example\.(?:com|net|org)|[\w-]+\.(?:example|test|invalid|localhost))$", re.I
)


@dataclass(frozen=True)
class Hit:
    """One likely secret or piece of personal data, masked so the report does not repeat it."""

    source: str  # "file.jsonl:12"
    field: str  # "messages[1].content"
    kind: str  # "secret" or "pii"
    name: str  # "email address", ...
    masked: str  # "jo…om"


def mask(text: str) -> str:
    """Enough to find it again, not enough to use it: first and last 2 characters."""
    return f"{text[:2]}…{text[-2:]}" if len(text) > 6 else "…"


def scan(examples: Sequence[Example]) -> list[Hit]:
    """Every match of every pattern in every message, in file order."""
    hits: list[Hit] = []
    for ex in examples:
        if ex.text is not None:
            hits += scan_text(ex.text, ex.source, "text")
        for i, m in enumerate(ex.messages):
            hits += scan_text(m["content"], ex.source, f"messages[{i}].content")
    return hits


def scan_text(text: str, source: str, field: str) -> list[Hit]:
    hits: list[Hit] = []
    for p in PATTERNS:
        for match in p.regex.finditer(text):
            found = match.group(0)
            if p.name == "email address" and _RESERVED_DOMAIN.search(found):
                continue
            if p.name == "phone number" and sum(c.isdigit() for c in found) < 7:
                continue
            hits.append(Hit(source, field, p.kind, p.name, mask(found)))
    return hits
