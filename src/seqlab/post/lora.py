"""LoRA (Hu et al. 2021) for post-training, through the `peft` library.

    W x  ->  W x + (alpha / r) * B A x        A: (r, in), B: (out, r), B = 0 at start

Only A and B train; the base weights stay frozen. peft wraps the transformer's
linear layers in place (the model keeps its class, so the sampler and every
algorithm run unchanged: the decode loop calls wrapped layers, see
models/layers.linear). At the end the adapters are merged into the weights, so
the saved run is an ordinary seqlab run; the adapter alone is saved too.
The default alpha is 2 x rank, as the GRPO workshop advises.

QLoRA (Dettmers et al. 2023): on a quantized run (`seqlab quantize`) the adapters wrap the
frozen 8-/4-bit layers (peft's LoRA layer around models/quant.QuantLinear, whose backward
passes the input's gradient through the dequantized weight). The saved run is the float
model the adapters were trained on top of: every layer dequantized, the adapters merged;
adapter.safetensors with the quantized run gives the same model as base + adapter.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from ..errors import SeqlabError

# the transformer's linear layers: attention in/out, MLP (GELU fc/proj, SwiGLU gate_up/proj)
DEFAULT_TARGETS = ("qkv", "proj", "fc", "gate_up")
ADAPTER_FILE = "adapter.safetensors"


def apply_lora(model: torch.nn.Module, rank: int, alpha: float | None = None, dropout: float = 0.0,
               targets: list[str] | tuple[str, ...] = DEFAULT_TARGETS):
    """Wrap model's target linear layers with LoRA adapters in place; freeze the rest.

    Returns the model (same object), now holding peft LoRA layers."""
    from peft import LoraConfig
    from peft.tuners.lora import LoraModel

    from ..models.quant import QuantLinear
    from ..models.transformer import Transformer

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
    return model


def merge_and_save(model: torch.nn.Module, out: Path) -> torch.nn.Module:
    """Save the adapter weights to out/adapter.safetensors, then merge them into the
    base weights and put the plain nn.Linear layers back (no peft layers left)."""
    from peft import get_peft_model_state_dict
    from peft.tuners.lora import LoraLayer
    from safetensors.torch import save_file

    from .. import atomic

    state = {k: v.detach().contiguous() for k, v in get_peft_model_state_dict(model).items()}
    with atomic.atomic_path(out / ADAPTER_FILE) as tmp:
        save_file(state, str(tmp))
    from ..models.quant import QuantLinear, dequantize_model

    for name, module in list(model.named_modules()):
        if isinstance(module, LoraLayer):
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
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child, base)
    dequantize_model(model)  # QLoRA: the layers no adapter wrapped (e.g. the head) too
    for p in model.parameters():
        p.requires_grad_(True)
    return model
