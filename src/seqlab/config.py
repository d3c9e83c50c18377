"""Typed run configuration.

Each section is a dataclass; `from_dict` rejects unknown keys and wrong types
with a message naming the key, so a typo in a TOML file fails loudly instead of
being silently ignored. The resolved config is saved in every run directory.
"""

from __future__ import annotations

import dataclasses
import re
import sys
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Literal, Optional, TypeVar, get_args, get_origin

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from .errors import SeqlabError

T = TypeVar("T")


@dataclass
class ModelConfig:
    type: Literal["bigram", "mlp", "rnn", "lstm", "gru", "transformer"] = "transformer"
    # block_size: the longest input the model sees (tokens, bos included).
    # 0 means "fit the data": longest encoded line + 1, like makemore.
    block_size: int = 0
    n_layer: int = 4
    n_head: int = 4
    n_kv_head: int = 0  # 0 means n_head (plain multi-head attention)
    n_embd: int = 64
    n_hidden: int = 0  # MLP / RNN hidden width; 0 means 4 * n_embd (mlp) or n_embd (rnn)
    mlp_context: int = 3  # MLP (Bengio 2003): how many previous tokens it sees
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    pos: Literal["learned", "rope"] = "learned"
    mlp: Literal["gelu", "swiglu"] = "gelu"
    rope_base: float = 10000.0
    tie_weights: bool = False
    bias: bool = False  # no biases in linears and norms (nanoGPT/Llama style): fewer ops per step
    # Options that pretrained models need (seqlab import); the defaults are seqlab's own models.
    head_dim: int = 0  # 0 means n_embd // n_head (Qwen3 and Gemma use wider heads)
    norm_eps: float = 0.0  # 0 means 1e-5 for LayerNorm, 1e-6 for RMSNorm
    qkv_bias: bool = False  # biases on q, k, v only (Qwen2), whatever `bias` says
    qk_norm: bool = False  # RMSNorm over each head's q and k before RoPE (Qwen3)
    gelu: Literal["exact", "tanh"] = "exact"  # tanh: GPT-2's approximation ("gelu_new")
    dropout: float = 0.1  # small data overfits fast (see docs/experiments.md)
    # transformer weights at the start: gpt2 = N(0, 0.02), residual projections scaled by
    # 1/sqrt(2 n_layer) (nanoGPT); torch = PyTorch's layer defaults, as makemore leaves them
    # (embeddings N(0, 1), linears uniform(+-1/sqrt(fan_in)))
    init: Literal["gpt2", "torch"] = "gpt2"
    # Mixture of experts (models/moe.py): 0 = a dense MLP; else this many expert MLPs per
    # block, each token routed to its top moe_top_k, a load-balancing loss times moe_aux_coef
    moe_experts: int = 0
    moe_top_k: int = 1
    moe_aux_coef: float = 0.01
    # Sliding-window attention: each token sees itself and the attention_window - 1 tokens
    # before it (0 = the whole context); the KV cache then keeps the window only
    attention_window: int = 0
    # Encoders (task types other than lm): attention without the causal mask (Transformer),
    # a backward direction next to the forward one (RNN, LSTM, GRU)
    bidirectional: bool = False
    # seq2seq with an RNN/LSTM/GRU: the decoder's attention score over the encoder's states
    seq2seq_attention: Literal["dot", "additive"] = "dot"
    seq2seq_heads: int = 1  # attention distributions per target position, each with its own context
    # numeric inputs (regression on sequences of numbers): this many numbers per step through
    # a linear input projection instead of a token embedding; 0 = tokens
    input_dim: int = 0


@dataclass
class DataConfig:
    tokenizer: Literal["char", "bpe"] = "char"
    bpe_vocab_size: int = 512
    val_fraction: float = 0.1
    val_max: int = 1000  # makemore's split: min(1000, 10%) of lines
    truncate: bool = False  # cut over-long lines instead of failing
    specials: list[str] = field(default_factory=list)  # extra special tokens, e.g. reasoning tags


