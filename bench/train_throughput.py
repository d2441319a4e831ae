"""Training throughput: tunesmith vs TRL SFTTrainer + PEFT (LoRA) and vs the transformers Trainer (full).

Every contender runs in its own subprocess of this one invocation (so peak RSS is its own), on the built-in
SmolLM2-135M, the same data (examples/support.jsonl as chat prompt/completion), batch 8, max length 512,
completion-only loss. LoRA: r=16, alpha=32, all linear layers. The references use their defaults except
`bf16=False` (TRL's default bf16 refuses a CPU) and no reporting/saving.

Contenders: tunesmith-lora and tunesmith-full (as `tunesmith train` runs them: `precision auto`, which is bf16
on a CPU with AMX, else fp32; under mimalloc when installed); trl-lora (TRL's defaults); trl-lora-tuned,
trl-lora-padfree and trl-lora-bf16 (TRL by a user who tunes it for this CPU: gradient checkpointing off,
under mimalloc too; TRL's loss is already its fused chunked LM head), the first with
`train_sampling_strategy="group_by_length"` so a batch pads little, the second padding-free (each batch one
row, position ids restarting per example: with `use_cache=False`, as TRL trains, transformers builds a
block-diagonal SDPA mask from them, so it is exact; TRL needs `max_length=None` for it, which truncates
nothing here: the longest example has 175 tokens), the third the first in bf16 autocast (`bf16=True,
use_cpu=True`: what a user on an AMX CPU would turn on). `lora_vs_tuned_ratio` is against the fastest of
the three. Not `packing`: it fills rows of max_length with several examples, a different step.
trainer-full (the transformers Trainer, defaults) and trainer-full-bf16 (the same with `bf16=True,
use_cpu=True`); `full_speed_ratio` is against the defaults, `full_vs_bf16_ratio` against the bf16 one.

Measured over steady-state steps (the first `--skip` steps are excluded on every side):
- tokens/s: real (non-pad) tokens per second of training-step time;
- peak RSS: the subprocess's maximum resident set size;
- peak fraction: achieved model FLOP/s over this machine's measured matmul peak in the number format
  tunesmith-lora trained in (the best of 1024- and 2048-square products); fp32_peak_fraction: over the fp32
  peak, whatever the format.

Run:  python bench/train_throughput.py [--steps 30] [--skip 3] [--threads N] [--paired] [--only A,B]
Smoke test (seconds, not figures):  --steps 3 --skip 1 --batch 2 --max-length 64 --threads 1
Ends with: RESULT lora_speed_ratio=X lora_vs_tuned_ratio=T lora_rss_ratio=Y full_speed_ratio=Z full_vs_bf16_ratio=B
peak_fraction=W fp32_peak_fraction=F,
then each contender's tokens/s (NAME_tps) and peak RSS in MiB (NAME_rss_mib).
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
BATCH, MAX_LEN, R, ALPHA = 8, 512, 16, 32  # defaults of --batch and --max-length


def rows() -> list[dict]:
    return [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]


def peak_rss() -> int:
    from tunesmith.train.allocator import peak_rss_bytes

    return peak_rss_bytes()


def steady(times: list[float], tokens: list[int], skip: int) -> float:
    """tokens/s over steps after `skip`; times[i] is the duration of step i."""
    return sum(tokens[skip:]) / sum(times[skip:])


# ----------------------------------------------------------------------------------------------- workers
def run_tunesmith(method: str, a: argparse.Namespace) -> dict:
    from tunesmith.cli.common import quiet_libraries
    from tunesmith.config import load_config
    from tunesmith.runfolder import RunFolder
    from tunesmith.train.run import train

    quiet_libraries()
    out = Path(tempfile.mkdtemp(prefix="bench-")) / "run"
    cfg = load_config(None, data=str(DATA), out=str(out), method=method, max_steps=a.steps, batch_size=a.batch,
                      max_length=a.max_length, lr=2e-4 if method == "lora" else 2e-5, eval_fraction=0.0,
                      guard=False, save_every=10_000, lora_r=R, lora_alpha=ALPHA, lora_dropout=0.0,
                      threads=a.threads)
    train(cfg)
    recs = [r for r in RunFolder(out).metrics() if "loss" in r]
    times = [r["tokens"] - (recs[i - 1]["tokens"] if i else 0) for i, r in enumerate(recs)]
    durations = [r["elapsed"] - (recs[i - 1]["elapsed"] if i else 0) for i, r in enumerate(recs)]
    return {"tokens_per_s": steady(durations, times, a.skip), "peak_rss": peak_rss(),
            "targets_share": _targets_share(a.max_length), "loss_last": recs[-1]["loss"],
            "precision": RunFolder(out).manifest()["precision"]}


def _targets_share(max_length: int) -> float:
    """Share of real tokens that are supervised (the LM head runs only there)."""
    from tunesmith.data.tokenize import encode
    from tunesmith.model.loading import load_tokenizer

    tok = load_tokenizer("smollm2-135m")
    encs = [encode(tok, [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["completion"]}],
                   max_length) for r in rows()]
    return sum(e.supervised for e in encs) / sum(len(e.input_ids) for e in encs)


def _chat_dataset():
    from datasets import Dataset

    return Dataset.from_list([{"prompt": [{"role": "user", "content": r["prompt"]}],
                               "completion": [{"role": "assistant", "content": r["completion"]}]} for r in rows()])


class _Clock:
    """Step durations (TrainerCallback) and real tokens per batch (wrapped collator)."""

    def __init__(self):
        self.t = time.perf_counter()
        self.times: list[float] = []
        self.tokens: list[int] = []
        self.pending = 0

    def collate(self, inner):
        def wrapped(features):
            batch = inner(features)
            self.pending += int(batch["attention_mask"].sum()) if "attention_mask" in batch else int(
                batch["input_ids"].numel())
            return batch
        return wrapped

    def callback(self):
        from transformers import TrainerCallback

        clock = self

        class CB(TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):
                clock.t = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):
                clock.times.append(time.perf_counter() - clock.t)
                clock.tokens.append(clock.pending)
                clock.pending = 0
        return CB()


TUNINGS = {"defaults": {},
           "tuned": {"gradient_checkpointing": False, "train_sampling_strategy": "group_by_length"},
           "padfree": {"gradient_checkpointing": False, "padding_free": True, "max_length": None},
           "bf16": {"gradient_checkpointing": False, "train_sampling_strategy": "group_by_length", "bf16": True,
                    "use_cpu": True}}


def run_trl_lora(a: argparse.Namespace, tuning: str) -> dict:
    """TRL SFTTrainer + PEFT with its defaults or one of the hand tunings in TUNINGS."""
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from tunesmith.model.loading import load_tokenizer, resolve

    path = resolve("smollm2-135m").path
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    settings = {"max_length": a.max_length, "bf16": False, **TUNINGS[tuning]}
    args = SFTConfig(output_dir=tempfile.mkdtemp(), max_steps=a.steps, per_device_train_batch_size=a.batch,
                     learning_rate=2e-4, report_to=[], save_strategy="no", logging_steps=1_000,
                     dataloader_num_workers=0, **settings)
    peft_config = LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=0.0, target_modules="all-linear",
                             task_type="CAUSAL_LM")
    clock = _Clock()
    trainer = SFTTrainer(model=model, args=args, train_dataset=_chat_dataset(), peft_config=peft_config,
                         processing_class=load_tokenizer(path), callbacks=[clock.callback()])
    trainer.data_collator = clock.collate(trainer.data_collator)
    trainer.train()
    return {"tokens_per_s": steady(clock.times, clock.tokens, a.skip), "peak_rss": peak_rss()}


def run_trainer_full(a: argparse.Namespace, bf16: bool = False) -> dict:
    """The transformers Trainer with its defaults, or with bf16 autocast on the CPU."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, DataCollatorForSeq2Seq, Trainer, TrainingArguments

    from tunesmith.data.tokenize import encode
    from tunesmith.model.loading import load_tokenizer, resolve

    path = resolve("smollm2-135m").path
    tok = load_tokenizer(path)
    encs = [encode(tok, [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["completion"]}],
                   a.max_length) for r in rows()]
    ds = Dataset.from_list([{"input_ids": e.input_ids, "attention_mask": [1] * len(e.input_ids),
                             "labels": e.labels} for e in encs])
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    args = TrainingArguments(output_dir=tempfile.mkdtemp(), max_steps=a.steps, per_device_train_batch_size=a.batch,
                             learning_rate=2e-5, bf16=bf16, use_cpu=bf16, report_to=[], save_strategy="no",
                             logging_steps=1_000, dataloader_num_workers=0)
    clock = _Clock()
    collator = clock.collate(DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100))
    trainer = Trainer(model=model, args=args, train_dataset=ds, data_collator=collator,
                      callbacks=[clock.callback()])
    trainer.train()
    return {"tokens_per_s": steady(clock.times, clock.tokens, a.skip), "peak_rss": peak_rss()}


