"""`seqlab export RUN --out DIR`: a run as a Hugging Face folder.

DIR gets config.json, model.safetensors, tokenizer.json, tokenizer_config.json (special
tokens and the chat template) and generation_config.json, so that
`transformers.AutoModelForCausalLM.from_pretrained(DIR)` computes the run's logits and
`AutoTokenizer.from_pretrained(DIR)` encodes text to the run's ids. A post-training run
with LoRA adapters saved its merged weights, which are what is exported. seqlab's own
tokenizers become `tokenizers` JSON: the character tokenizer as a word-level vocabulary
over single characters, BPE as it is.
"""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import save_file

from .. import atomic
from ..checkpoint import load_model
from ..data.tokenizer import BPETokenizer, CharTokenizer, PretrainedTokenizer, Tokenizer
from ..errors import SeqlabError
from .hf import hf_from_seqlab


def char_tokenizer_json(tok: CharTokenizer) -> str:
    """A `tokenizers` JSON that encodes like CharTokenizer: every character one token, the
    specials (<pad> <bos> <eos> and extra ones such as reasoning tags) matched first as
    whole strings (tokenizers' added tokens match leftmost-longest, as seqlab does)."""
    from tokenizers import AddedToken, Regex, Tokenizer as HFTokenizer, decoders, models, pre_tokenizers

    vocab = {s: i for i, s in enumerate(tok.itos)}
    hf = HFTokenizer(models.WordLevel(vocab, unk_token=tok.itos[tok.pad_id]))
    hf.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    hf.decoder = decoders.Fuse()
    hf.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in tok.specials])
    return hf.to_str()


def tokenizer_files(tok: Tokenizer) -> tuple[str, dict]:
    """(tokenizer.json text, tokenizer_config.json dict) for any seqlab tokenizer."""
    if isinstance(tok, PretrainedTokenizer):
        config = dict(tok.special_tokens)
        if tok.chat_template:
            config["chat_template"] = tok.chat_template
        return tok.hf.to_str(), {"tokenizer_class": "PreTrainedTokenizerFast", **config}
    if isinstance(tok, CharTokenizer):
        text = char_tokenizer_json(tok)
    elif isinstance(tok, BPETokenizer):
        text = tok.hf.to_str()
    else:
        raise SeqlabError(f"export: no Hugging Face form for a {type(tok).__name__}")
    specials = tok.specials
    return text, {"tokenizer_class": "PreTrainedTokenizerFast", "pad_token": specials[tok.pad_id],
                  "bos_token": specials[tok.bos_id], "eos_token": specials[tok.eos_id],
                  "additional_special_tokens": specials[3:]}


def export_run(run: str | Path, out: str | Path, which: str = "best") -> dict:
    model, tok, cfg = load_model(run, which)
    from ..models.lora import merge_lora
    from ..models.quant import dequantize_model

    merge_lora(model)  # a base + adapter run exports the merged weights
    dequantize_model(model)  # a quantized run exports the float weights it computes with
    state = model.state_dict()
    vocab_size = state["wte.weight"].size(0) if "wte.weight" in state else None
    config, tensors = hf_from_seqlab(cfg.model, state, vocab_size)
    config.update(bos_token_id=tok.bos_id, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)
    tok_json, tok_config = tokenizer_files(tok)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SeqlabError(f"{out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    with atomic.atomic_path(out / "model.safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    atomic.write_json(out / "config.json", config)
    atomic.write_text(out / "tokenizer.json", tok_json)
    atomic.write_json(out / "tokenizer_config.json", tok_config)
    atomic.write_json(out / "generation_config.json", {"bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id,
                                                       "pad_token_id": tok.pad_id})
    params = sum(t.numel() for t in tensors.values())
    return {"out": str(out), "params": params, "model_type": config["model_type"],
            "bytes": sum(f.stat().st_size for f in out.iterdir() if f.is_file())}

