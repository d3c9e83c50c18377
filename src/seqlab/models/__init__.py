"""The model zoo: one registry, one contract (see base.py)."""

from __future__ import annotations

from .base import SeqModel, token_loss
from .bigram import Bigram
from .mlp import MLP
from .rnn import Recurrent
from .transformer import Transformer

REGISTRY = {
    "bigram": Bigram,
    "mlp": MLP,
    "rnn": Recurrent,
    "lstm": Recurrent,
    "gru": Recurrent,
    "transformer": Transformer,
}


def build_model(cfg, vocab_size: int) -> SeqModel:
    """Instantiate the model named by `cfg.type` (a ModelConfig). `model.vocab_size` is the
    width of its logits (an imported model's embedding may have more rows than its
    tokenizer has tokens)."""
    model = REGISTRY[cfg.type](vocab_size, cfg)
    model.vocab_size = vocab_size
    return model


__all__ = ["REGISTRY", "SeqModel", "build_model", "token_loss"]
