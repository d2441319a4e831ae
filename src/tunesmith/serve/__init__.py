"""Use a model: generation (`generate`), terminal chat (`chat`), the OpenAI-compatible server (`engine`, `app`).

Never imports `tunesmith.train`: serving needs only the model, its tokenizer and the adapters.
"""
