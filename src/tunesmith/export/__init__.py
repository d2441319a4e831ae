"""Take a trained model out of tunesmith: GGUF files for llama.cpp and Ollama (see `export.gguf_export`)."""