def matmul_peak(precision: str = "fp32", seconds: float = 3.0) -> float:
    """FLOP/s of large square matmuls (1024 and 2048) in fp32 or bf16 on this machine: the best of a few timed
    repeats."""
    import torch

    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    best = 0.0
    for n in (1024, 2048):
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        for _ in range(3):
            a @ b
        end = time.perf_counter() + seconds / 2
        while time.perf_counter() < end:
            t = time.perf_counter()
            for _ in range(4):
                a @ b
            best = max(best, 4 * 2 * n**3 / (time.perf_counter() - t))
    return best


def lora_flops_per_token(targets_share: float) -> float:
    """Model FLOPs per real token of a LoRA step on SmolLM2-135M, counting what tunesmith computes.

    Frozen base: forward 2N + backward through activations 2N (no weight gradients), where N is the
    decoder's matmul parameters; the LM head (576 x 49152) runs forward and backward only on supervised
    positions; attention scores add 4 * T * d per layer forward (x2 for backward). LoRA's own FLOPs are small
    and counted as 6 x its parameters.
    """
    layers, d, inter, kv, vocab, t = 30, 576, 1536, 192, 49152, 128
    per_layer = d * d * 2 + d * kv * 2 + 3 * d * inter  # q,o + k,v + gate,up,down
    n_body = layers * per_layer
    lora = layers * R * ((d + d) * 2 + (d + kv) * 2 + 2 * (d + inter) + (inter + d))
    head = d * vocab
    attn = layers * 4 * t * d
    return 4 * n_body + 6 * lora + 4 * head * targets_share + 3 * attn


