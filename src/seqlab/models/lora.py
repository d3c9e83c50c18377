"""LoRA (Hu et al. 2021) for post-training, through the `peft` library.

    W x  ->  W x + (alpha / r) * B A x        A: (r, in), B: (out, r), B = 0 at start

Only A and B train; the base weights stay frozen. peft wraps the transformer's
linear layers in place (the model keeps its class, so the sampler and every
algorithm run unchanged: the decode loop calls wrapped layers, see
models/layers.linear). The default alpha is 2 x rank, as the GRPO workshop advises.

At the end of a post-training run the adapter is saved (adapter.safetensors) and then, by
default on a float base (post.lora_merge unset or true), merged into the weights: the run is
an ordinary seqlab run. With lora_merge = false (the default on a quantized base) the run keeps base and adapter apart: best.safetensors holds
the base weights as they were (a quantized base stays quantized), adapter.json says how to
wrap them, and load_model rebuilds base + adapter (the native decode step computes the
adapter inside its step).

QLoRA (Dettmers et al. 2023): on a quantized run (`seqlab quantize`) the adapters wrap the
frozen 8-/4-bit layers (peft's LoRA layer around models/quant.QuantLinear, whose backward
passes the input's gradient through the dequantized weight). Merged, the run is the float
model the adapters were trained on top of (every layer dequantized, the adapters added);
kept apart, it stays a quantized run with a float adapter, and no float copy of the model is
ever made (re-quantizing a merged fine-tune would round away an update smaller than a 4-bit
step).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from ..errors import SeqlabError
from .layers import release_frozen

# the transformer's linear layers: attention in/out, MLP (GELU fc/proj, SwiGLU gate_up/proj)
DEFAULT_TARGETS = ("qkv", "proj", "fc", "gate_up")
ADAPTER_FILE = "adapter.safetensors"
ADAPTER_SPEC = "adapter.json"  # only in a run that keeps base and adapter apart: {"rank", "alpha", "targets"}


def apply_lora(model: torch.nn.Module, rank: int, alpha: float | None = None, dropout: float = 0.0,
               targets: list[str] | tuple[str, ...] = DEFAULT_TARGETS):
    """Wrap model's target linear layers with LoRA adapters in place; freeze the rest.

    Returns the model (same object), now holding peft LoRA layers."""
    from peft import LoraConfig
    from peft.tuners.lora import LoraModel

    from .layers import FrozenLinear
    from .quant import QuantLinear
    from .transformer import Transformer

    if not isinstance(model, Transformer):
        raise SeqlabError(f"config key 'post.lora_rank': LoRA applies to the transformer's linear layers; "
                          f"this policy is a {type(model).__name__} (use lora_rank = 0)")
    names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, QuantLinear))}
    wanted = [t for t in targets if t in names]
    if not wanted:
        raise SeqlabError(f"config key 'post.lora_targets': none of {list(targets)} names a linear layer "
                          f"of this model (it has {sorted(names)})")
    config = LoraConfig(r=rank, lora_alpha=alpha if alpha is not None else 2 * rank, lora_dropout=dropout,
                        target_modules=wanted, bias="none")
    if any(isinstance(m, QuantLinear) for m in model.modules()):  # QLoRA: peft's LoRA layer around QuantLinear
        from peft.tuners.lora.layer import Linear as LoraLinear

        config._register_custom_module({QuantLinear: LoraLinear})
    with warnings.catch_warnings():  # peft warns of any layer type it does not know; QuantLinear is ours
        warnings.filterwarnings("ignore", message="Unsupported layer type")
        LoraModel(model, config, "default")  # injects the adapters into `model` in place
    for m in model.modules():  # the frozen float layers (the adapters' bases, the head)
        if type(m) is torch.nn.Linear and not m.weight.requires_grad:
            m.__class__ = FrozenLinear
    return model


def save_adapter(model: torch.nn.Module, out: Path) -> None:
    """The adapter's tensors (peft's names, without the adapter name) to out/adapter.safetensors."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    from .. import atomic

    state = {k: v.detach().contiguous() for k, v in get_peft_model_state_dict(model).items()}
    with atomic.atomic_path(Path(out) / ADAPTER_FILE) as tmp:
        save_file(state, str(tmp))


