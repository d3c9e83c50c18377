"""Post-training an imported chat model: prompts go through its chat template (the ids
transformers' apply_chat_template gives, system message included), completions end with
the template's end-of-turn token, every algorithm runs with LoRA and with full
fine-tuning, and GRPO with LoRA learns (the reward rises) while changing only adapters."""

from __future__ import annotations

import json

import pytest
import torch

from seqlab.checkpoint import load_model
from seqlab.cli import main
from seqlab.errors import SeqlabError
from seqlab.interop.importer import import_model
from seqlab.post.config import load_post_config
from seqlab.post.prompting import prompt_format

transformers = pytest.importorskip("transformers")
from test_import_hf import make_hf  # noqa: E402  (the tiny checkpoints)

SYSTEM = "Think, then answer between <SOLUTION> and </SOLUTION>."


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    root = tmp_path_factory.mktemp("postchat")
    make_hf("llama", root / "hf", max_position_embeddings=256)
    import_model(str(root / "hf"), root / "run")
    hf_tok = transformers.AutoTokenizer.from_pretrained(root / "hf")
    prompts = ["What is 12 + 35?", "The cat sat on", "hello", "Add 3 and 4."]
    (root / "sft.jsonl").write_text("".join(json.dumps({"prompt": p, "completion": "It is 47."}) + "\n"
                                            for p in prompts))
    (root / "pref.jsonl").write_text("".join(json.dumps({"prompt": p, "chosen": "It is 47.", "rejected": "cat"})
                                             + "\n" for p in prompts))
    (root / "rl.jsonl").write_text("".join(json.dumps({"prompt": p, "answer": "47"}) + "\n" for p in prompts))
    (root / "chatrewards.py").write_text(
        "def count_t(prompts, completions, **kw):\n"
        "    return [float(c.count('t')) for c in completions]\n")
    # a policy that ends its replies (rejection sampling keeps only finished completions)
    _run("sft", load_post_config(None, {"policy": str(root / "run"), "data": str(root / "sft.jsonl"),
                                        "out": str(root / "sft-reply"), "steps": 60, "batch_size": 4, "lr": 3e-3}))
    return root, hf_tok


def test_prompts_follow_the_chat_template_with_the_system_message(imported):
    root, hf_tok = imported
    _, tok, _ = load_model(root / "run")
    fmt = prompt_format(tok, None, SYSTEM)
    assert fmt.chat and fmt.end_id == hf_tok.convert_tokens_to_ids("<|im_end|>")
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "What is 12 + 35?"}]
    want = hf_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)["input_ids"]
    assert fmt.prompt_ids("What is 12 + 35?") == list(want)
    ids, mask = fmt.pair("What is 12 + 35?", "It is 47.", None)
    assert ids == list(want) + hf_tok.encode("It is 47.", add_special_tokens=False) + [fmt.end_id]
    assert mask == [0] * len(want) + [1] * (len(ids) - len(want))
    plain = prompt_format(tok, False, SYSTEM)  # chat_template = false: <bos> + the text, eos ends
    assert plain.prompt_ids("hi") == tok.encode_prompt("hi") and plain.end_id == tok.eos_id


def test_chat_template_true_needs_a_template():
    from seqlab.data.tokenizer import CharTokenizer

    with pytest.raises(SeqlabError, match=r"^config key 'post.chat_template': the policy's tokenizer has no chat"):
        prompt_format(CharTokenizer(list("ab")), True, "")
    assert not prompt_format(CharTokenizer(list("ab")), None, "").chat  # default: plain for such a model


def _run(algorithm, cfg):
    from seqlab.post import get_runner

    return get_runner(algorithm)(cfg, progress=False)


@pytest.mark.parametrize("lora", [4, 0])
@pytest.mark.parametrize("algorithm", ["sft", "rejection", "rm", "ppo", "grpo", "dpo"])
def test_every_algorithm_runs_on_an_imported_model(imported, algorithm, lora, monkeypatch):
    root, _ = imported
    monkeypatch.syspath_prepend(str(root))
    data = {"sft": "sft", "dpo": "pref", "rm": "pref"}.get(algorithm, "rl")
    out = root / f"{algorithm}-{lora}"
    policy = root / ("sft-reply" if algorithm == "rejection" else "run")
    cfg = load_post_config(None, {"policy": str(policy), "data": str(root / f"{data}.jsonl"),
                                  "out": str(out), "steps": 2, "batch_size": 4, "lr": 1e-2, "group_size": 2,
                                  "prompts_per_step": 2, "max_new_tokens": 5, "rounds": 1,
                                  "reward_threshold": -1.0, "rewards": ["chatrewards:count_t"], "minibatches": 1,
                                  "ppo_epochs": 1, "lora_rank": lora, "system": SYSTEM})
    result = _run(algorithm, cfg)
    assert result["step"] == 2 and result["loss"] == result["loss"]
    before = {n: p for n, p in load_model(policy)[0].named_parameters()}
    after, tok, _ = load_model(out)
    assert tok.chat_template == load_model(root / "run")[1].chat_template  # the result still chats
    changed = {n for n, p in after.named_parameters() if not torch.equal(p, before[n])}
    if lora:  # only the LoRA-targeted matrices moved (merged); norms, embeddings, head untouched
        assert changed and all(n.rsplit(".", 2)[-2] in ("qkv", "proj", "fc", "gate_up") for n in changed)
    else:
        assert "blocks.0.norm1.weight" in changed and "blocks.1.norm2.weight" in changed  # not LoRA targets
    if algorithm in ("grpo", "rejection", "ppo") and (out / "samples.jsonl").exists():
        row = json.loads((out / "samples.jsonl").read_text().splitlines()[0])
        assert "<|im_start|>" not in row["completion"]  # specials stripped, prompt text is the row's own
        assert not row["prompt"].startswith("<|im_start|>")


