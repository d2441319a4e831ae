"""Shared by the CLI tests: run `tunesmith ARGS` in-process, as a user would type it."""

from __future__ import annotations

import sys

import pytest

from tunesmith.cli import main


def run(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run `tunesmith ARGS` in-process; return (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["tunesmith", *args])
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setenv("TUNESMITH_MALLOC", "system")  # `train` would re-exec itself under mimalloc, replacing pytest
    with pytest.raises(SystemExit) as e:
        main()
    out, err = capsys.readouterr()
    return (e.value.code or 0), out, err


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny-model ops are far too small to gain from threads; on a busy machine they only wait for each other."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
