"""Post-training end to end on tiny models: every algorithm on a transformer and a GRU,
every trainable parameter changes, the result is a normal run directory."""

import json
import subprocess

import pytest
import torch

from seqlab.checkpoint import load_model
from seqlab.config import run_config_from_dict
from seqlab.post.config import load_post_config
from seqlab.train import train

from conftest import seqlab_cmd, write_post_data


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    d = tmp_path_factory.mktemp("post")
    data = d / "base.txt"
    data.write_text("\n".join(f"{a}+{b}={a + b}" for a in range(10) for b in range(10)) + "\n")
    runs = {}
    for model in ("transformer", "gru"):
        cfg = run_config_from_dict({"data": {"path": str(data)},
                                    "model": {"type": model, "n_layer": 1, "n_head": 2, "n_embd": 16,
                                              "block_size": 24},
                                    "train": {"steps": 20, "batch_size": 16, "eval_interval": 20}})
        train(cfg, d / model, progress=False)
        runs[model] = d / model
    return d, runs, write_post_data(d, "toyrewards")


def params_before(run):
    model, _, _ = load_model(run)
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("model", ["transformer", "gru"])
@pytest.mark.parametrize("algorithm", ["sft", "dpo", "grpo", "rejection", "ppo", "rm"])
def test_algorithm_changes_every_parameter(bases, model, algorithm, monkeypatch):
    d, runs, data = bases
    monkeypatch.syspath_prepend(str(d))
    out = d / f"{algorithm}-{model}"
    over = {"policy": str(runs[model]), "data": str(data[algorithm]), "out": str(out), "steps": 2,
            "batch_size": 8, "lr": 1e-2, "group_size": 4, "prompts_per_step": 2, "max_new_tokens": 6,
            "rewards": ["toyrewards:count_ones"], "rounds": 1, "reward_threshold": -1.0, "kl_beta": 0.05,
            "minibatches": 1, "ppo_epochs": 1}
    cfg = load_post_config(None, over)
    from seqlab.post.dpo import run_dpo
    from seqlab.post.grpo import run_grpo
    from seqlab.post.ppo import run_ppo
    from seqlab.post.rejection import run_rejection
    from seqlab.post.reward_model import run_reward_model
    from seqlab.post.sft import run_sft

    run = {"sft": run_sft, "dpo": run_dpo, "grpo": run_grpo, "rejection": run_rejection, "ppo": run_ppo,
           "rm": run_reward_model}[algorithm]
    result = run(cfg, progress=False)
    assert result["step"] == 2 and result["loss"] == result["loss"]  # not NaN
    before = params_before(runs[model])
    after, _, _ = load_model(out)
    from seqlab.post.reward_model import FROZEN

    frozen = FROZEN if algorithm == "rm" else ()  # provably gradient-free there (see reward_model.py)
    unchanged = [n for n, p in after.named_parameters() if torch.equal(p, before[n]) and n not in frozen]
    assert unchanged == []
    rows = (out / "metrics.csv").read_text().splitlines()
    assert len(rows) == 3
    assert (out / "dashboard.png").read_bytes()[:4] == b"\x89PNG"
    if algorithm == "grpo":
        header = rows[0].split(",")
        for col in ("reward", "reward_std", "frac_zero_std", "completion_len", "truncated", "kl", "clip_low",
                    "entropy", "reward/toyrewards:count_ones", "step_time_s"):
            assert col in header
        assert (out / "samples.jsonl").exists()