@dataclass
class TrainConfig:
    steps: int = 5000
    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.1  # applied to matrices (dim >= 2) only
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0  # 0 disables
    eval_interval: int = 250
    checkpoint_interval: int = 500
    keep_checkpoints: int = 2
    seed: int = 1337
    device: str = "cpu"
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    compile: bool = False
    log_interval: int = 10
    # Transformers: pack each batch's sequences several to a row (EncodedLines.packed_batch):
    # the same loss and gradients as the padded batch, without computing on padding
    pack: bool = True
    # classify / regress / seq2seq: draw each batch from a random window of examples of
    # similar length (supervised.similar_length_batch) instead of from all of them, so a
    # batch pads to little more than its examples' own lengths (Hugging Face's
    # group_by_length); every example stays equally likely to be drawn
    group_by_length: bool = False
    # CPU threads for torch; 0 keeps torch's default. Small models on a busy
    # machine often run faster on 1 thread (no waiting for a descheduled peer).
    threads: int = 0
    # success rate during training: every eval_interval, eval_samples strings sampled
    # (temperature 1, seed `seed`) and scored by this task's verifier (built-in, "positions"
    # with eval_equal / eval_length, or module:function); "" = none
    eval_task: str = ""
    eval_samples: int = 200
    eval_equal: list[str] = field(default_factory=list)
    eval_length: str = ""


@dataclass
class TaskConfig:
    """What a run learns (the [task] table). lm: next-token prediction on lines; classify,
    regress: one label or numbers per JSONL example from the pooled hidden states; seq2seq: an
    encoder-decoder from JSONL input/target strings (models/seq2seq.py); mlm: masked
    language modelling on lines (BERT; mlm.py); the type is inferred from the data when not
    given (JSONL: classify, regress or seq2seq; lines: lm). labels, target_mean and target_std are filled from
    the training data and saved with the run."""

    type: Literal["auto", "lm", "classify", "regress", "seq2seq", "mlm"] = "auto"
    # how a sequence becomes one vector: last (the last real position: causal models), mean
    # (over real positions), cls (the <bos> position: bidirectional encoders); auto: last
    # for causal models, mean for bidirectional ones
    pooling: Literal["auto", "last", "mean", "cls"] = "auto"
    loss: Literal["mse", "huber"] = "mse"  # regress: on targets standardised with the training data
    labels: list[str] = field(default_factory=list)
    target_mean: list[float] = field(default_factory=list)
    target_std: list[float] = field(default_factory=list)


@dataclass
class RunConfig:
    data: str = ""
    model: ModelConfig = field(default_factory=ModelConfig)
    data_opts: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    task: TaskConfig = field(default_factory=TaskConfig)


