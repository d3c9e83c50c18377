"""Tokenizers: a character tokenizer built from the training lines, and BPE
trained with the Hugging Face `tokenizers` library.

Both reserve the same special tokens at the same ids, so models, the sampler and
post-training can rely on `pad_id`, `bos_id`, `eos_id` whatever the tokenizer:

    0 <pad>   1 <bos>   2 <eos>   3.. extra specials (e.g. reasoning tags), then the vocabulary
"""

from __future__ import annotations

import json
from typing import Iterable, Sequence

from ..errors import SeqlabError

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
BASE_SPECIALS = (PAD, BOS, EOS)


class Tokenizer:
    """Interface shared by both tokenizers."""

    specials: list[str]
    pad_id, bos_id, eos_id = 0, 1, 2

    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: Iterable[int]) -> str:
        raise NotImplementedError

    def encode_prompt(self, text: str) -> list[int]:
        """A prompt's ids as the model starts a sequence: seqlab's models begin with <bos>."""
        return [self.bos_id] + self.encode(text)

    def unknown_chars(self, text: str) -> list[str]:
        """Characters of `text` the tokenizer cannot represent."""
        return []

    def to_dict(self) -> dict:
        raise NotImplementedError

    def check_encodable(self, text: str, what: str = "prompt") -> None:
        bad = self.unknown_chars(text)
        if bad:
            shown = " ".join(repr(c) for c in bad)
            raise SeqlabError(f"{what} has characters not in the vocabulary: {shown}")


class CharTokenizer(Tokenizer):
    """One token per character (makemore's convention), plus special tokens.

    Extra specials (e.g. `<SOLUTION>`) are matched greedily as whole strings
    before falling back to characters.
    """

    def __init__(self, chars: Sequence[str], extra_specials: Sequence[str] = ()):
        self.specials = list(BASE_SPECIALS) + list(extra_specials)
        self.chars = list(chars)
        self.itos = self.specials + self.chars
        self.stoi = {s: i for i, s in enumerate(self.itos)}
        # Longest first so that "<SOLUTION>" wins over "<S".
        self._extra = sorted(extra_specials, key=len, reverse=True)

    @classmethod
    def train(cls, lines: Iterable[str], extra_specials: Sequence[str] = ()) -> "CharTokenizer":
        chars = sorted(set("".join(lines)))
        return cls(chars, extra_specials)

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def encode(self, text: str) -> list[int]:
        stoi = self.stoi
        if not self._extra:
            try:
                return [stoi[c] for c in text]
            except KeyError:
                self.check_encodable(text, "text")
                raise
        out, i = [], 0
        while i < len(text):
            for sp in self._extra:
                if text.startswith(sp, i):
                    out.append(stoi[sp])
                    i += len(sp)
                    break
            else:
                if text[i] not in stoi:
                    self.check_encodable(text, "text")
                out.append(stoi[text[i]])
                i += 1
        return out

    def decode(self, ids: Iterable[int]) -> str:
        n_base = len(BASE_SPECIALS)
        return "".join(self.itos[i] for i in ids if i >= n_base)

    def unknown_chars(self, text: str) -> list[str]:
        for sp in self._extra:
            text = text.replace(sp, "")
        return sorted({c for c in text if c not in self.stoi})

    def to_dict(self) -> dict:
        return {"type": "char", "chars": self.chars, "specials": self.specials}


class BPETokenizer(Tokenizer):
    """Byte-level BPE trained with Hugging Face `tokenizers` (round-trips any text)."""

    def __init__(self, hf_tokenizer, specials: Sequence[str]):
        self.hf = hf_tokenizer
        self.specials = list(specials)

    @classmethod
    def train(cls, lines: Iterable[str], vocab_size: int, extra_specials: Sequence[str] = ()) -> "BPETokenizer":
        from tokenizers import Tokenizer as HFTokenizer, decoders, models, pre_tokenizers, trainers

        hf = HFTokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        hf.decoder = decoders.ByteLevel()
        specials = list(BASE_SPECIALS) + list(extra_specials)
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        hf.train_from_iterator(list(lines), trainer=trainer)
        return cls(hf, specials)

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int]) -> str:
        return self.hf.decode([i for i in ids if i >= len(BASE_SPECIALS)], skip_special_tokens=False)

    def to_dict(self) -> dict:
        return {"type": "bpe", "specials": self.specials, "hf": json.loads(self.hf.to_str())}


class PretrainedTokenizer(Tokenizer):
    """A pretrained model's own tokenizer (a Hugging Face `tokenizers` JSON), kept as imported,
    with the model's special tokens (their ids are the model's, not seqlab's 0/1/2) and its
    chat template (data/chat.py renders it)."""

    def __init__(self, hf_tokenizer, special_tokens: dict, chat_template: str | None = None):
        self.hf = hf_tokenizer
        self.special_tokens = {k: v for k, v in special_tokens.items() if isinstance(v, str) and v}
        self.chat_template = chat_template

        def token_id(name):
            text = self.special_tokens.get(name)
            return None if text is None else self.hf.token_to_id(text)

        eos = token_id("eos_token")
        if eos is None:
            raise SeqlabError("tokenizer: the model names no end-of-sequence token (eos_token) in its vocabulary")
        self.eos_id = eos
        # models without a <bos> (Qwen; GPT-2's <|endoftext|> doubles as one) start from eos
        self.bos_id = token_id("bos_token") if token_id("bos_token") is not None else eos
        self.pad_id = token_id("pad_token") if token_id("pad_token") is not None else eos
        added = self.hf.get_added_tokens_decoder()
        self.specials = [t.content for _, t in sorted(added.items()) if t.special]
        # whether the model's own post-processor starts a sequence with <bos> (Llama 3 does,
        # SmolLM2 and Qwen do not)
        with_specials, plain = (self.hf.encode("a", add_special_tokens=b).ids for b in (True, False))
        self._adds_bos = len(with_specials) > len(plain) and with_specials[0] == self.bos_id

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False).ids

    def encode_prompt(self, text: str) -> list[int]:
        ids = self.encode(text)
        if self._adds_bos or not ids:  # an empty prompt still needs a first token to condition on
            ids = [self.bos_id] + ids
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=True)

    def to_dict(self) -> dict:
        return {"type": "pretrained", "hf": json.loads(self.hf.to_str()), "special_tokens": self.special_tokens,
                "chat_template": self.chat_template}


def tokenizer_from_dict(d: dict) -> Tokenizer:
    kind = d.get("type")
    if kind == "char":
        specials = d["specials"]
        if specials[: len(BASE_SPECIALS)] != list(BASE_SPECIALS):
            raise SeqlabError("tokenizer.json: special tokens must start with <pad>, <bos>, <eos>")
        return CharTokenizer(d["chars"], specials[len(BASE_SPECIALS):])
    if kind == "bpe":
        from tokenizers import Tokenizer as HFTokenizer

        return BPETokenizer(HFTokenizer.from_str(json.dumps(d["hf"])), d["specials"])
    if kind == "pretrained":
        from tokenizers import Tokenizer as HFTokenizer

        return PretrainedTokenizer(HFTokenizer.from_str(json.dumps(d["hf"])), d.get("special_tokens", {}),
                                   d.get("chat_template"))
    raise SeqlabError(f"tokenizer.json: unknown tokenizer type {kind!r}")