def test_post_cli_json_and_errors(bases, tmp_path):
    d, runs, data = bases
    cfg = tmp_path / "sft.toml"
    cfg.write_text(f'[post]\npolicy = "{runs["gru"]}"\ndata = "{data["sft"]}"\nout = "{tmp_path / "o"}"\n'
                   "steps = 3\nbatch_size = 4\n")
    r = subprocess.run(seqlab_cmd("post", "sft", "--config", cfg, "--json", "--quiet"), capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    p = json.loads(r.stdout)
    assert p["step"] == 3 and p["algorithm"] == "sft"
    s = subprocess.run(seqlab_cmd("sample", tmp_path / "o", "--n", "2", "--json"), capture_output=True, text=True)
    assert len(json.loads(s.stdout)["samples"]) == 2
    bad = tmp_path / "bad.toml"
    bad.write_text("[post]\nstepz = 3\n")
    r = subprocess.run(seqlab_cmd("post", "sft", "--config", bad), capture_output=True, text=True)
    assert r.returncode != 0 and r.stderr.startswith(f"error: {bad}: unknown config key 'post.stepz'")
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "1+1=", "completion": "2"}\n{"prompt": 3}\n')
    cfg.write_text(f'[post]\npolicy = "{runs["gru"]}"\ndata = "{broken}"\nout = "{tmp_path / "o2"}"\n')
    r = subprocess.run(seqlab_cmd("post", "sft", "--config", cfg), capture_output=True, text=True)
    assert r.stderr.strip() == f"error: {broken}:2: missing key(s) completion"


@pytest.mark.parametrize("algorithm", ["sft", "grpo"])
def test_lora_trains_only_adapters_and_merges(bases, algorithm, monkeypatch):
    """LoRA (peft): the base weights are frozen, so after merging only the targeted
    matrices moved (W + alpha/r B A) and everything else is bit-identical; the
    adapter file holds r x in and out x r matrices per targeted layer."""
    from safetensors.torch import load_file

    d, runs, data = bases
    monkeypatch.syspath_prepend(str(d))
    out = d / f"lora-{algorithm}"
    cfg = load_post_config(None, {"policy": str(runs["transformer"]), "data": str(data[algorithm]),
                                  "out": str(out), "steps": 3, "batch_size": 8, "lr": 5e-2, "group_size": 4,
                                  "prompts_per_step": 2, "max_new_tokens": 6, "rewards": ["toyrewards:count_ones"],
                                  "lora_rank": 2, "lora_targets": ["qkv", "fc"]})
    from seqlab.post.grpo import run_grpo
    from seqlab.post.sft import run_sft

    (run_sft if algorithm == "sft" else run_grpo)(cfg, progress=False)
    before = params_before(runs["transformer"])
    after, _, _ = load_model(out)
    changed = sorted(n for n, p in after.named_parameters() if not torch.equal(p, before[n]))
    assert changed == ["blocks.0.attn.qkv.weight", "blocks.0.mlp.fc.weight"]
    adapter = load_file(str(out / "adapter.safetensors"))
    shapes = {k: tuple(v.shape) for k, v in adapter.items()}
    assert shapes == {"blocks.0.attn.qkv.lora_A.weight": (2, 16), "blocks.0.attn.qkv.lora_B.weight": (48, 2),
                      "blocks.0.mlp.fc.lora_A.weight": (2, 16), "blocks.0.mlp.fc.lora_B.weight": (64, 2)}
    # merged delta == (alpha / r) B A with the default alpha = 2 r
    A, B = adapter["blocks.0.mlp.fc.lora_A.weight"], adapter["blocks.0.mlp.fc.lora_B.weight"]
    delta = after.blocks[0].mlp.fc.weight - before["blocks.0.mlp.fc.weight"]
    torch.testing.assert_close(delta, 2.0 * B @ A, atol=1e-6, rtol=1e-5)


def test_frozen_base_layers_cast_once_under_autocast(bases):
    """After apply_lora the frozen float layers (the adapters' bases, the head) are
    FrozenLinear: under CPU bf16 autocast they give exactly what nn.Linear gives, from one
    bf16 copy of the weight kept between calls, remade when the weight changes in place, and
    dropped when the adapters merge (plain nn.Linear again)."""
    from seqlab.models.layers import FrozenLinear
    from seqlab.models.lora import apply_lora, merge_lora

    _, runs, _ = bases
    model, tok, _ = load_model(runs["transformer"])
    apply_lora(model, 2)
    base = model.blocks[0].attn.qkv.get_base_layer()
    assert type(base) is FrozenLinear and type(model.lm_head) is FrozenLinear
    with torch.inference_mode():  # as the sampler first asks for it: still usable for training
        assert not base.autocast_weight(torch.bfloat16).is_inference()
    x = torch.randn(2, 5, base.in_features)
    plain = torch.nn.Linear(base.in_features, base.out_features, bias=base.bias is not None)
    plain.load_state_dict(base.state_dict())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, ref = base(x), plain(x)
        first = base.autocast_weight(torch.bfloat16)
        base(x)
        assert base.autocast_weight(torch.bfloat16) is first  # not cast again
        with torch.no_grad():
            base.weight.mul_(2)
        assert base.autocast_weight(torch.bfloat16) is not first
        torch.testing.assert_close(base.autocast_weight(torch.bfloat16), (2 * plain.weight).to(torch.bfloat16),
                                   atol=0, rtol=0)
    assert out.dtype == torch.bfloat16 and torch.equal(out, ref)
    torch.testing.assert_close(base(x), 2 * plain(x) - (plain.bias if plain.bias is not None else 0))
    merge_lora(model)
    assert not any(type(m) is FrozenLinear for m in model.modules())


