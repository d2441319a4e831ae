"""GPU readiness: the CUDA paths on one GPU in a few minutes, planned vs measured memory, speed vs TRL.

Runs short `tunesmith train` runs on the built-in model and the support example (batch 8, max length 512,
bf16 autocast) in these modes: LoRA (bf16 frozen base), LoRA + gradient checkpointing, QLoRA (4-bit NF4
base), full fine-tuning (fused AdamW). For each: `torch.cuda.max_memory_allocated` against the planner's
estimate for the same config (both recorded in the run's manifest), and tokens/s. Then TRL SFTTrainer +
PEFT (bf16, its defaults otherwise) on the same GPU and data, for the LoRA tokens/s ratio.

Run on a machine with a GPU:   python bench/gpu_check.py            (about 5 minutes on one H100/H200)
Smoke run of the same code on CPU:   python bench/gpu_check.py --device cpu --steps 2 --only lora
Ends with: RESULT lora_vs_trl_speed=X and one `MODE planned=... measured=... ratio=...` line per mode.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "examples" / "support.jsonl"
BATCH, MAX_LEN = 8, 512
MODES = {
    "lora": [],
    "lora+checkpointing": ["--gradient-checkpointing"],
    "qlora": ["--quantize", "4bit"],
    "full": ["--method", "full"],
}


def run_mode(name: str, flags: list[str], a: argparse.Namespace, out: Path) -> dict:
    """One `tunesmith train` run; the planned and measured peaks come from its manifest."""
    run = out / name.replace("+", "-")
    cmd = [sys.executable, "-m", "tunesmith", "train", str(DATA), "--out", str(run), "--device", a.device,
           "--max-steps", str(a.steps), "--batch-size", str(BATCH), "--max-length", str(MAX_LEN), "--no-guard",
           "--eval-fraction", "0", "--save-every", "100000", *flags]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"})
    if proc.returncode:
        return {"mode": name, "error": proc.stderr.strip().splitlines()[-1:] or ["failed"]}
    manifest = json.loads((run / "manifest.json").read_text())
    result, plan = manifest["result"], manifest.get("plan") or {}
    measured = result.get("peak_cuda_bytes") or result["peak_rss_bytes"]
    return {"mode": name, "planned": plan.get("peak_memory_bytes"), "measured": measured,
            "tokens_per_s": result["tokens_per_s"], "seconds": round(time.perf_counter() - start, 1),
            "fast_paths": manifest.get("fast_paths")}


def run_trl(a: argparse.Namespace) -> dict:
    """TRL SFTTrainer + PEFT LoRA (r 16, all linear layers) on the same data and device, tokens/s."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from tunesmith.model.loading import load_tokenizer, resolve

    rows = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]
    ds = Dataset.from_list([{"prompt": [{"role": "user", "content": r["prompt"]}],
                             "completion": [{"role": "assistant", "content": r["completion"]}]} for r in rows])
    path = resolve("smollm2-135m").path
    cuda = a.device.startswith("cuda")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16 if cuda else torch.float32)
    times: list[float] = []
    tokens: list[int] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            if cuda:
                torch.cuda.synchronize()
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - self.t)

    args = SFTConfig(output_dir=tempfile.mkdtemp(), max_steps=a.steps, per_device_train_batch_size=BATCH,
                     max_length=MAX_LEN, learning_rate=2e-4, bf16=cuda, report_to=[], save_strategy="no",
                     logging_steps=10_000, use_cpu=not cuda)
    lora = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=load_tokenizer(path),
                         peft_config=lora, callbacks=[Clock()])
    inner = trainer.data_collator

    def counting(features):
        batch = inner(features)
        tokens.append(int(batch["attention_mask"].sum()) if "attention_mask" in batch else batch["input_ids"].numel())
        return batch

    trainer.data_collator = counting
    trainer.train()
    skip = min(3, len(times) - 1)
    return {"mode": "trl-lora", "tokens_per_s": sum(tokens[skip:len(times)]) / sum(times[skip:])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--only", default=",".join([*MODES, "trl"]), help="comma-separated: " + ", ".join([*MODES, "trl"]))
    a = p.parse_args()
    if a.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            sys.exit("no CUDA device here: run this on a machine with a GPU (or --device cpu for a smoke run)")
        print(f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}", flush=True)
    wanted = a.only.split(",")
    out = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    results = {}
    for name, flags in MODES.items():
        if name in wanted:
            results[name] = r = run_mode(name, flags, a, out)
            if "error" in r:
                print(f"{name}: FAILED {r['error']}", flush=True)
                continue
            ratio = r["planned"] / r["measured"] if r["planned"] else float("nan")
            print(f"{name} planned={r['planned'] / 2**30:.2f}GiB measured={r['measured'] / 2**30:.2f}GiB "
                  f"ratio={ratio:.3f} tokens_per_s={r['tokens_per_s']:.0f} seconds={r['seconds']} "
                  f"fast_paths={r['fast_paths']}", flush=True)
    if "trl" in wanted:
        results["trl"] = trl = run_trl(a)
        print(f"trl-lora tokens_per_s={trl['tokens_per_s']:.0f}", flush=True)
        if "tokens_per_s" in results.get("lora", {}):
            print(f"RESULT lora_vs_trl_speed={results['lora']['tokens_per_s'] / trl['tokens_per_s']:.3f}")


if __name__ == "__main__":
    main()