def test_sft_teaches_a_chat_reply_that_sample_chat_gives_back(imported, capsys):
    """Train time and chat time agree on the format: after SFT through the template, the
    greedy `sample --chat` reply is the trained completion, ended at <|im_end|>."""
    root, _ = imported
    out = root / "sft-reply"  # the fixture's
    capsys.readouterr()
    assert main(["sample", str(out), "--chat", "hello", "--temperature", "0", "--max-new-tokens", "20",
                 "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["samples"] == ["It is 47."] and got["finished"] == [True]


def test_grpo_with_lora_raises_the_reward_and_changes_only_adapters(imported, monkeypatch):
    """Reward = number of 't' characters in the reply: a random model gets some by chance
    and can only get more by learning to emit them. Its expected value, estimated from 64
    sampled replies with the same seed, must rise well beyond sampling noise."""
    from safetensors.torch import load_file

    from seqlab.generate_text import chat_prompt_ids
    from seqlab.sampling import DecodeRule, generate

    root, _ = imported
    monkeypatch.syspath_prepend(str(root))
    out = root / "grpo-learns"
    cfg = load_post_config(None, {"policy": str(root / "run"), "data": str(root / "rl.jsonl"), "out": str(out),
                                  "steps": 30, "lr": 2e-2, "group_size": 8, "prompts_per_step": 2,
                                  "max_new_tokens": 8, "rewards": ["chatrewards:count_t"], "lora_rank": 4,
                                  "system": SYSTEM, "seed": 1})
    _run("grpo", cfg)

    def mean_reward(run):
        model, tok, _ = load_model(run)
        ids = chat_prompt_ids(tok, [{"role": "system", "content": SYSTEM},
                                    {"role": "user", "content": "What is 12 + 35?"}])
        gen = generate(model, [ids] * 64, 8, DecodeRule(temperature=1.0), tok.eos_id, tok.pad_id,
                       generator=torch.Generator().manual_seed(0))
        return sum(tok.decode(r).count("t") for r in gen.rows()) / 64

    base, trained = mean_reward(root / "run"), mean_reward(out)
    assert trained > base + 1.0, (base, trained)
    rewards = [float(r.split(",")[2]) for r in (out / "metrics.csv").read_text().splitlines()[1:]]
    assert sum(rewards[-5:]) / 5 > sum(rewards[:5]) / 5 + 1.0
    adapter = load_file(str(out / "adapter.safetensors"))
    assert adapter and all(".lora_A." in k or ".lora_B." in k for k in adapter)
    before = {n: p for n, p in load_model(root / "run")[0].named_parameters()}
    after, _, _ = load_model(out)
    for n, p in after.named_parameters():  # merged: W + (alpha/r) B A where LoRA sat, else identical
        key = n.removesuffix(".weight")
        if f"{key}.lora_A.weight" in adapter:
            delta = 2.0 * adapter[f"{key}.lora_B.weight"] @ adapter[f"{key}.lora_A.weight"]
            torch.testing.assert_close(p - before[n], delta, atol=1e-5, rtol=1e-4)
        else:
            assert torch.equal(p, before[n]), n
    # export merges nothing further: the exported HF model computes the LoRA-trained logits
    from seqlab.interop.export import export_run

    export_run(out, root / "grpo-hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(root / "grpo-hf").eval()
    ids = torch.tensor([[5, 17, 42, 250, 3, 99, 140, 7]])
    with torch.no_grad():
        ours, _ = after(ids)
        base_logits, _ = load_model(root / "run")[0](ids)
        theirs = hf(ids).logits
    assert (theirs - ours).abs().max().item() < 1e-4
    assert (theirs - base_logits).abs().max().item() > 1e-2  # the adapters' change is in the export