def test_lora_sampler_sees_adapters_and_rejects_recurrent(bases):
    """The cached decode path must call the LoRA-wrapped layers (not the bare weights):
    cached sampling log-probs equal the full forward's, with a non-zero adapter."""
    from seqlab.errors import SeqlabError
    from seqlab.models.lora import apply_lora
    from seqlab.sampling import DecodeRule, generate

    _, runs, _ = bases
    model, tok, _ = load_model(runs["transformer"])
    apply_lora(model, 2)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    model.eval()
    gen = generate(model, [[tok.bos_id, 5, 6]] * 3, 5, DecodeRule(temperature=1.0), -1, tok.pad_id,
                   generator=torch.Generator().manual_seed(0))
    ids = torch.cat([torch.tensor([[tok.bos_id, 5, 6]] * 3), gen.tokens], 1)
    with torch.no_grad():
        logits, _ = model(ids[:, :-1])
    full = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)[:, 2:]
    torch.testing.assert_close(gen.model_logprobs, full, atol=1e-5, rtol=1e-5)
    gru, _, _ = load_model(runs["gru"])
    with pytest.raises(SeqlabError, match="post.lora_rank"):
        apply_lora(gru, 2)


@pytest.mark.parametrize("algorithm,extra", [("grpo", {"num_iterations": 2}), ("ppo", {"ppo_epochs": 2}),
                                             ("rejection", {}),
                                             ("sft", {})])
def test_post_resume_is_exact(bases, algorithm, extra, monkeypatch):
    """A run killed during update 6 and resumed gives bit-identical weights and the same
    logged rewards/losses as one uninterrupted 8-update run: the checkpoint (every 2
    updates, rounded up to the rollout period) holds the trained modules, optimizer,
    global RNG and the algorithm's sampling generator."""
    import seqlab.engine as engine
    from seqlab.post import get_runner

    d, runs, data = bases
    monkeypatch.syspath_prepend(str(d))
    base = {"policy": str(runs["transformer"]), "data": str(data[algorithm]), "batch_size": 4, "lr": 1e-2,
            "group_size": 2, "prompts_per_step": 2, "max_new_tokens": 5, "rewards": ["toyrewards:count_ones"],
            "rounds": 2, "reward_threshold": -1.0, "minibatches": 2, "ppo_epochs": 1, "kl_beta": 0.05,
            "checkpoint_interval": 2, "steps": 8, **extra}
    run = get_runner(algorithm)
    whole = d / f"resume-{algorithm}-whole"
    run(load_post_config(None, {**base, "out": str(whole)}), progress=False)
    part = d / f"resume-{algorithm}-part"
    real_lr_factor = engine.lr_factor

    def dies_at_update_6(step, cfg):
        if step == 5:
            raise KeyboardInterrupt
        return real_lr_factor(step, cfg)

    monkeypatch.setattr(engine, "lr_factor", dies_at_update_6)
    with pytest.raises(KeyboardInterrupt):
        run(load_post_config(None, {**base, "out": str(part)}), progress=False)
    monkeypatch.setattr(engine, "lr_factor", real_lr_factor)
    assert (part / "checkpoints" / "latest").read_text().strip() == "step-00000004"
    with pytest.raises(Exception, match="already holds a run"):
        run(load_post_config(None, {**base, "out": str(part)}), progress=False)
    run(load_post_config(None, {**base, "out": str(part), "resume": True}), progress=False)
    a, _, _ = load_model(whole)
    b, _, _ = load_model(part)
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), n

    def logged(run_dir):
        import csv

        rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
        return [{k: v for k, v in r.items() if k not in ("step_time_s", "elapsed_s")} for r in rows]

    assert [r["step"] for r in logged(part)] == [str(i) for i in range(1, 9)]
    assert logged(part) == logged(whole)


