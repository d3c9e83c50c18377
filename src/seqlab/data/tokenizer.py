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
    raise SeqlabError(f"tokenizer.json: unknown tokenizer type {kind!r}")
