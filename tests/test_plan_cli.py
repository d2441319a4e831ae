"""`tunesmith plan` end to end through the real entry point: tables, JSON, exit codes, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli_helpers import run

CONFIGS = Path(__file__).parent / "data" / "configs"
LLAMA_7B = str(CONFIGS / "llama-2-7b")




def _data(tmp_path: Path, n: int = 6) -> Path:
    rows = [{"prompt": f"Where is order {i}? It was placed on Monday.", "completion": f"Order {i} ships Friday."}
            for i in range(n)]
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_plan_a_7b_model_from_its_config_alone(monkeypatch, capsys) -> None:
    code, out, err = run(monkeypatch, capsys, "plan", "--model", LLAMA_7B, "--device", "cuda", "--gpu-memory",
                         "80", "--batch-size", "4", "--max-length", "2048", "--lora-r", "8", "--lora-targets",
                         "q_proj,v_proj", "--json")
    assert code == 0, err
    plan = json.loads(out)
    assert (plan["parameters"], plan["trainable_parameters"]) == (6_738_415_616, 4_194_304)
    assert plan["output_bytes"] == 4 * 4_194_304 and plan["device"] == "cuda" and plan["precision"] == "bf16"
    assert plan["recommendation"]["fits"] is True and plan["available_memory_bytes"] == 80 * 2**30


def test_plan_table_with_data_and_calibration_on_the_tiny_model(monkeypatch, capsys, tmp_path, tiny_model_dir):
    code, out, err = run(monkeypatch, capsys, "plan", "--model", str(tiny_model_dir), "--data",
                         str(_data(tmp_path)), "--batch-size", "2", "--max-length", "64", "--device", "cpu")
    assert code == 0, err
    for row in ("parameters", "weights", "lora activations", "peak memory", "comparable to peak RSS",
                "adapter on disk", "9 examples", "measured over real training steps", "time per epoch",
                "the data counts 3 general replay examples that training mixes in"):
        assert row in out, row  # 6 of the user's and 3 replay (auto: 0.3 of the training rows under 1000)
    assert "Recommendation: lora, batch 2 x accumulation 1, max length 64: fits" in out


def test_plan_counts_only_the_users_data_with_replay_off(monkeypatch, capsys, tmp_path, tiny_model_dir):
    code, out, _ = run(monkeypatch, capsys, "plan", "--model", str(tiny_model_dir), "--data", str(_data(tmp_path)),
                       "--replay", "0", "--no-calibrate", "--json", "--device", "cpu")
    plan = json.loads(out)
    assert code == 0 and plan["data"]["examples"] == 6 and not any("replay" in n for n in plan["notes"])


def test_plan_without_calibration_uses_flops(monkeypatch, capsys, tiny_model_dir) -> None:
    code, out, _ = run(monkeypatch, capsys, "plan", "--model", str(tiny_model_dir), "--no-calibrate", "--json",
                       "--device", "cpu")
    plan = json.loads(out)
    assert code == 0 and plan["speed_source"] == "matmul" and plan["seconds_per_epoch"] is None


def test_plan_counts_tokens_with_the_builtin_tokenizer_for_a_config_only_model(monkeypatch, capsys, tmp_path):
    code, out, _ = run(monkeypatch, capsys, "plan", "--model", LLAMA_7B, "--data", str(_data(tmp_path)),
                       "--device", "cuda", "--gpu-memory", "80", "--json")
    plan = json.loads(out)
    assert code == 0 and plan["data"]["examples"] == 6 + 3  # with the replay examples training mixes in
    assert f"tokens counted with smollm2-135m's tokenizer: '{LLAMA_7B}' has none here" in plan["notes"]


def test_plan_exits_1_when_nothing_fits(monkeypatch, capsys) -> None:
    code, out, _ = run(monkeypatch, capsys, "plan", "--model", LLAMA_7B, "--method", "full", "--device", "cuda",
                       "--gpu-memory", "3", "--max-length", "512")
    assert code == 1
    assert "does not fit" in out and "use a machine with more memory" in out


def test_plan_lists_what_fits_a_24_gib_card_as_commands(monkeypatch, capsys) -> None:
    code, out, _ = run(monkeypatch, capsys, "plan", "--model", LLAMA_7B, "--device", "cuda", "--gpu-memory", "24",
                       "--batch-size", "1", "--max-length", "512")
    assert code == 0
    assert "Configurations that fit 24.00 GiB per GPU, cheapest first" in out
    assert "  1. LoRA: " in out and "LoRA, 4bit base (QLoRA)" in out
    assert f"tunesmith train DATA --model {LLAMA_7B} --quantize 4bit --batch-size 1 --max-length 512" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "nope"], "error: model 'nope': not a local folder, a built-in model (smollm2-135m) or a hub "
                              "id like 'org/name'"),
        (["--method", "qlora"], "error: config: method: 'qlora' is not one of lora, full"),
        (["--device", "cpu", "--gpu-memory", "24"], "error: --gpu-memory 24: give a positive size in GB, with "
                                                   "--device cuda"),
        (["--lora-targets", "c_attn"], "error: LoRA target_modules c_attn: not a linear layer of this model"),
        (["--data", "missing.jsonl"], "error: missing.jsonl: file not found"),
    ],
)
def test_plan_errors_are_one_line_and_exit_2(monkeypatch, capsys, args: list[str], message: str) -> None:
    code, _, err = run(monkeypatch, capsys, "plan", "--no-calibrate", *args)
    assert code == 2
    assert err.startswith(message) and len(err.strip().splitlines()) == 1 and "Traceback" not in err
