"""The README and the guides cannot rot: every command they show runs (tiny model, cheapest flags).

The parsing is tested fast; running every command of every guide is slow (about 10 minutes on 2 cores).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from docs_commands import Command, commands, missing_input, prepare

ROOT = Path(__file__).resolve().parent.parent
DOCS = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]


GUIDE = """text
```console
$ tunesmith data check a.jsonl \\
    --max-length 64
error: a.jsonl: x
output line
$ tunesmith eval runs/x   # a comment
```
```python
print(1)
```
```console
tunesmith train d.jsonl --out runs/x
```
"""


def test_commands_are_read_from_console_blocks(tmp_path):
    doc = tmp_path / "guide.md"
    doc.write_text(GUIDE)
    found = commands(doc, tmp_path)
    assert [(c.text, c.expects_error) for c in found] == [
        ("tunesmith data check a.jsonl --max-length 64", True), ("tunesmith eval runs/x", False),
        ("tunesmith train d.jsonl --out runs/x", False)]


def test_commands_are_made_cheap_but_keep_their_meaning():
    cmd = Command("x.md", 1, "tunesmith train examples/support.jsonl --max-steps 40 --out runs/s")
    assert prepare(cmd, "/tiny") is None
    assert cmd.argv == ["tunesmith", "train", "examples/support.jsonl", "--out", "runs/s", "--model", "/tiny",
                        "--max-steps", "2", "--batch-size", "2", "--max-length", "96", "--threads", "1",
                        "--eval-every", "1"]
    assert prepare(Command("x.md", 1, "pip install foo"), "/tiny") == "pip: not run here"
    piped = Command("x.md", 1, r"printf 'hi\n/exit\n' | tunesmith chat runs/s --max-tokens 40")
    assert prepare(piped, "/tiny") is None and piped.stdin == "hi\n/exit\n"
    assert piped.argv == ["tunesmith", "chat", "runs/s", "--max-tokens", "4"]


def test_every_readme_command_is_one_the_docs_test_runs():
    readme = [c for c in commands(ROOT / "README.md", ROOT) if c.text.startswith("tunesmith")]
    assert readme, "the README shows no tunesmith command"
    assert all(prepare(c, "/tiny") is None for c in readme)


@pytest.fixture
def workdir(tmp_path_factory, tiny_model_dir) -> Path:
    """A fresh checkout-like folder per guide: each guide is followed on its own, from the repository's root,
    so one guide's `runs/support` is not in the way of the next (a repeat inside one guide still fails)."""
    work = tmp_path_factory.mktemp("docs-workspace")
    shutil.copytree(ROOT / "examples", work / "examples")
    (work / "tests").mkdir()
    (work / "tests" / "data").symlink_to(ROOT / "tests" / "data")
    return work


def _run(cmd: Command, work: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200", "TUNESMITH_MALLOC": "system", **cmd.env}
    argv = [sys.executable, "-m", "tunesmith", *cmd.argv[1:]]
    if cmd.server:
        return _serve(argv, work, env)
    return subprocess.run(argv, cwd=work, input=cmd.stdin, capture_output=True, text=True, timeout=900, env=env)


def _serve(argv: list[str], work: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Start the server on a free port, wait until /health answers, stop it; its output as if it had run."""
    import socket
    import time

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([*argv, "--port", str(port)], cwd=work, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline, up = time.time() + 300, False
    while time.time() < deadline and proc.poll() is None and not up:
        try:
            up = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.terminate()
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(argv, 0 if up else (proc.returncode or 1), out, err)


@pytest.mark.slow
@pytest.mark.parametrize("doc", DOCS)
def test_every_command_of_the_guide_runs(doc: str, workdir: Path, tiny_model_dir: Path) -> None:
    ran, skipped = 0, []
    for cmd in commands(ROOT / doc, ROOT):
        why = prepare(cmd, str(tiny_model_dir))
        if why is None and not cmd.expects_error and (path := missing_input(cmd.argv, workdir)) is not None:
            why = f"{path}: a file the guide only imagines"
        if why is not None:
            skipped.append(f"{doc}:{cmd.line}: {cmd.text[:60]} ({why})")
            continue
        proc = _run(cmd, workdir)
        where = f"{doc}:{cmd.line}: {' '.join(cmd.argv)}"
        if cmd.expects_error:
            assert proc.returncode == 2, f"{where}\nexpected an error, got {proc.returncode}\n{proc.stdout[-1500:]}"
            assert proc.stderr.startswith("error:") and "Traceback" not in proc.stderr, where
        else:
            assert proc.returncode in (0, 1), f"{where}\n{proc.stdout[-1500:]}\n{proc.stderr[-2500:]}"
            assert "Traceback" not in proc.stderr, f"{where}\n{proc.stderr[-2500:]}"
        ran += 1
    print(f"{doc}: {ran} commands ran; skipped:\n  " + "\n  ".join(skipped))
