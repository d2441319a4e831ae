"""The commands the README and the guides show, parsed out of their Markdown and made cheap to run.

A command is a line of a ```console (or bash/sh) block that starts with `$ ` (continuation lines end with a
backslash); in a block with no `$ ` line every line is a command (the README's copy-paste blocks). Each
`tunesmith` command runs as written plus the cheapest flags that keep its meaning: the tiny test model
instead of the built-in one for training, two steps, two examples scored. A command whose shown output
starts with `error:` must fail with exit code 2. Commands on files the guide only imagines (`faq.parquet`)
are reported as skipped, never silently dropped.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

FENCE = re.compile(r"^```(\w*)\s*$")
SHELLS = ("console", "bash", "sh", "shell")
# Data a run on the tiny model cannot hold: one tool conversation (tool schemas in the system turn) is ~1000 tokens
# of its tokenizer, twice its 512 positions. The same train, eval and serve steps run on a 2048-position tiny model
# in tests/tool_helpers.py (training), tests/test_eval_tools.py (`tunesmith eval`) and test_agent_example.py.
TOO_LONG_FOR_TINY = ("examples/agent_train.jsonl",)
NOT_RUN = ("pip", "python", "curl", "llama-server", "ollama", "printf", "echo", "ruff", "cd", "export")


@dataclass
class Command:
    doc: str  # README.md or docs/x.md
    line: int
    text: str  # as shown
    expects_error: bool = False
    stdin: str | None = None
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    server: bool = False  # `tunesmith serve`: started, checked to answer, stopped


def commands(path: Path, root: Path) -> list[Command]:
    lines = path.read_text(encoding="utf-8").splitlines()
    found: list[Command] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        lang, start = m.group(1), i + 1
        end = next(j for j in range(start, len(lines)) if lines[j].startswith("```"))
        if lang in SHELLS:
            found += _block(lines[start:end], start, str(path.relative_to(root)))
        i = end + 1
    return found


def _block(block: list[str], offset: int, doc: str) -> list[Command]:
    prompted = any(line.startswith("$ ") for line in block)
    out: list[Command] = []
    k = 0
    while k < len(block):
        line = block[k]
        if prompted and not line.startswith("$ "):
            k += 1
            continue
        text, first = line.removeprefix("$ "), k
        while text.rstrip().endswith("\\") and k + 1 < len(block):
            k += 1
            text = text.rstrip()[:-1].rstrip() + " " + block[k].strip()
        nxt = block[k + 1] if k + 1 < len(block) else ""
        text = re.sub(r"\s+#.*$", "", text).strip()  # a trailing comment
        if text:
            out.append(Command(doc, offset + first + 1, text, expects_error=nxt.startswith("error:")))
        k += 1
    return out


# -- making a command cheap ---------------------------------------------------------------------------------

CHEAP = {
    "train": {"--max-steps": "2", "--batch-size": "2", "--max-length": "96", "--threads": "1", "--eval-every": "1"},
    "run": {"--max-steps": "2", "--batch-size": "2", "--max-length": "96", "--threads": "1"},
    "export": {},
    "eval": {"--limit": "2", "--threads": "1"},
    "generate": {"--max-tokens": "4"},
    "chat": {"--max-tokens": "4"},
    "plan": {},
    "advise": {"--limit": "2"},
}
REPLACED = {"--max-steps", "--batch-size", "--max-length", "--threads", "--eval-every", "--limit", "--max-tokens",
            "--epochs"}


def prepare(cmd: Command, tiny: str) -> str | None:
    """Fill `cmd.argv` with the runnable, cheap form; return why it is not run instead (or None)."""
    text = cmd.text
    pipe = re.match(r"^printf '(.*)' \| (.*)$", text)
    if pipe:
        cmd.stdin, text = pipe.group(1).encode().decode("unicode_escape"), pipe.group(2)
    env = re.match(r"^((?:[A-Z_]+=\S+ )+)(.*)$", text)
    if env:
        cmd.env = dict(pair.split("=", 1) for pair in env.group(1).split())
        text = env.group(2)
    argv = shlex.split(text)
    if argv[-1] == "&":
        argv = argv[:-1]  # a server the guide starts in the background: the harness does so anyway
    if argv[:3] == ["python", "-m", "tunesmith"]:
        argv = ["tunesmith", *argv[3:]]
    if argv[0] == "torchrun":
        return "multi-process runs are tested in tests/test_distributed.py"
    if argv[0] != "tunesmith":
        return f"not a tunesmith command ({argv[0]})" if argv[0] not in NOT_RUN else f"{argv[0]}: not run here"
    sub = argv[1] if len(argv) > 1 else ""
    cmd.server = sub == "serve"
    if "--resume" in argv or "--help" in argv:
        return None if "--help" in argv else "resuming is tested in tests/test_train.py"
    if sub in ("train", "run") and any(a in TOO_LONG_FOR_TINY for a in argv):
        return "tool conversations exceed the tiny model's 512 positions; tests/test_eval_tools.py runs them"
    cmd.argv = _cheap(argv, sub, tiny)
    if sub == "chat" and cmd.stdin is None:
        cmd.stdin = "Hello\n/exit\n"
    return None


def _cheap(argv: list[str], sub: str, tiny: str) -> list[str]:
    out, k = [], 0
    flags = CHEAP.get(sub, {})
    while k < len(argv):
        if argv[k] in REPLACED and argv[k] in flags | {"--epochs": ""} and k + 1 < len(argv):
            k += 2  # replaced by the cheap value below
            continue
        out.append(argv[k])
        k += 1
    if sub in ("train", "run") and "--model" not in out and "-m" not in out:
        out += ["--model", tiny]
    if sub == "advise" and "--baseline" in out and "--model" not in out:
        out += ["--model", tiny]
    if sub == "plan" and "--calibrate" not in out:
        out.append("--no-calibrate")
    if sub == "advise" and "--baseline" not in out:
        flags = {}
    if sub == "run" and "--quick" not in out:
        out.append("--quick")
    for flag, value in flags.items():
        out += [flag, value]
    return out


INPUTS = ("train", "run", "data", "eval", "plan", "advise", "merge", "export", "generate", "chat", "serve")


def missing_input(argv: list[str], workdir: Path) -> str | None:
    """The first path the command reads that does not exist (a file the guide only imagines), else None."""
    if len(argv) < 2 or argv[1] not in INPUTS:
        return None
    outputs = {argv[i + 1] for i, a in enumerate(argv[:-1]) if a in ("--out", "-o")}
    for arg in argv[2:]:
        if "=" in arg and not arg.startswith("-"):
            arg = arg.split("=", 1)[1]  # `--adapter NAME=PATH`; `--columns k=v` has no path and stays skipped
        if arg.startswith("-") or arg in outputs or "=" in arg:
            continue
        pathlike = "/" in arg or arg.endswith((".jsonl", ".json", ".csv", ".parquet", ".arrow", ".yaml"))
        if pathlike and not (workdir / arg).exists():
            return arg
    return None