@pytest.mark.parametrize("setting,default,deterministic,lora", [
    (None, True, True, False), (None, False, False, False), (False, True, False, False), (True, False, True, False),
    (None, True, True, True), (None, False, False, True)])
def test_post_training_switches_dropout_off_where_asked(bases, setting, default, deterministic, lora):
    from seqlab.post.runner import load_policy

    d, runs, data = bases  # the transformer base was trained with seqlab's default dropout 0.1
    cfg = load_post_config(None, {"policy": str(runs["transformer"]), "data": str(data["grpo"]),
                                  "out": str(d / "unused"), "disable_dropout": setting,
                                  "lora_rank": 2 if lora else 0, "lora_dropout": 0.3})
    model, _, _ = load_policy(cfg, drop_dropout=default)
    model.train()
    x = torch.randint(0, 10, (8, 12))
    assert torch.equal(model(x)[0], model(x)[0]) == deterministic


def test_post_resume_edges_and_refusals(bases, monkeypatch):
    """A finished run resumes to its logged result; a run that ended mid-rollout (steps not a
    multiple of num_iterations) extends without a stale rollout; --resume refuses another
    algorithm; GRPO refuses groups of one, DPO a beta <= 0; a rejection round that keeps
    nothing leaves the weights exactly as they were (no AdamW step)."""
    from seqlab.errors import SeqlabError
    from seqlab.post import get_runner

    d, runs, data = bases
    monkeypatch.syspath_prepend(str(d))
    base = {"policy": str(runs["transformer"]), "batch_size": 4, "lr": 1e-2, "group_size": 2, "prompts_per_step": 2,
            "max_new_tokens": 5, "rewards": ["toyrewards:count_ones"], "steps": 3}
    sft = d / "edge-sft"
    first = get_runner("sft")(load_post_config(None, {**base, "data": str(data["sft"]), "out": str(sft)}),
                              progress=False)
    again = get_runner("sft")(load_post_config(None, {**base, "data": str(data["sft"]), "out": str(sft),
                                                      "resume": True}), progress=False)
    assert again["step"] == 3 and again["loss"] == pytest.approx(first["loss"], abs=1e-5)
    assert json.loads((sft / "post_config.json").read_text())["algorithm"] == "sft"
    with pytest.raises(SeqlabError, match="a sft run .* cannot continue it with algorithm dpo"):
        get_runner("dpo")(load_post_config(None, {**base, "data": str(data["dpo"]), "out": str(sft),
                                                  "resume": True}), progress=False)
    grpo = {**base, "data": str(data["grpo"]), "out": str(d / "edge-grpo"), "num_iterations": 2}
    get_runner("grpo")(load_post_config(None, grpo), progress=False)  # ends after update 3 of a 2-update rollout
    longer = get_runner("grpo")(load_post_config(None, {**grpo, "steps": 5, "resume": True}), progress=False)
    assert longer["step"] == 5
    with pytest.raises(SeqlabError, match="post.group_size"):
        get_runner("grpo")(load_post_config(None, {**grpo, "out": str(d / "g1"), "group_size": 1}), progress=False)
    with pytest.raises(SeqlabError, match="post.beta"):
        get_runner("dpo")(load_post_config(None, {**base, "data": str(data["dpo"]), "out": str(d / "b0"),
                                                  "beta": 0.0}), progress=False)
    keeps_nothing = {**base, "data": str(data["rejection"]), "out": str(d / "edge-rej"), "rounds": 1,
                     "reward_threshold": 1e9, "weight_decay": 0.1}
    result = get_runner("rejection")(load_post_config(None, keeps_nothing), progress=False)
    assert result["kept"] == 0
    before = params_before(runs["transformer"])
    after, _, _ = load_model(d / "edge-rej")
    assert all(torch.equal(p, before[n]) for n, p in after.named_parameters())


