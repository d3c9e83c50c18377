"""The model zoo: one registry, one contract (see base.py)."""

from __future__ import annotations

from .base import SeqModel, token_loss
from .bigram import Bigram
from .heads import SequenceModel, default_pooling
from .mlp import MLP
from .rnn import Recurrent
from .rnn_seq2seq import RNNSeq2Seq
from .seq2seq import Seq2Seq
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


def build_for_run(cfg, vocab_size: int):
    """The model a run config (RunConfig) trains: a language model (SeqModel); for classify /
    regress its backbone under a pooled linear head (heads.SequenceModel) with one output per
    label or per target number; for seq2seq an encoder-decoder (seq2seq.Seq2Seq, or
    rnn_seq2seq.RNNSeq2Seq for recurrent models)."""
    model = build_model(cfg.model, vocab_size)
    task = cfg.task
    if task.type == "seq2seq":
        if cfg.model.type in ("rnn", "lstm", "gru"):
            return RNNSeq2Seq(vocab_size, cfg.model, cfg.model.seq2seq_attention, cfg.model.seq2seq_heads)
        return Seq2Seq(vocab_size, cfg.model)
    if task.type in ("classify", "regress"):
        out = len(task.labels) if task.type == "classify" else len(task.target_mean)
        model = SequenceModel(model, out, default_pooling(task.pooling, cfg.model.bidirectional))
    return model


__all__ = ["REGISTRY", "SeqModel", "SequenceModel", "build_for_run", "build_model", "token_loss"]
