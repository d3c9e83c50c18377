"""Chat on an imported model: `sample --chat` and the terminal `chat` put the conversation
through the model's chat template (the ids transformers' apply_chat_template gives) and
reply what transformers' greedy generate replies."""

from __future__ import annotations

import io
import json
import sys

import pytest
import torch

from seqlab.cli import main
from seqlab.interop.importer import import_model

transformers = pytest.importorskip("transformers")
from test_import_hf import make_hf  # noqa: E402  (the tiny checkpoints)

QUESTION = "What is 12 + 35?"


@pytest.fixture(scope="module")
def chat_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("chat")
    ref = make_hf("llama", root / "hf", max_position_embeddings=256)
    import_model(str(root / "hf"), root / "run")
    return root, ref, transformers.AutoTokenizer.from_pretrained(root / "hf")


def hf_greedy_reply(ref, hf_tok, messages, n):
    ids = hf_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)["input_ids"]
    out = ref.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, eos_token_id=hf_tok.eos_token_id,
                       pad_token_id=hf_tok.pad_token_id)
    return hf_tok.decode(out[0, len(ids):], skip_special_tokens=True), len(ids)


def test_sample_chat_replies_like_transformers(chat_run, capsys):
    root, ref, hf_tok = chat_run
    capsys.readouterr()
    assert main(["sample", str(root / "run"), "--chat", QUESTION, "--system", "Be brief.", "--temperature", "0",
                 "--max-new-tokens", "12", "--n", "1", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": QUESTION}]
    reply, prompt_len = hf_greedy_reply(ref, hf_tok, messages, 12)
    assert payload["prompt_tokens"] == prompt_len
    assert payload["samples"] == [reply] and reply


def test_terminal_chat_streams_and_keeps_the_conversation(chat_run, capsys, monkeypatch):
    root, ref, hf_tok = chat_run
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{QUESTION}\n\nAnd 3 + 4?\n"))  # then end of input (Ctrl-D)
    capsys.readouterr()
    assert main(["chat", str(root / "run"), "--temperature", "0", "--max-new-tokens", "10"]) == 0
    out = capsys.readouterr().out
    first, _ = hf_greedy_reply(ref, hf_tok, [{"role": "user", "content": QUESTION}], 10)
    second, _ = hf_greedy_reply(ref, hf_tok, [{"role": "user", "content": QUESTION},
                                              {"role": "assistant", "content": first},
                                              {"role": "user", "content": "And 3 + 4?"}], 10)
    assert out == f"{first}\n{second}\n"  # one reply per question; the blank line asked nothing


def test_a_conversation_longer_than_the_context_drops_its_oldest_turns(tmp_path, capsys, monkeypatch):
    make_hf("llama", tmp_path / "hf")  # a context of 64 tokens
    import_model(str(tmp_path / "hf"), tmp_path / "run")
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{QUESTION}\n{QUESTION}\n{'word ' * 80}\n"))
    capsys.readouterr()
    assert main(["chat", str(tmp_path / "run"), "--temperature", "0", "--max-new-tokens", "10"]) == 0
    captured = capsys.readouterr()
    assert "oldest turn was dropped" in captured.err and "the model's context is 64" in captured.err


def test_chat_needs_a_chat_template(tmp_path, capsys):
    from test_import_hf import seqlab_run

    seqlab_run(tmp_path / "run")
    assert main(["sample", str(tmp_path / "run"), "--chat", "hi"]) == 2
    assert "no chat template" in capsys.readouterr().err
