"""A tiny Llama-shaped model and a BPE tokenizer trained on the spot: real files, seconds to build, no network."""

from __future__ import annotations

from pathlib import Path

from tunesmith.model.loading import CHATML_TEMPLATE

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]

CORPUS = [
    "How do I reset my password? Go to the Account page and click Forgot Password.",
    "What is your return policy? Returns are accepted within 30 days of purchase.",
    "Where is my order? You can track your order from the Orders page.",
    "What is the capital of France? The capital of France is Paris.",
    "SELECT name FROM customers WHERE city = 'Paris';",
    "Arr, matey! The sea be calm today, and the rum be plenty.",
    "system user assistant You are a helpful assistant.",
    "0 1 2 3 4 5 6 7 8 9 10 + - = ? ! . , ; : ' \" ( ) [ ] { }",
    "the quick brown fox jumps over the lazy dog",
] * 4


def build_tokenizer(folder: Path, corpus: list[str] | None = None, vocab_size: int = 400):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(corpus or CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|pad|>",
        unk_token="<|endoftext|>",
    )
    fast.chat_template = CHATML_TEMPLATE
    fast.save_pretrained(folder)
    return fast


def build_tiny_model(
    folder: str | Path, *, seed: int = 0, hidden: int = 64, layers: int = 2, max_positions: int = 512,
    corpus: list[str] | None = None, vocab_size: int = 400,
) -> Path:
    """Write a tiny causal LM folder (config.json + model.safetensors + tokenizer) and return it; the
    tokenizer learns its merges from `corpus` (default: a few support-desk lines)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(folder, corpus, vocab_size)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_positions,
        tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder
