"""Data: reading line files, tokenizers, batching."""