def _lora_layers(model: torch.nn.Module):
    from peft.tuners.lora import LoraLayer

    return [(name, m) for name, m in list(model.named_modules()) if isinstance(m, LoraLayer)]


def _replace(model: torch.nn.Module, name: str, module: torch.nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name), child, module)


def merge_lora(model: torch.nn.Module) -> torch.nn.Module:
    """Merge every adapter into its base weight and put plain layers back (no peft layers
    left); a quantized base becomes a float nn.Linear (its dequantized weight + the update),
    and every other quantized layer is dequantized too. Every parameter trains afterwards."""
    from .quant import QuantLinear, dequantize_model

    for name, module in _lora_layers(model):
        base = module.get_base_layer()
        if isinstance(base, QuantLinear):  # QLoRA: the dequantized weight + (alpha / r) B A, in float
            merged = torch.nn.Linear(base.in_features, base.out_features, bias=base.bias is not None,
                                     device=base.qweight.device)
            with torch.no_grad():
                merged.weight.copy_(base.dequantized() + module.get_delta_weight(module.active_adapters[0]))
                if base.bias is not None:
                    merged.bias.copy_(base.bias)
            base = merged
        else:
            module.merge()  # W += (alpha / r) B A
        _replace(model, name, base)
    dequantize_model(model)  # QLoRA: the layers no adapter wrapped (e.g. the head) too
    release_frozen(model)
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def merge_and_save(model: torch.nn.Module, out: Path) -> torch.nn.Module:
    """Save the adapter weights to out/adapter.safetensors, then merge them (merge_lora)."""
    save_adapter(model, out)
    return merge_lora(model)


def save_apart(model: torch.nn.Module, out: Path, rank: int, alpha: float | None,
               targets: list[str] | tuple[str, ...]) -> torch.nn.Module:
    """Keep base and adapter apart: adapter.safetensors + adapter.json in out, and the peft
    layers replaced by their untouched base layers (returned model: the base, to save as the
    run's weights). load_adapter puts the adapter back on load."""
    from .. import atomic

    save_adapter(model, out)
    wrapped = sorted({name.rsplit(".", 1)[-1] for name, _ in _lora_layers(model)})
    for name, module in _lora_layers(model):
        _replace(model, name, module.get_base_layer())
    release_frozen(model)
    atomic.write_json(Path(out) / ADAPTER_SPEC, {"rank": rank, "alpha": alpha if alpha is not None else 2 * rank,
                                                  "targets": [t for t in targets if t in wrapped]})
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def load_adapter(model: torch.nn.Module, run_dir: Path) -> torch.nn.Module:
    """A run kept as base + adapter (adapter.json present): wrap model's layers as they were
    trained and load the adapter's tensors; a missing or mismatched file is one error line."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    spec_path, weights = Path(run_dir) / ADAPTER_SPEC, Path(run_dir) / ADAPTER_FILE
    try:
        spec = json.loads(spec_path.read_text(encoding="utf-8"))
        rank, alpha, targets = int(spec["rank"]), float(spec["alpha"]), [str(t) for t in spec["targets"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SeqlabError(f"{spec_path}: not an adapter description ({type(e).__name__}: {e})") from None
    apply_lora(model, rank, alpha, 0.0, targets)
    try:
        state = load_file(str(weights))
        result = set_peft_model_state_dict(model, state)
        # every trained tensor has its place and every adapter tensor is given
        missing = [k for k in result.missing_keys if "lora_" in k]
        if getattr(result, "unexpected_keys", None) or missing:
            raise ValueError(f"{len(missing)} adapter tensors missing, "
                             f"{len(result.unexpected_keys or [])} unexpected")
    except Exception as e:
        raise SeqlabError(f"{weights}: cannot load this adapter ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:200] if str(e) else ''})") from None
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def has_adapter(run_dir: Path) -> bool:
    return (Path(run_dir) / ADAPTER_SPEC).exists()