WORKERS = {"tunesmith-lora": lambda a: run_tunesmith("lora", a),
           "trl-lora": lambda a: run_trl_lora(a, "defaults"),
           "trl-lora-tuned": lambda a: run_trl_lora(a, "tuned"),
           "trl-lora-padfree": lambda a: run_trl_lora(a, "padfree"),
           "trl-lora-bf16": lambda a: run_trl_lora(a, "bf16"),
           "tunesmith-full": lambda a: run_tunesmith("full", a),
           "trainer-full": run_trainer_full,
           "trainer-full-bf16": lambda a: run_trainer_full(a, bf16=True)}
PAIRS = (("tunesmith-lora", "trl-lora"), ("tunesmith-lora", "trl-lora-tuned"), ("tunesmith-lora", "trl-lora-padfree"),
         ("tunesmith-lora", "trl-lora-bf16"), ("tunesmith-full", "trainer-full"),
         ("tunesmith-full", "trainer-full-bf16"))
RATIOS = {"lora_speed_ratio": ("trl-lora",),
          "lora_vs_tuned_ratio": ("trl-lora-tuned", "trl-lora-padfree", "trl-lora-bf16"),
          "full_speed_ratio": ("trainer-full",),
          "full_vs_bf16_ratio": ("trainer-full-bf16",)}  # against the fastest reference present
# tunesmith's own allocator, and a tuned user's too
MIMALLOC = ("tunesmith-lora", "tunesmith-full", "trl-lora-tuned", "trl-lora-padfree", "trl-lora-bf16")