def test_grpo_micro_batches_give_the_update_of_the_whole_batch(bases, monkeypatch):
    """micro_batch = 3 (chunks of 3, 3 and 2 rows, gradients accumulated) against the whole
    batch at once: the same logged loss and statistics, and the same weights up to float
    rounding after 3 updates. AdamW hides a gradient's scale from the weights, so the
    logged gradient norm is what shows an accumulation bug (an unweighted sum of chunks)."""
    from seqlab.post.grpo import run_grpo

    d, runs, data = bases
    monkeypatch.syspath_prepend(str(d))
    base = {"policy": str(runs["transformer"]), "data": str(data["grpo"]), "steps": 3, "lr": 1e-2,
            "group_size": 4, "prompts_per_step": 2, "max_new_tokens": 6, "rewards": ["toyrewards:count_ones"]}
    for mb in (0, 3):
        run_grpo(load_post_config(None, {**base, "out": str(d / f"mb{mb}"), "micro_batch": mb}), progress=False)
    a, _, _ = load_model(d / "mb0")
    b, _, _ = load_model(d / "mb3")
    start = params_before(runs["transformer"])
    moved = max((p - start[n]).abs().max().item() for n, p in a.named_parameters())
    assert moved > 1e-3
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(p, q, atol=1e-5, rtol=1e-4), n
    import csv

    rows = [list(csv.DictReader((d / f"mb{mb}" / "metrics.csv").open())) for mb in (0, 3)]
    for r0, r3 in zip(*rows):
        for k in ("reward", "entropy", "clip_low", "clip_high", "grad_norm"):
            assert float(r0[k]) == pytest.approx(float(r3[k]), rel=1e-4, abs=1e-6), k
    import seqlab.post.grpo as grpo

    monkeypatch.setattr(grpo, "chunk_weight", lambda mask, rows, loss_type: 1.0)
    run_grpo(load_post_config(None, {**base, "out": str(d / "mb-bug"), "micro_batch": 3}), progress=False)
    bug = list(csv.DictReader((d / "mb-bug" / "metrics.csv").open()))
    assert float(bug[0]["grad_norm"]) > 2 * float(rows[0][0]["grad_norm"])


@pytest.mark.parametrize("algorithm", ["sft", "rejection"])
def test_sft_micro_batches_give_the_update_of_the_whole_batch(bases, algorithm, monkeypatch):
    """SFT's loss (SFT, rejection sampling's rounds) in chunks of 3 rows, sorted by length and
    each cut to its longest row, against the whole batch at once: the same logged loss and
    gradient norm, and the same weights up to float rounding after 3 updates. A chunk cut
    one token short (a completion token lost) or normalised by its own tokens shows."""
    import csv

    import seqlab.post.sft as sft_module
    from seqlab.post.rejection import run_rejection
    from seqlab.post.sft import run_sft

    d, runs, data = bases
    monkeypatch.syspath_prepend(str(d))
    run = {"sft": run_sft, "rejection": run_rejection}[algorithm]
    base = {"policy": str(runs["transformer"]), "data": str(data[algorithm]), "steps": 3, "lr": 1e-2,
            "batch_size": 8, "group_size": 4, "max_new_tokens": 6, "rewards": ["toyrewards:count_ones"],
            "rounds": 1, "reward_threshold": -1.0, "disable_dropout": True}  # (chunks draw other masks)

    def metrics(mb, name=None):
        out = d / f"{algorithm}-{name or f'mb{mb}'}"
        run(load_post_config(None, {**base, "out": str(out), "micro_batch": mb}), progress=False)
        return list(csv.DictReader((out / "metrics.csv").open())), load_model(out)[0]

    whole, a = metrics(0)
    chunked, b = metrics(3)
    start = params_before(runs["transformer"])
    assert max((p - start[n]).abs().max().item() for n, p in a.named_parameters()) > 1e-3
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(p, q, atol=1e-5, rtol=1e-4), n
    for r0, r3 in zip(whole, chunked, strict=True):
        for k in ("loss", "grad_norm"):
            assert float(r0[k]) == pytest.approx(float(r3[k]), rel=1e-4, abs=1e-6), k
    real = sft_module.sft_loss
    monkeypatch.setattr(sft_module, "sft_loss", lambda m, ids, mask, n: real(m, ids[:, :-1], mask[:, :-1], n))
    short, _ = metrics(3, "short")
    assert float(short[0]["loss"]) < 0.95 * float(whole[0]["loss"])
    monkeypatch.setattr(sft_module, "sft_loss", lambda m, ids, mask, n: real(m, ids, mask, None))
    own, _ = metrics(3, "own")
    assert float(own[0]["loss"]) > 2 * float(whole[0]["loss"])


