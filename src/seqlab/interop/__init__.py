"""Pretrained models in and out: Hugging Face folders and GGUF files (import), HF folders (export)."""
