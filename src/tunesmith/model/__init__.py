"""Models: resolve a name to weights (local folder, hub id, built-in), load safely, adapters, merge."""
