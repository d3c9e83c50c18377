"""Run directories: everything needed to continue or inspect a run.

    RUN/config.json                  resolved config (JSON)
    RUN/tokenizer.json               tokenizer (JSON)
    RUN/best.safetensors             weights with the lowest validation loss (+ best.json)
    RUN/checkpoints/step-00001000/   weights.safetensors: the parameters the loop trains (the
                                     whole model for pretraining; only the adapters for LoRA);
                                     state.pt: optimizer state and every RNG (tensors only);
                                     state.json: step, "whole_model", the loop's own state
    RUN/checkpoints/latest           name of the newest complete checkpoint
    RUN/metrics.csv, RUN/loss.png
    RUN/quantization.json            a quantized run's layout (`seqlab quantize`)
    RUN/adapter.json                 a LoRA run kept as base + adapter (adapter.safetensors)

Every file is written atomically (temp + rename) and a checkpoint directory is
complete before `latest` points at it, so a kill at any moment leaves the last
good checkpoint intact. Weights are safetensors; optimizer/RNG state is a torch
file of plain tensors loaded with weights_only=True (no arbitrary pickles). This module
knows the format; engine.py writes and restores checkpoints, and no loop knows the names.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file as st_load_file
from safetensors.torch import load_model as st_load_model
from safetensors.torch import save_file as st_save_file
from safetensors.torch import save_model as st_save_model

from . import atomic
from .config import RunConfig, run_config_from_dict, run_config_to_dict
from .data.tokenizer import Tokenizer, tokenizer_from_dict
from .errors import SeqlabError
from .models import SeqModel, build_for_run


def save_run_files(run_dir: Path, cfg: RunConfig, tokenizer: Tokenizer, vocab_size: int) -> None:
    d = run_config_to_dict(cfg)
    d["vocab_size"] = vocab_size
    atomic.write_json(run_dir / "config.json", d)
    atomic.write_json(run_dir / "tokenizer.json", tokenizer.to_dict())


def load_run_files(run_dir: Path) -> tuple[RunConfig, Tokenizer, int]:
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.json"
    if not cfg_path.exists():
        raise SeqlabError(f"{run_dir}: not a seqlab run directory (no config.json)")
    try:
        d = json.loads(cfg_path.read_text(encoding="utf-8"))
        tok = json.loads((run_dir / "tokenizer.json").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, FileNotFoundError) as e:
        raise SeqlabError(f"{run_dir}: unreadable run files ({e})") from None
    vocab_size = d.pop("vocab_size")
    return run_config_from_dict(d), tokenizer_from_dict(tok), vocab_size


def _save_weights(model: SeqModel, path: Path) -> None:
    with atomic.atomic_path(path) as tmp:
        st_save_model(model, str(tmp))  # handles tied (shared) weights


WEIGHTS, STATE_TENSORS, STATE_JSON = "weights.safetensors", "state.pt", "state.json"


def latest_checkpoint(run_dir: Path) -> Path | None:
    pointer = Path(run_dir) / "checkpoints" / "latest"
    if not pointer.exists():
        return None
    path = pointer.parent / pointer.read_text(encoding="utf-8").strip()
    return path if (path / STATE_JSON).exists() else None


def checkpoint_state(path: Path) -> dict:
    return json.loads((Path(path) / STATE_JSON).read_text(encoding="utf-8"))


def load_weights(model: torch.nn.Module, path: Path) -> None:
    """safetensors weights into `model`; a damaged or mismatched file is a one-line error naming it."""
    try:
        st_load_model(model, str(path))
    except Exception as e:
        raise SeqlabError(f"{path}: cannot load these weights ({_first_line(e)})") from None


def trains_everything(module: torch.nn.Module) -> bool:
    return all(p.requires_grad for p in module.parameters())


def save_trained(module: torch.nn.Module, path: Path) -> None:
    """What a checkpoint keeps of a module: every parameter when all train (tied weights
    once), else only those that train (LoRA: the adapters; the loop rebuilds the frozen
    rest from its starting point)."""
    if trains_everything(module):
        st_save_model(module, str(path))
    else:
        st_save_file({n: p.detach().contiguous() for n, p in module.named_parameters() if p.requires_grad},
                     str(path))


def load_trained(module: torch.nn.Module, path: Path) -> None:
    """The inverse of save_trained; a file that holds other tensors is a one-line error."""
    if trains_everything(module):
        return load_weights(module, path)
    try:
        saved = st_load_file(str(path))
        params = dict(module.named_parameters())
        expected = {n for n, p in params.items() if p.requires_grad}
        if set(saved) != expected:
            raise ValueError(f"it holds {len(saved)} tensors, this run trains {len(expected)} others")
        with torch.no_grad():
            for n, t in saved.items():
                params[n].copy_(t)
    except Exception as e:
        raise SeqlabError(f"{path}: cannot load these weights ({_first_line(e)})") from None


def load_tensors(path: Path) -> dict:
    """A torch file of plain tensors (optimizer and RNG state), never an arbitrary pickle."""
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except Exception as e:
        raise SeqlabError(f"{path}: cannot load this checkpoint file ({_first_line(e)})") from None


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:200]}" if text else type(e).__name__


QUANTIZATION = "quantization.json"  # a quantized run's layout: {"bits", "group_size", "layers": {name: bits}, ...}


def load_quantization(run_dir: Path) -> dict | None:
    path = Path(run_dir) / QUANTIZATION
    if not path.exists():
        return None
    try:
        q = json.loads(path.read_text(encoding="utf-8"))
        return {"group_size": int(q.get("group_size") or 0), "layers": {str(k): int(v) for k, v in q["layers"].items()},
                **{k: v for k, v in q.items() if k not in ("group_size", "layers")}}
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as e:
        raise SeqlabError(f"{path}: not a quantization layout ({_first_line(e)})") from None


def save_best(run_dir: Path, model: SeqModel, info: dict) -> None:
    _save_weights(model, Path(run_dir) / "best.safetensors")
    atomic.write_json(Path(run_dir) / "best.json", info)


def release_freed_memory() -> None:
    """Hand memory freed to the C allocator back to the OS (glibc's malloc_trim; elsewhere
    nothing). A quantized run is built as the float model first and its linear layers then
    swapped: the freed float weights stayed in the process's heap (measured on SmolLM2:
    ~130 MB of its 0.73 GB after loading the 4-bit run). A post-training run leaves far more:
    its updates' activations, of a new shape each update, end as scattered free space that
    glibc keeps and the next stage of a recipe (another model, other shapes) does not reuse
    (SmolLM2 bf16 SFT: 3.0 GiB resident after run_sft returned, 0.5 GiB after this; one
    call, ~50 ms). Calling it after every update instead made SFT ~30% slower: every update
    then faults its activations' pages in afresh."""
    import ctypes
    import ctypes.util

    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def load_model(run_dir: str | Path, which: str = "best", device: str = "cpu"):
    """Load (model, tokenizer, config) from a run directory.

    which: "best" (lowest validation loss; falls back to the last checkpoint) or "last".
    """
    run_dir = Path(run_dir)
    cfg, tokenizer, vocab_size = load_run_files(run_dir)
    model = build_for_run(cfg, vocab_size)
    quantization = load_quantization(run_dir)
    if quantization is not None:  # `seqlab quantize`: its layers, empty, for the weights file to fill
        from .models.quant import empty_quantized

        empty_quantized(model, quantization["layers"], quantization["group_size"])
        release_freed_memory()  # the float layers just replaced
    best = run_dir / "best.safetensors"
    last = latest_checkpoint(run_dir)
    if which == "best" and best.exists():
        weights = best
    elif last is not None:
        if not checkpoint_state(last).get("whole_model"):
            raise SeqlabError(f"{run_dir}: a post-training run that has not finished (no best.safetensors yet); "
                              f"resume it with --resume")
        weights = last / WEIGHTS
    elif best.exists():
        weights = best
    else:
        raise SeqlabError(f"{run_dir}: no weights yet (no best.safetensors or checkpoint)")
    load_weights(model, weights)
    from .models.lora import has_adapter, load_adapter

    if has_adapter(run_dir):  # a post-training run that kept base and adapter apart (post.lora_merge = false)
        load_adapter(model, run_dir)
    return model.to(device).eval(), tokenizer, cfg
