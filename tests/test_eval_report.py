"""Report files: written, consistent, self-contained HTML with the plots embedded; rendered by Chromium if present."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from dataclasses import asdict
from pathlib import Path

import pytest

from tunesmith.evaluate.report import fmt_delta, fmt_value, suite_table, write
from tunesmith.evaluate.suite import Task, TaskScores
from tunesmith.evaluate.target import TargetScores, compare_target
from tunesmith.evaluate.verdict import Thresholds, compare

PNG = b"\x89PNG\r\n\x1a\n"


def _report() -> dict:
    acc = Task("capitals", "general", "greedy", "accuracy", True, tuple({"id": f"c/{i}"} for i in range(20)))
    ppl = Task("prose", "general", "perplexity", "perplexity", False, tuple({"id": f"p/{i}"} for i in range(4)))
    base = {"capitals": TaskScores(acc, [1.0] * 20, [1.0] * 20), "prose": TaskScores(ppl, [40.0] * 4, [20.0] * 4)}
    tuned = {"capitals": TaskScores(acc, [1.0] * 8 + [0.0] * 12, [1.0] * 20),
             "prose": TaskScores(ppl, [44.0] * 4, [20.0] * 4)}
    examples = [[{"role": "user", "content": f"Question {i}? <script>alert(1)</script>"},
                 {"role": "assistant", "content": f"Answer number {i} is here."}] for i in range(4)]
    target = compare_target(
        examples,
        TargetScores([(30.0, 10)] * 4, ["no idea", "Answer number 1 is here.", "Answer", "nothing"]),
        TargetScores([(20.0, 10)] * 4, ["Answer number 0 is here.", "no idea", "Answer number 2", "nothing"]),
    )
    comparisons = compare(base, tuned, Thresholds())
    return {
        "tunesmith_version": "0.1.0", "created": "2026-01-01T00:00:00+00:00",
        "tuned": {"label": "run", "source": "tiny + run/adapter"}, "base": {"label": "tiny", "source": "tiny"},
        "run_dir": None, "data": "eval.jsonl", "verdict": "fail", "thresholds": asdict(Thresholds()),
        "suite": [c.to_dict() for c in comparisons], "target_task": target, "seconds": 1.5,
    }


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    records = [{"step": s, "loss": 3 / s} for s in range(1, 21)]
    records += [{"step": s, "eval_loss": 2.5 - s / 40, "guard/capitals": 0.5, "guard/prose_ppl": 20.0}
                for s in (5, 10, 15, 20)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + "not json\n")
    (run / "manifest.json").write_text(json.dumps({"method": "lora", "data": {"train_examples": 90},
                                                   "base_model": {"name": "smollm2-135m", "kind": "builtin"}}))
    (run / "config.yaml").write_text("method: lora\nlr: 0.0002\n")
    (run / "data").mkdir()
    chat = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": "Sure."}]}
            for q in ("Reset my password?", "Reset my password?", "Where is my order?")]
    (run / "data" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in chat))
    (run / "data" / "eval.jsonl").write_text(json.dumps(chat[2]) + "\n")
    return run


def test_formats():
    assert fmt_value(0.4167, relative=False) == "41.7 %" and fmt_value(24.444, relative=True) == "24.44"
    assert fmt_delta(-0.033, (-0.08, 0.013), relative=False) == "-3.3 pts [-8.0, +1.3]"
    assert fmt_delta(0.048, (0.031, 0.065), relative=True) == "+4.8 % [+3.1, +6.5]"
    assert fmt_delta(None, None, relative=False) == "-"


def test_target_comparison_ranks_wins_and_regressions():
    target = _report()["target_task"]
    assert target["wins"] == [0, 2] and target["regressions"] == [1]
    metrics = {m["name"]: m for m in target["metrics"]}
    assert metrics["eval_loss"]["base"] == pytest.approx(3.0) and metrics["eval_loss"]["tuned"] == pytest.approx(2.0)
    assert metrics["exact_match"]["tuned"] == pytest.approx(0.25)


def test_report_files_are_written_and_agree(tmp_path, run_dir):
    paths = write(_report(), tmp_path / "out", run_dir)
    saved = json.loads(paths["json"].read_text())
    assert saved["verdict"] == "fail" and saved["figures"] == ["curves.png", "suite.png", "target.png"]
    assert saved["run"]["data"] == {"train_examples": 90}
    assert "\nmethod: lora\n" in saved["run"]["config"] and "\nlr: 0.0002\n" in saved["run"]["config"]
    assert saved["run"]["quality"]["level"] == "problems" and saved["run"]["quality"]["examples"] == 3
    for name in saved["figures"]:
        assert (tmp_path / "out" / name).read_bytes().startswith(PNG)
    md = paths["md"].read_text()
    assert "**Verdict: FAIL**" in md and "![suite](suite.png)" in md
    assert "| capitals | accuracy | 20 | 100.0 % | 40.0 % | -60.0 pts [" in md
    assert "| prose | perplexity | 4 | 7.39 | 9.03 | +22.1 % [+22.1, +22.1] | warn |" in md
    assert "capitals: fail: worse by 60.0 points, past the fail threshold 10.0 points." in md
    assert "## Training data quality" in md and "warnings: 1 group of exact duplicates" in md
    assert "problems: 1 of 1 eval examples ask a prompt the training set contains" in md
    assert "### Largest wins" in md and "### Largest regressions" in md and "lr: 0.0002" in md


def test_html_is_self_contained_and_embeds_the_plots(tmp_path, run_dir):
    html = write(_report(), tmp_path / "out", run_dir)["html"].read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html)
    assert "url(" not in html and "<script" not in html and "<link" not in html and "@import" not in html
    images = re.findall(r'<img alt="(\w+)" src="data:image/png;base64,([A-Za-z0-9+/=]+)">', html)
    assert [name for name, _ in images] == ["curves", "suite", "target"]
    assert all(base64.b64decode(data).startswith(PNG) for _, data in images)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html  # user text is escaped
    assert 'class="verdict fail"' in html


def test_without_a_base_there_are_no_deltas(tmp_path):
    report = _report()
    report.update(base=None, verdict=None, target_task=None)
    for row in report["suite"]:
        row.update(base=None, delta=None, ci=None, verdict=None, lost=[])
    paths = write(report, tmp_path / "single")
    assert json.loads(paths["json"].read_text())["figures"] == []
    md = paths["md"].read_text()
    assert "Verdict" not in md and "Base: none (scored alone)." in md and "| capitals | accuracy | 20 | 40.0 % |" in md


CHROMIUM = next((p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser") if Path(p).exists()),
                shutil.which("chromium"))


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed")
def test_html_renders_in_headless_chromium(tmp_path, run_dir):
    from matplotlib.image import imread

    html = write(_report(), tmp_path / "out", run_dir)["html"]
    shot = tmp_path / "shot.png"
    subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
         "--window-size=1200,2400", f"--screenshot={shot}", html.as_uri()],
        check=True, capture_output=True, timeout=120,
    )
    pixels = imread(shot)[..., :3]
    colours = {tuple(p) for p in (pixels[::8, ::8].reshape(-1, 3) * 255).round().astype(int).tolist()}
    assert len(colours) > 50  # text, tables and plots drew, not a blank page


def test_the_suite_plot_draws_what_the_table_prints():
    """Each task's point and interval are the table's own numbers, same sign (perplexity included)."""
    from tunesmith.evaluate.plots import delta_points

    rows = _report()["suite"]
    _, table = suite_table(rows)
    for (label, x, lo, hi), row, r in zip(delta_points(rows), table, rows, strict=True):
        assert label.startswith(r["task"] + " (")
        assert row[5] == fmt_delta(x / 100, (lo / 100, hi / 100), r["relative"])  # the same three numbers
    prose = next(p for p in delta_points(rows) if p[0].startswith("prose"))
    assert prose[1] > 0 and "lower is better" in prose[0]  # a perplexity rise is drawn as a rise


def test_training_data_table_reads_as_text_not_json(tmp_path, run_dir):
    manifest = json.loads((run_dir / "manifest.json").read_text())
    manifest["data"] = {"train": {"path": "support.jsonl", "sha256": "sha256:ab"}, "train_examples": 90}
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    md = write(_report(), tmp_path / "out", run_dir)["md"].read_text()
    assert "| train | path: support.jsonl; sha256: sha256:ab |" in md and "{" not in md.split("## Training data")[1]


def test_the_report_names_the_shape_format_collapse_was_scored_with(tmp_path):
    from tunesmith.evaluate.shape import learn_shape

    shape = learn_shape([f"19{n:02d}-01-01" for n in range(12)])
    scored = {**_report(), "shape": {"shape": shape.to_dict(), "describe": shape.describe(), "source": "d.jsonl"}}
    md = write(scored, tmp_path / "a")["md"].read_text()
    assert "Format collapse: replies in the fine-tune's output shape, the form 9-9-9 (from d.jsonl)." in md
    unscored = {**_report(), "shape": {"shape": None, "source": "d.jsonl: its replies share no narrow form"}}
    md = write(unscored, tmp_path / "b")["md"].read_text()
    assert "Format collapse not scored: d.jsonl: its replies share no narrow form." in md