def _pairs_logp(run, rows, key):
    """Sum of the completion's log-probs under a run's model, per row (prompt -> row[key])."""
    from seqlab.post.common import sequence_logprobs
    from seqlab.post.data import pad_batch
    from seqlab.post.prompting import prompt_format

    model, tok, _ = load_model(run)
    fmt = prompt_format(tok, False, "")
    ids, mask = pad_batch([fmt.pair(r["prompt"], r[key], model.max_len) for r in rows], tok.pad_id)
    with torch.no_grad():
        return sequence_logprobs(model, ids, mask).sum(1), mask[:, 1:].sum()


def _ones_per_completion(run, prompts):
    """The toy reward's expectation: '1's per sampled completion, 256 samples, fixed seed."""
    from seqlab.sampling import DecodeRule, generate

    model, tok, _ = load_model(run)
    ids = [tok.encode_prompt(p) if hasattr(tok, "encode_prompt") else [tok.bos_id, *tok.encode(p)]
           for p in prompts]
    gen = generate(model, [ids[i % len(ids)] for i in range(256)], 6, DecodeRule(temperature=1.0), tok.eos_id,
                   tok.pad_id, generator=torch.Generator().manual_seed(0))
    return sum(tok.decode(r).count("1") for r in gen.rows(strip_eos=True)) / 256


@pytest.mark.parametrize("algorithm", ["sft", "dpo", "rm", "grpo", "rejection", "ppo"])
def test_algorithm_learns_its_objective(bases, algorithm, monkeypatch):
    """Not only do the parameters move: the objective moves the right way, measured apart
    from the training loop. SFT: the data's negative log-likelihood falls; DPO: the policy
    puts the chosen answers above the rejected ones relative to the reference; RM: the
    reward model ranks the pairs right; GRPO, rejection sampling, PPO: the expected reward
    ('1's per completion, which only a changed policy can raise) rises well past sampling
    noise. A loss with the wrong sign moves each of these the other way."""
    from seqlab.post import get_runner

    d, runs, data = bases
    monkeypatch.syspath_prepend(str(d))
    base = runs["transformer"]
    out = d / f"learns-{algorithm}"
    over = {"policy": str(base), "data": str(data[algorithm]), "out": str(out),
            "steps": 60 if algorithm in ("dpo", "rm") else 30, "batch_size": 16,
            "lr": 1e-2, "group_size": 8, "prompts_per_step": 4, "max_new_tokens": 6,
            "rewards": ["toyrewards:count_ones"], "rounds": 3, "reward_threshold": 1.0, "kl_beta": 0.0,
            "minibatches": 1, "ppo_epochs": 1, "seed": 3}
    if algorithm == "rm":  # a preference a 16-wide model can learn in a minute: the sum, not "99"
        over["data"] = str(d / "pref-rm.jsonl")
        (d / "pref-rm.jsonl").write_text("\n".join(json.dumps({"prompt": f"{a}+{b}=", "chosen": str(a + b),
                                                               "rejected": "99"}) for a in range(5) for b in range(5)))
    get_runner(algorithm)(load_post_config(None, over), progress=False)
    rows = [json.loads(x) for x in open(over["data"]).read().splitlines()]
    if algorithm == "sft":
        (lp0, n), (lp1, _) = _pairs_logp(base, rows, "completion"), _pairs_logp(out, rows, "completion")
        nll0, nll1 = float(-lp0.sum() / n), float(-lp1.sum() / n)
        assert nll1 < 0.5 * nll0, (nll0, nll1)
    elif algorithm == "dpo":
        margin0 = _pairs_logp(base, rows, "chosen")[0] - _pairs_logp(base, rows, "rejected")[0]
        margin1 = _pairs_logp(out, rows, "chosen")[0] - _pairs_logp(out, rows, "rejected")[0]
        assert float(((margin1 - margin0) > 0).float().mean()) >= 0.75
        assert float((margin1 - margin0).mean()) > 1.0
    elif algorithm == "rm":
        from seqlab.post.data import pad_batch
        from seqlab.post.prompting import prompt_format
        from seqlab.post.reward_model import load_reward_model

        rm = load_reward_model(str(out))
        _, tok, _ = load_model(out)
        fmt = prompt_format(tok, False, "")

        def scores(key):
            ids, mask = pad_batch([fmt.pair(r["prompt"], r[key], 64) for r in rows], tok.pad_id)
            with torch.no_grad():
                return rm(ids, (ids != tok.pad_id).sum(1))

        assert float((scores("chosen") > scores("rejected")).float().mean()) >= 0.9
    else:
        before, after = _ones_per_completion(base, [r["prompt"] for r in rows]), \
            _ones_per_completion(out, [r["prompt"] for r in rows])
        assert after > before + 0.5, (before, after)