def _start(name: str, a: argparse.Namespace) -> subprocess.Popen:
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", TRANSFORMERS_VERBOSITY="error",
               OMP_NUM_THREADS=str(a.threads))
    if name in MIMALLOC:  # the allocator `tunesmith train` runs under (see train/allocator.py)
        from tunesmith.train.allocator import allocator_env

        env = allocator_env(env) or env
    cmd = [sys.executable, __file__, "--worker", name, "--steps", str(a.steps), "--skip", str(a.skip),
           "--threads", str(a.threads), "--batch", str(a.batch), "--max-length", str(a.max_length)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--skip", type=int, default=3)
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--batch", type=int, default=BATCH, help="rows per step (smaller only for a smoke test)")
    p.add_argument("--max-length", type=int, default=MAX_LEN, help="tokens per row (smaller only for a smoke test)")
    p.add_argument("--only", default=",".join(WORKERS))
    p.add_argument("--paired", action="store_true", help="run each pair at once, one thread each (shared machines)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.paired:
        a.threads = 1
    if a.worker:
        import torch

        torch.set_num_threads(a.threads)
        print("BENCH " + json.dumps(WORKERS[a.worker](a)), flush=True)
        return
    names = a.only.split(",")
    unknown = sorted(set(names) - WORKERS.keys())
    if unknown:
        sys.exit(f"--only: unknown contender(s) {', '.join(unknown)}; choose from {', '.join(WORKERS)}")
    # --paired: each tunesmith contender runs at the same time as its reference, one thread each, so load
    # from other processes on a shared machine slows both alike (the faster one finishes first and the
    # other then runs alone: this biases the ratio towards 1, never away from it). tunesmith-lora runs once
    # per reference then, and each ratio takes the tunesmith figure measured next to its own reference.
    groups = [list(pair) for pair in PAIRS if set(pair) <= set(names)] if a.paired else [[n] for n in names]
    results: dict[str, dict] = {}  # the last measurement of each contender
    pairs: dict[tuple[str, str], tuple[dict, dict]] = {}  # (ours, reference) measured side by side (--paired)
    for group in groups:
        measured = _run_group(group, a)
        results.update(measured)
        if len(group) == 2:
            pairs[(group[0], group[1])] = (measured[group[0]], measured[group[1]])
    print("RESULT " + " ".join(f"{k}={v:.3f}" for k, v in _summary(results, pairs, a.threads).items()))


def _run_group(group: list[str], a: argparse.Namespace) -> dict[str, dict]:
    procs = {name: _start(name, a) for name in group}
    measured = {}
    for name, proc in procs.items():
        out, err = proc.communicate()
        line = [x for x in out.splitlines() if x.startswith("BENCH ")]
        if proc.returncode or not line:
            sys.exit(f"{name} failed:\n{err[-3000:]}")
        measured[name] = r = json.loads(line[0][6:])
        print(f"{name:16s} {r['tokens_per_s']:8.1f} tokens/s   peak RSS {r['peak_rss'] / 2**20:7.0f} MiB", flush=True)
    return measured


def _summary(results: dict[str, dict], pairs: dict[tuple[str, str], tuple[dict, dict]], threads: int) -> dict:
    """The ratios (side by side when paired), the peak fraction, then every contender's absolute figures."""
    import torch

    out: dict[str, float] = {}
    for key, refs in RATIOS.items():
        ours_name = "tunesmith-full" if key.startswith("full") else "tunesmith-lora"
        present = [r for r in refs if r in results and ours_name in results]
        if not present:
            continue
        ref_name = max(present, key=lambda r: results[r]["tokens_per_s"])
        ours, ref = pairs.get((ours_name, ref_name), (results[ours_name], results[ref_name]))
        out[key] = ours["tokens_per_s"] / ref["tokens_per_s"]
        if key == "lora_speed_ratio":
            out["lora_rss_ratio"] = ours["peak_rss"] / ref["peak_rss"]
    if "tunesmith-lora" in results:
        torch.set_num_threads(threads)
        ours = results["tunesmith-lora"]
        fp32_peak = matmul_peak("fp32")
        peak = matmul_peak(ours["precision"]) if ours["precision"] != "fp32" else fp32_peak
        achieved = ours["tokens_per_s"] * lora_flops_per_token(ours["targets_share"])
        out["peak_fraction"], out["fp32_peak_fraction"] = achieved / peak, achieved / fp32_peak
        print(f"matmul peak {peak / 1e9:.0f} GFLOP/s in {ours['precision']} (fp32 {fp32_peak / 1e9:.0f}); "
              f"tunesmith LoRA ({ours['precision']}) achieves {achieved / 1e9:.0f} GFLOP/s "
              f"({ours['targets_share']:.0%} of tokens supervised)")
    for name, r in results.items():
        out[f"{name}_tps"] = r["tokens_per_s"]
        out[f"{name}_rss_mib"] = r["peak_rss"] / 2**20
    return out


if __name__ == "__main__":
    main()
