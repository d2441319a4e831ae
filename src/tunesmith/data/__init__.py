"""Datasets: formats, validation, quality report, tokenization with completion-only labels."""
