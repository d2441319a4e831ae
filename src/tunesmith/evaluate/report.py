"""Write the evaluation report: report.json (everything), report.md and a self-contained report.html.

The Markdown and HTML are rendered from one list of blocks, so they always say the same thing. The HTML
embeds its figures as base64 PNG and loads nothing from anywhere: it opens offline, and can be mailed.
"""

from __future__ import annotations

import base64
import contextlib
import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tunesmith.evaluate import plots

Block = tuple[Any, ...]  # ("h2", text) | ("p", text) | ("table", header, rows) | ("img", name) | ("pre", text)


def fmt_value(value: float | None, relative: bool) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if relative else f"{100 * value:.1f} %"


def fmt_delta(delta: float | None, ci: Sequence[float] | None, relative: bool) -> str:
    """'-3.3 pts [-8.0, +1.3]' for rates, '+4.8 % [+3.1, +6.5]' for perplexity."""
    if delta is None or ci is None:
        return "-"
    unit = "%" if relative else "pts"
    return f"{100 * delta:+.1f} {unit} [{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]"


def suite_table(rows: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Task rows; without a base (a model scored alone) only its values."""
    if all(r["base"] is None for r in rows):
        return ["task", "metric", "items", "value"], [
            [r["task"], r["metric"], str(r["n"]), fmt_value(r["tuned"], r["relative"])] for r in rows
        ]
    header = ["task", "metric", "items", "base", "tuned", "delta [CI]", "verdict"]
    body = [
        [r["task"], r["metric"], str(r["n"]), fmt_value(r["base"], r["relative"]),
         fmt_value(r["tuned"], r["relative"]), fmt_delta(r["delta"], r["ci"], r["relative"]), r["verdict"] or "-"]
        for r in rows
    ]
    return header, body


def target_table(metrics: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    def value(m: dict[str, Any], key: str) -> str:
        v = m[key]
        if v is None:
            return "-"
        return f"{v:.3f}" if m["name"] in ("eval_loss", "perplexity") else f"{100 * v:.1f} %"

    def delta(m: dict[str, Any]) -> str:
        if m["delta"] is None:
            return "-"
        if m["name"] == "eval_loss":
            return f"{m['delta']:+.3f} [{m['ci'][0]:+.3f}, {m['ci'][1]:+.3f}]"
        return fmt_delta(m["delta"], m["ci"], m["relative"])

    return ["metric", "base", "tuned", "delta [CI]"], [
        [m["name"], value(m, "base"), value(m, "tuned"), delta(m)] for m in metrics
    ]


FORM_METRICS = ("fact_recall", "exact_match", "token_f1", "rouge_l", "eval_loss")


def forms_table(forms: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Prompt-only, RAG, fine-tuned, fine-tuned + RAG: one row each, a column per target metric."""
    names = [n for n in FORM_METRICS if any(f.get(n) is not None for f in forms)]

    def cell(f: dict[str, Any], name: str) -> str:
        v = f.get(name)
        return "-" if v is None else f"{v:.3f}" if name == "eval_loss" else f"{100 * v:.1f} %"

    return ["form", *names], [[f["form"], *(cell(f, n) for n in names)] for f in forms]


def facts_table(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Per question with facts: the facts, and whether each form's reply stated them (✓) or not (·)."""
    plain, rag = report["target_task"], report.get("target_task_rag")
    columns = [("prompt-only", plain, "fact_base"), ("RAG", rag, "fact_base"), ("fine-tuned", plain, "fact_tuned"),
               ("fine-tuned + RAG", rag, "fact_tuned")]
    shown = [(name, section["per_example"], key) for name, section, key in columns
             if section and any(r.get(key) is not None for r in section["per_example"])]
    body = []
    for i, row in enumerate(plain["per_example"]):
        if row.get("facts"):
            facts = "; ".join(" / ".join(alternatives) for alternatives in row["facts"])
            marks = ["✓" if rows[i].get(key) else "·" for _, rows, key in shown]
            body.append([_clip(row["prompt"], 100), facts, *marks])
    return ["question", "facts", *(name for name, _, _ in shown)], body


def _clip(text: str | None, n: int = 300) -> str:
    text = "" if text is None else " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def _examples(target: dict[str, Any], which: str) -> tuple[list[str], list[list[str]]]:
    rows = target["per_example"]
    key, label = ("score", "score") if target.get("kind") == "tool_calls" else ("rouge_l", "ROUGE-L")
    return ["#", "prompt", "reference", "base", "tuned", f"{label} base → tuned"], [
        [str(i), _clip(rows[i]["prompt"]), _clip(rows[i]["reference"]), _clip(rows[i]["base"]),
         _clip(rows[i]["tuned"]), f"{rows[i][key + '_base']:.2f} → {rows[i][key + '_tuned']:.2f}"]
        for i in target[which]
    ]


def blocks(report: dict[str, Any], figures: dict[str, bytes]) -> list[Block]:
    """The report's content, in reading order."""
    out: list[Block] = [("h1", f"Evaluation of {report['tuned']['label']}")]
    base = report["base"]
    out.append(("p", f"Tuned: {report['tuned']['source']}. Base: {base['source'] if base else 'none (scored alone)'}."))
    if report["verdict"]:
        out.append(("verdict", report["verdict"]))
    if "curves" in figures:
        out += [("h2", "Training"), ("img", "curves")]
    if report["suite"]:
        out += [("h2", "Broad suite"), ("table", *suite_table(report["suite"]))]
        flagged = [r for r in report["suite"] if r["verdict"] in ("warn", "fail")]
        out += [("p", f"{r['task']}: {r['verdict']}: {r['reason']}.") for r in flagged]
        lost = [f"{r['task']}: {', '.join(r['lost'][:5])}" for r in report["suite"] if r["lost"]]
        if lost:
            out.append(("p", "Items the base got right and the tuned model no longer does: " + "; ".join(lost)))
        shape = report.get("shape")
        if shape:
            out.append(("p", f"Format collapse: replies in the fine-tune's output shape, {shape['describe']} "
                             f"(from {shape['source']})." if shape.get("shape") else
                             f"Format collapse not scored: {shape['source']}."))
        if "suite" in figures:
            out.append(("img", "suite"))
    target = report.get("target_task")
    if target:
        out += [("h2", f"Target task ({target['examples']} examples from {report['data']})"),
                ("table", *target_table(target["metrics"]))]
        if "target" in figures:
            out.append(("img", "target"))
        for which, title in (("wins", "Largest wins"), ("regressions", "Largest regressions")):
            if target[which]:
                out += [("h3", title), ("table", *_examples(target, which))]
    out += _forms_blocks(report)
    out += _run_blocks(report.get("run") or {})
    t = report["thresholds"]
    out.append(("p", f"Thresholds: warn at {100 * t['warn']:.0f} / fail at {100 * t['fail']:.0f} points, "
                     f"perplexity +{100 * t['ppl_warn']:.0f} % / +{100 * t['ppl_fail']:.0f} %; "
                     f"{100 * t['confidence']:.0f} % bootstrap intervals ({t['resamples']} draws). "
                     f"Took {report.get('seconds', 0)} s. tunesmith {report['tunesmith_version']}."))
    return out


def _forms_blocks(report: dict[str, Any]) -> list[Block]:
    """Prompt-only, RAG, fine-tuned and fine-tuned + RAG side by side, and which facts each one stated."""
    out: list[Block] = []
    r = report.get("retrieval")
    if report.get("forms") and r:
        out += [("h2", "Prompt-only, RAG, fine-tuned, fine-tuned + RAG"),
                ("p", f"RAG: up to {r['k']} notes ({r['budget_tokens']} tokens at most) retrieved with BM25 from "
                      f"{r['source']} ({r['notes']} notes; {r['excluded_rows']} rows left out as copies of the "
                      "questions scored) into a system message before the question."),
                ("table", *forms_table(report["forms"]))]
    target = report.get("target_task")
    if target and any(row.get("facts") for row in target["per_example"]):
        out += [("h3", "Facts per question"), ("table", *facts_table(report))]
    return out


def _run_blocks(run: dict[str, Any]) -> list[Block]:
    out: list[Block] = []
    data = run.get("data")
    if isinstance(data, dict) and data:
        rows = [[str(k).replace("_", " "), _clip(_plain(v), 200)] for k, v in data.items()]
        out += [("h2", "Training data"), ("table", ["field", "value"], rows)]
    quality = run.get("quality")
    if quality:
        out += [("h2", "Training data quality"),
                ("p", f"{quality['level']} ({quality['examples']} examples; as `tunesmith data check` reports it)")]
        out += [("p", f"{kind}: {text}") for kind in ("problems", "warnings") for text in quality[kind]]
    if run.get("config"):
        out += [("h2", "Configuration"), ("pre", run["config"])]
    return out


def _plain(value: Any) -> str:
    """A manifest value for a table cell: nested fields as 'key: value' pairs, not JSON."""
    if isinstance(value, dict):
        return "; ".join(f"{str(k).replace('_', ' ')}: {_plain(v)}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(_plain(v) for v in value)
    return str(value)


def to_markdown(doc: Sequence[Block]) -> str:
    lines: list[str] = []
    for kind, *rest in doc:
        if kind in ("h1", "h2", "h3"):
            lines += ["#" * int(kind[1]) + " " + rest[0], ""]
        elif kind == "p":
            lines += [rest[0], ""]
        elif kind == "verdict":
            lines += [f"**Verdict: {rest[0].upper()}**", ""]
        elif kind == "img":
            lines += [f"![{rest[0]}]({rest[0]}.png)", ""]
        elif kind == "pre":
            lines += ["```", rest[0].rstrip(), "```", ""]
        elif kind == "table":
            header, rows = rest
            cell = lambda s: str(s).replace("|", "\\|")  # noqa: E731
            lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows] + [""]
    return "\n".join(lines)


_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:14px}td,th{border:1px solid #ccc;padding:4px 8px;
vertical-align:top;text-align:left}th{background:#f3f3f3}img{max-width:100%}pre{background:#f6f6f6;
padding:1em;overflow:auto}.verdict{font-size:22px;font-weight:bold;padding:.4em .8em;display:inline-block;
color:#fff;border-radius:4px}.pass{background:#2e7d32}.warn{background:#ef8f00}.fail{background:#c62828}"""


def to_html(doc: Sequence[Block], figures: dict[str, bytes]) -> str:
    e = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{e(doc[0][1])}</title><style>{_CSS}</style></head><body>"]
    for kind, *rest in doc:
        if kind in ("h1", "h2", "h3", "p"):
            parts.append(f"<{kind}>{e(rest[0])}</{kind}>")
        elif kind == "verdict":
            parts.append(f'<p class="verdict {e(rest[0])}">Verdict: {e(rest[0].upper())}</p>')
        elif kind == "img":
            data = base64.b64encode(figures[rest[0]]).decode()
            parts.append(f'<p><img alt="{e(rest[0])}" src="data:image/png;base64,{data}"></p>')
        elif kind == "pre":
            parts.append(f"<pre>{e(rest[0])}</pre>")
        elif kind == "table":
            header, rows = rest
            parts.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>")
            parts += ["<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>" for row in rows]
            parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts)


def run_info(run_dir: Path | None) -> dict[str, Any]:
    """What the run folder says about its data and config (empty when there is no run folder)."""
    from tunesmith.errors import TunesmithError
    from tunesmith.runfolder import RunFolder

    if run_dir is None:
        return {}
    run, info = RunFolder(run_dir), {}
    with contextlib.suppress(TunesmithError):
        info["data"] = run.manifest().get("data")
    with contextlib.suppress(TunesmithError):
        info["config"] = run.config().to_yaml()
    train_file = run.data_file("train")
    info["quality"] = data_quality(train_file, run.data_file("eval")) if train_file else None
    return info


def data_quality(train: Path, eval_file: Path | None) -> dict[str, Any] | None:
    """`tunesmith data check`'s verdict on the training data the run stored (leakage into eval included)."""
    from tunesmith.data.formats import load_dataset
    from tunesmith.data.quality import build_report
    from tunesmith.errors import DataError

    try:
        report = build_report(load_dataset(train), None,
                              eval_data=load_dataset(eval_file) if eval_file is not None else None)
    except DataError as e:
        return {"level": "problems", "problems": [f"unreadable: {e.problems[0]}"], "warnings": [], "examples": 0}
    v = report.verdict
    return {"level": v.level, "problems": v.problems, "warnings": v.warnings, "examples": report.count}


def write(report: dict[str, Any], out: Path, run_dir: Path | None = None) -> dict[str, Path]:
    """Write report.json, report.md, report.html and the figures' PNGs into `out`; return their paths."""
    from tunesmith.runfolder import RunFolder

    out.mkdir(parents=True, exist_ok=True)
    report["run"] = run_info(run_dir)
    drawn = {
        "curves": plots.curves(RunFolder(run_dir).metrics()) if run_dir else None,
        "suite": plots.suite_deltas(report["suite"]),
        "target": plots.target_bars(report["target_task"]["metrics"]) if report.get("target_task") else None,
    }
    figures = {k: v for k, v in drawn.items() if v is not None}
    report["figures"] = sorted(f"{k}.png" for k in figures)
    paths = {"json": out / "report.json", "md": out / "report.md", "html": out / "report.html"}
    for name, png in figures.items():
        (out / f"{name}.png").write_bytes(png)
    paths["json"].write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    doc = blocks(report, figures)
    paths["md"].write_text(to_markdown(doc), encoding="utf-8")
    paths["html"].write_text(to_html(doc, figures), encoding="utf-8")
    return paths