@pytest.mark.parametrize("algorithm", ["sft", "grpo"])
def test_post_dtype_bfloat16_runs_the_forward_passes_under_autocast(bases, algorithm, monkeypatch):
    """post.dtype = "bfloat16": the engine's update runs the algorithm's forward passes (GRPO's
    rollout too) under bf16 autocast (CPU autocast here; on a GPU tests/test_gpu.py); the
    default float32 does not. The weights stay float32 and the run still learns its data."""
    import seqlab.post.common as common
    from seqlab.post import get_runner

    d, runs, data = bases
    monkeypatch.syspath_prepend(str(d))
    seen = []

    def spy_on(name):
        real = getattr(common, name)

        def spy(logits, *a, **kw):
            seen.append(logits.dtype)
            return real(logits, *a, **kw)

        monkeypatch.setattr(common, name, spy)

    spy_on("token_logprobs")
    spy_on("token_logprobs_and_entropy")
    for dtype in ("float32", "bfloat16"):
        seen.clear()
        out = d / f"{algorithm}-{dtype}"
        over = {"policy": str(runs["transformer"]), "data": str(data[algorithm]), "out": str(out), "steps": 3,
                "batch_size": 8, "lr": 1e-2, "group_size": 4, "prompts_per_step": 2, "max_new_tokens": 6,
                "rewards": ["toyrewards:count_ones"], "dtype": dtype}
        result = get_runner(algorithm)(load_post_config(None, over), progress=False)
        assert result["step"] == 3 and result["loss"] == result["loss"]
        assert set(seen) == {torch.bfloat16 if dtype == "bfloat16" else torch.float32}
        after, _, _ = load_model(out)
        assert all(p.dtype == torch.float32 for p in after.parameters())


def test_a_post_training_run_hands_its_freed_memory_back_once_at_its_end(bases, monkeypatch):
    """runner.optimise calls release_freed_memory (glibc's malloc_trim) once, after the run
    saved its weights: not after every update (each update would then fault its activations'
    pages in afresh, ~30% slower on SmolLM2's SFT)."""
    import seqlab.post.runner as runner
    from seqlab.post.sft import run_sft

    d, runs, data = bases
    calls = []
    monkeypatch.setattr(runner, "release_freed_memory",
                        lambda: calls.append((d / "sft-trim" / "best.safetensors").exists()))
    over = {"policy": str(runs["transformer"]), "data": str(data["sft"]), "out": str(d / "sft-trim"), "steps": 3,
            "batch_size": 8, "lr": 1e-2}
    assert run_sft(load_post_config(None, over), progress=False)["step"] == 3
    assert calls == [True]