def _type_name(tp) -> str:
    if get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _check_value(key: str, tp, value):
    """Return `value` converted to `tp`, or raise SeqlabError naming `key`."""
    origin = get_origin(tp)
    if origin is typing.Union:
        args = [a for a in get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _check_value(key, args[0], value)
    if origin is Literal:
        if value not in get_args(tp):
            raise SeqlabError(f"config key '{key}': expected one of {_type_name(tp)}, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise SeqlabError(f"config key '{key}': expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SeqlabError(f"config key '{key}': expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SeqlabError(f"config key '{key}': expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise SeqlabError(f"config key '{key}': expected a string, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        return section_from_dict(tp, value, prefix=key)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise SeqlabError(f"config key '{key}': expected a list, got {value!r}")
        (item_tp, *_) = get_args(tp) or (Any,)
        if item_tp is Any:
            return list(value)
        return [_check_value(f"{key}[{i}]", item_tp, v) for i, v in enumerate(value)]
    return value


def section_from_dict(cls, data: dict, prefix: str = ""):
    """Build dataclass `cls` from `data`, rejecting unknown keys and wrong types."""
    if not isinstance(data, dict):
        raise SeqlabError(f"config key '{prefix}': expected a table, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else key
        if key not in known:
            close = ", ".join(sorted(known))
            raise SeqlabError(f"unknown config key '{full}' (known keys here: {close})")
        kwargs[key] = _check_value(full, hints[key], value)
    return cls(**kwargs)


def merge(base: dict, override: dict) -> dict:
    """Recursive dict merge; `override` wins."""
    out = dict(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def load_toml(path: str | Path) -> dict:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SeqlabError(f"config file not found: {path}") from None
    except UnicodeDecodeError as e:
        raise SeqlabError(f"{path}: not UTF-8 ({e.reason} at byte {e.start})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SeqlabError(f"{path}: invalid TOML: {e}") from None


def naming_the_file(path, file_values: dict, flag_values: dict, parse: Callable[[], T]) -> T:
    """Run `parse`; a config error about a key set in the TOML file at `path` (`file_values`,
    the whole file) and not by a flag (`flag_values`, nested the same way) gets the file's
    name in front, so the user knows where to look."""
    try:
        return parse()
    except SeqlabError as e:
        match = re.search(r"config key '([\w.]+)", str(e))
        if path and match and _has_key(file_values, match[1]) and not _has_key(flag_values, match[1]):
            raise SeqlabError(f"{path}: {e}") from None
        raise


def _has_key(values: dict, dotted: str) -> bool:
    for part in dotted.split("."):
        if not isinstance(values, dict) or part not in values:
            return False
        values = values[part]
    return True


# TOML sections map onto RunConfig fields; [data] holds both the data path and
# the data options so that users write `[data] path = "names.txt"`.
def run_config_from_dict(data: dict) -> RunConfig:
    data = dict(data)
    data_section = data.pop("data", {})
    if isinstance(data_section, str):
        data_section = {"path": data_section}
    data_section = dict(data_section)
    path = _check_value("data.path", str, data_section.pop("path", ""))
    opts = section_from_dict(DataConfig, data_section, prefix="data")
    if "data_opts" in data:
        raise SeqlabError("unknown config key 'data_opts' (data options go in the [data] table)")
    cfg = section_from_dict(RunConfig, data)
    cfg.data, cfg.data_opts = path, opts
    _validate(cfg)
    return cfg


def run_config_to_dict(cfg: RunConfig) -> dict:
    d = dataclasses.asdict(cfg)
    opts = d.pop("data_opts")
    return {"data": {"path": d.pop("data"), **opts}, **d}


def _validate(cfg: RunConfig) -> None:
    m, t = cfg.model, cfg.train
    positive = {
        "model.n_layer": m.n_layer, "model.n_head": m.n_head, "model.n_embd": m.n_embd,
        "train.batch_size": t.batch_size, "train.grad_accum": t.grad_accum,
        "train.eval_interval": t.eval_interval, "train.checkpoint_interval": t.checkpoint_interval,
        "model.mlp_context": m.mlp_context, "train.log_interval": t.log_interval, "train.steps": t.steps,
        "train.lr": t.lr,
    }
    for key, v in positive.items():
        if v <= 0:
            raise SeqlabError(f"config key '{key}': must be positive, got {v}")
    if m.type == "transformer":
        kv = m.n_kv_head or m.n_head
        if m.n_embd % m.n_head:
            raise SeqlabError(f"config key 'model.n_embd': {m.n_embd} is not divisible by n_head={m.n_head}")
        if m.n_head % kv:
            raise SeqlabError(f"config key 'model.n_kv_head': n_head={m.n_head} is not divisible by n_kv_head={kv}")
        if m.pos == "rope" and (m.n_embd // m.n_head) % 2:
            raise SeqlabError("config key 'model.pos': rope needs an even head size (n_embd / n_head)")
        if m.moe_experts < 0 or m.attention_window < 0 or m.moe_aux_coef < 0:
            key = next(k for k in ("moe_experts", "attention_window", "moe_aux_coef") if getattr(m, k) < 0)
            raise SeqlabError(f"config key 'model.{key}': must be >= 0, got {getattr(m, key)}")
        if m.moe_experts and not 1 <= m.moe_top_k <= m.moe_experts:
            raise SeqlabError(f"config key 'model.moe_top_k': must be between 1 and moe_experts "
                              f"({m.moe_experts}), got {m.moe_top_k}")
    if m.seq2seq_heads < 1 or (m.n_hidden or m.n_embd) % m.seq2seq_heads:
        raise SeqlabError(f"config key 'model.seq2seq_heads': must be >= 1 and divide the RNN width "
                          f"{m.n_hidden or m.n_embd}, got {m.seq2seq_heads}")
    if not 0.0 <= m.dropout < 1.0:
        raise SeqlabError(f"config key 'model.dropout': must be in [0, 1), got {m.dropout}")
    if not 0.0 <= cfg.data_opts.val_fraction < 1.0:
        raise SeqlabError(f"config key 'data.val_fraction': must be in [0, 1), got {cfg.data_opts.val_fraction}")


@dataclass
class SampleConfig:
    n: int = 10
    prompt: str = ""
    max_new_tokens: Optional[int] = None
    seed: Optional[int] = None
    temperature: float = 1.0
    top_k: Optional[int] = None
    top_p: Optional[float] = None
    min_p: Optional[float] = None
    beam: int = 0  # 0: no beam search
    device: str = "cpu"
    checkpoint: Literal["best", "last"] = "best"

    def __post_init__(self):
        for key, low in (("n", 1), ("max_new_tokens", 1), ("beam", 0)):
            value = getattr(self, key)
            if value is not None and value < low:
                raise SeqlabError(f"config key 'sample.{key}' (--{key.replace('_', '-')}): must be >= {low}, "
                                  f"got {value}")
