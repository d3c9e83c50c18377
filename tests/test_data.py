"""Data: reading, bad input errors, tokenizers, split, batching."""

import pytest
import torch

from seqlab.data.lines import encode_lines, read_lines, split_lines
from seqlab.data.tokenizer import BPETokenizer, CharTokenizer, tokenizer_from_dict
from seqlab.errors import SeqlabError


def test_empty_file_is_an_error(tmp_path):
    p = tmp_path / "empty.txt"
    p.write_text("\n  \n\n")
    with pytest.raises(SeqlabError, match=r"empty\.txt: no examples"):
        read_lines(p)


def test_non_utf8_names_the_line(tmp_path):
    p = tmp_path / "bad.txt"
    p.write_bytes(b"anna\nbob\ncl\xe9o\n")
    with pytest.raises(SeqlabError, match=r"bad\.txt:3: not valid UTF-8 \(byte 0xe9 at column 3\)"):
        read_lines(p)


def test_missing_file(tmp_path):
    with pytest.raises(SeqlabError, match="data file not found"):
        read_lines(tmp_path / "nope.txt")


def test_lines_are_stripped_and_blank_dropped(tmp_path):
    p = tmp_path / "x.txt"
    p.write_text(" ab \n\ncd\r\n")
    assert read_lines(p) == ["ab", "cd"]
    p.write_bytes("\ufeffab\ncd\n".encode())  # an editor's byte-order mark is not a character of the data
    assert read_lines(p) == ["ab", "cd"]


def test_overlong_line_errors_or_truncates():
    tok = CharTokenizer.train(["abc", "abcdefgh"])
    with pytest.raises(SeqlabError, match=r"example 2 has 8 tokens .*block_size=5.* fits 4"):
        encode_lines(["abc", "abcdefgh"], tok, block_size=5)
    enc = encode_lines(["abc", "abcdefgh"], tok, block_size=5, truncate=True)
    assert enc.lengths.tolist() == [3, 4]
    assert tok.decode(enc.tokens[1].tolist()) == "abcd"


def test_jsonl_errors_name_the_file_line_and_key(tmp_path):
    from seqlab.post.data import load_jsonl

    tok = CharTokenizer.train(["abc"])
    p = tmp_path / "d.jsonl"
    p.write_bytes('\ufeff{"prompt": "ab", "completion": "c"}\n\n{"prompt": "a", "completion": "bé"}\n'.encode())
    with pytest.raises(SeqlabError, match=r"d.jsonl:3: key 'completion' has characters not in the vocabulary: 'é'"):
        load_jsonl(p, ("prompt", "completion"), tok)
    assert [r["prompt"] for r in load_jsonl(p, ("prompt", "completion"))] == ["ab", "a"]  # BOM dropped


def test_unknown_prompt_characters_are_listed():
    tok = CharTokenizer.train(["abc"])
    with pytest.raises(SeqlabError, match=r"prompt has characters not in the vocabulary: 'Z' 'é'"):
        tok.check_encodable("aZéb", "prompt")


def test_char_tokenizer_reserves_specials_and_round_trips():
    tok = CharTokenizer.train(["hello", "world"], extra_specials=["<SOLUTION>"])
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    assert tok.itos[:4] == ["<pad>", "<bos>", "<eos>", "<SOLUTION>"]
    ids = tok.encode("hel<SOLUTION>lo")
    assert ids.count(3) == 1 and len(ids) == 6
    assert tok.decode([1] + ids + [2]) == "hel<SOLUTION>lo"
    again = tokenizer_from_dict(tok.to_dict())
    assert again.encode("world") == tok.encode("world")


def test_bpe_tokenizer_round_trips_and_saves():
    lines = ["the cat sat on the mat", "the dog sat on the log", "a cat and a dog"] * 20
    tok = BPETokenizer.train(lines, vocab_size=300)
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    ids = tok.encode("the cat sat")
    assert len(ids) < len("the cat sat")  # merges happened
    assert tok.decode(ids) == "the cat sat"
    assert tok.decode(tok.encode("zebra ünïcode")) == "zebra ünïcode"  # byte-level: nothing unknown
    again = tokenizer_from_dict(tok.to_dict())
    assert again.encode("the dog") == tok.encode("the dog") and again.vocab_size == tok.vocab_size


def test_split_is_deterministic_by_seed_and_disjoint():
    lines = [f"w{i}" for i in range(500)]
    a = split_lines(lines, 0.1, 1000, seed=3)
    b = split_lines(lines, 0.1, 1000, seed=3)
    c = split_lines(lines, 0.1, 1000, seed=4)
    assert a == b and a != c
    assert len(a[1]) == 50 and not set(a[0]) & set(a[1])
    assert len(split_lines(lines * 100, 0.1, 1000, seed=0)[1]) == 1000  # makemore's cap


def test_batch_inputs_targets_and_trim():
    tok = CharTokenizer.train(["ab", "abcd"])
    enc = encode_lines(["ab", "abcd"], tok, block_size=8)
    x, y = enc.batch(torch.tensor([0]), tok.pad_id)
    a, b = tok.stoi["a"], tok.stoi["b"]
    assert x.tolist() == [[1, a, b]]  # trimmed to this batch's longest row
    assert y.tolist() == [[a, b, 2]]
    x, y = enc.batch(torch.tensor([0, 1]), tok.pad_id)
    assert x.shape == (2, 5) and y[0].tolist() == [a, b, 2, -1, -1]


@pytest.mark.parametrize("truncate", [False, True])
def test_target_count_is_the_batch_targets_that_count(truncate):
    """Training normalises by the global batch's token count without building every rank's
    batch: target_count must equal batch()'s y != -1 (trimmed or not, truncated lines too)."""
    lines = ["a", "abc", "abcdefgh", "ab", "abcdefghijkl"]
    tok = CharTokenizer.train(lines)
    enc = encode_lines(lines, tok, block_size=10 if truncate else 16, truncate=truncate)
    for idx in (torch.tensor([0, 1, 2, 3, 4]), torch.tensor([4, 4, 0]), torch.tensor([3])):
        for trim in (True, False):
            _, y = enc.batch(idx, tok.pad_id, trim=trim)
            assert enc.target_count(idx) == int((y != -1).sum())
