"""tunesmith: fine-tune a pre-trained language model on a small, domain-specific dataset."""

__version__ = "0.1.0"
