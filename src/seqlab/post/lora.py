"""LoRA (Hu et al. 2021) for post-training, through the `peft` library.

    W x  ->  W x + (alpha / r) * B A x        A: (r, in), B: (out, r), B = 0 at start

Only A and B train; the base weights stay frozen. peft wraps the transformer's
linear layers in place (the model keeps its class, so the sampler and every
algorithm run unchanged: the decode loop calls wrapped layers, see
models/layers.linear). At the end the adapters are merged into the weights, so
the saved run is an ordinary seqlab run; the adapter alone is saved too.
The default alpha is 2 x rank, as the GRPO workshop advises.
"""

from __future__ import annotations

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

    from ..models.transformer import Transformer

    if not isinstance(model, Transformer):
        raise SeqlabError(f"config key 'post.lora_rank': LoRA applies to the transformer's linear layers; "
                          f"this policy is a {type(model).__name__} (use lora_rank = 0)")
    names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    wanted = [t for t in targets if t in names]
    if not wanted:
        raise SeqlabError(f"config key 'post.lora_targets': none of {list(targets)} names a linear layer "
                          f"of this model (it has {sorted(names)})")
    config = LoraConfig(r=rank, lora_alpha=alpha if alpha is not None else 2 * rank, lora_dropout=dropout,
                        target_modules=wanted, bias="none")
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
    for name, module in list(model.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()  # W += (alpha / r) B A
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child, module.get_base_layer())
    for p in model.parameters():
        p.requires_grad_(True)
    return model
