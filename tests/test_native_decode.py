"""The native (C++) decode step against the Python step it replaces."""

import shutil

import pytest
import torch

from seqlab.config import ModelConfig
from seqlab.models import build_model, native
from seqlab.sampling import DecodeRule, generate

V = 11
VARIANTS = [
    {},
    {"bias": True},
    {"pos": "rope", "n_kv_head": 2},
    {"pos": "rope", "n_kv_head": 1, "mlp": "swiglu"},
    {"mlp": "swiglu", "norm": "rmsnorm", "bias": True},
    {"pos": "rope", "norm": "rmsnorm", "mlp": "swiglu", "n_kv_head": 2, "tie_weights": True},
]

pytestmark = pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                                reason="no C++ compiler: seqlab runs the Python step")


def make(extra, n_embd=32, noise=0.3):
    torch.manual_seed(0)
    m = build_model(ModelConfig(type="transformer", block_size=32, n_embd=n_embd, n_head=4, n_layer=2,
                                dropout=0.0, **extra), V).eval()
    with torch.no_grad():  # away from init, so every weight and bias matters
        for p in m.parameters():
            p.add_(torch.randn_like(p) * noise)
    return m


def both_steps(m, idx, lengths, steps, seed=0):
    """Largest logit difference between the native and the Python step on the same token
    stream, relative to the logits' scale (float rounding grows with it), and both caches."""
    g = torch.Generator().manual_seed(seed)
    with torch.inference_mode():
        _, fast = m.prefill(idx, lengths, total_len=idx.size(1) + steps)
        _, slow = m.prefill(idx, lengths, total_len=idx.size(1) + steps)
        assert fast.native is not None
        slow.native = None
        errs = []
        for _ in range(steps):
            tok = torch.randint(0, V, (idx.size(0),), generator=g)
            a, _ = m.step(tok, fast)
            b, _ = m.step(tok, slow)
            errs.append(((a - b).abs().max() / b.abs().max().clamp(min=1)).item())
    return max(errs), fast, slow


# head size 8 and 16: the vectorised attention loops at two vector widths; 12 and 9: batched
# matmuls (36 also leaves a remainder in the norm loops)
HEADS = [({"pos": "rope", "n_kv_head": 2}, 48), ({"n_kv_head": 2}, 64), ({"bias": True}, 64), ({}, 36)]


CASES = [(v, 32) for v in VARIANTS] + HEADS


@pytest.mark.parametrize("extra,n_embd", CASES, ids=[f"{i}-d{n // 4}" for i, (_, n) in enumerate(CASES)])
@pytest.mark.parametrize("ragged", [False, True])
def test_native_step_matches_the_python_step(extra, n_embd, ragged):
    m = make(extra, n_embd)
    B, T = 5, 6
    idx = torch.randint(3, V, (B, T), generator=torch.Generator().manual_seed(1))
    lengths = torch.tensor([6, 2, 6, 1, 4]) if ragged else torch.full((B,), T)
    idx = idx.masked_fill(torch.arange(T) >= lengths[:, None], 0)
    err, fast, slow = both_steps(m, idx, lengths, steps=12)
    assert err < 1e-5
    p = fast.pos
    for layer in range(2):  # the cache holds the same keys and values (RoPE applied to keys)
        assert torch.allclose(fast.k[layer][:, :, :p], slow.k[layer][:, :, :p], atol=1e-5)
        assert torch.allclose(fast.v[layer][:, :, :p], slow.v[layer][:, :, :p], atol=1e-5)


def test_native_step_matches_the_full_forward():
    m = make({"pos": "rope", "n_kv_head": 2})
    seq = torch.randint(3, V, (3, 14), generator=torch.Generator().manual_seed(2))
    full, _ = m(seq)
    with torch.inference_mode():
        logits, cache = m.prefill(seq[:, :4], torch.full((3,), 4), total_len=14)
        assert cache.native is not None
        for t in range(4, 14):
            logits, cache = m.step(seq[:, t], cache)
            assert torch.allclose(logits, full[:, t], atol=1e-5)


@pytest.mark.parametrize("n_embd", [32, 64])
def test_peaked_attention_matches(n_embd):
    """Large weights: attention scores spread over tens of units, so the softmax's exp runs
    over a wide range (and underflows to 0 for far keys) on the native path."""
    m = make({"n_kv_head": 2}, n_embd, noise=1.5)
    idx = torch.randint(3, V, (4, 5), generator=torch.Generator().manual_seed(6))
    lengths = torch.tensor([5, 1, 3, 5])
    err, fast, _ = both_steps(m, idx.masked_fill(torch.arange(5) >= lengths[:, None], 0), lengths, steps=15)
    # float32 rounding through 15 steps of peaked softmaxes: 9e-6 at this seed, median 1e-5 and
    # worst 2.8e-4 over 100 seeds (and it depends on the CPU's vector width); a wrong mask, scale
    # or exp gives errors of order 1
    assert err < 5e-4


def test_two_threads_split_the_attention_and_agree_with_one():
    m = make({}, n_embd=64)
    B, T = 64, 3  # 64 rows x 4 heads: enough work for the attention loop to use both threads
    idx = torch.randint(3, V, (B, T), generator=torch.Generator().manual_seed(3))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        err, _, _ = both_steps(m, idx, torch.full((B,), T), steps=20)
    finally:
        torch.set_num_threads(threads)
    assert err < 1e-5


def test_generate_gives_the_same_samples_with_and_without_the_native_step(monkeypatch):
    m = make({"mlp": "swiglu", "norm": "rmsnorm"})
    prompts = [[1], [1, 4, 5], [1, 6]] * 3
    rule = DecodeRule(temperature=0.8, top_k=6)

    def run():
        return generate(m, prompts, 20, rule, eos_id=2, generator=torch.Generator().manual_seed(4))

    fast = run()
    monkeypatch.setattr(native, "pack", lambda model: None)
    slow = run()
    assert torch.equal(fast.tokens, slow.tokens) and torch.equal(fast.lengths, slow.lengths)
    assert torch.allclose(fast.model_logprobs, slow.model_logprobs, atol=1e-5)
    assert torch.allclose(fast.sampling_logprobs, slow.sampling_logprobs, atol=1e-5)


def test_python_step_runs_where_the_native_one_does_not_apply(monkeypatch):
    m = make({})
    idx, lengths = torch.full((2, 3), 4), torch.full((2,), 3)
    with torch.inference_mode():
        assert m.prefill(idx, lengths)[1].native is not None
        m.train()  # dropout would be skipped
        assert m.prefill(idx, lengths)[1].native is None
        m.eval()
    m64 = make({}).double()
    with torch.inference_mode():
        assert m64.prefill(idx, lengths)[1].native is None  # float32 only
    with torch.no_grad():
        m.blocks[1].attn.qkv = torch.nn.Sequential(m.blocks[1].attn.qkv)  # e.g. a LoRA wrapper
        with torch.inference_mode():
            assert m.prefill(idx, lengths)[1].native is None
    assert m.prefill(idx, lengths)[1].native is None  # gradients on: the Python step keeps autograd
    monkeypatch.setenv("SEQLAB_NATIVE", "0")
    assert native.load() is None


def test_lora_adapters_are_not_bypassed_while_sampling():
    peft = pytest.importorskip("peft")
    m = make({})
    lora = peft.get_peft_model(m, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["qkv", "proj", "fc"],
                                                  init_lora_weights=False))
    base = lora.base_model.model
    prompts = [[1, 5, 6]] * 2
    out = generate(base, prompts, 6, DecodeRule(), eos_id=-1, generator=torch.Generator().manual_seed(5))
    seq = torch.tensor([prompts[0] + out.tokens[0].tolist()])
    with torch.no_grad():
        logits, _ = base(seq[:, :-1])
    ref = logits[0, 2:].log_softmax(-1).gather(1, seq[0, 3:, None]).squeeze(1)
    assert torch.allclose(out.model_logprobs[0], ref, atol=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_native_draw_matches_the_python_draw_and_its_logprobs(temperature):
    from seqlab.sampling import _draw

    g = torch.Generator().manual_seed(7)
    logits = torch.randn(500, 37, generator=g) * 3
    logits[:, 5] = float("-inf")  # a token the model excludes
    u = 1.0 - torch.rand(500, 1, generator=g)
    tok, model_lp, sample_lp = native.sampler(logits)(logits, u, temperature)
    slp = (logits / temperature).log_softmax(-1)
    assert torch.equal(tok, _draw(slp, u))
    assert torch.allclose(model_lp, logits.log_softmax(-1).gather(1, tok), atol=1e-5)
    assert torch.allclose(sample_lp, slp.gather(1, tok), atol=1e-5)
    assert not bool((tok == 5).any())


def test_native_draw_at_the_ends_of_the_unit_interval_and_its_frequencies():
    logits = torch.tensor([[float("-inf"), 0.0, float("-inf"), 1.0, float("-inf")]])
    draw = native.sampler(logits)
    ends = torch.tensor([[1e-30], [1.0]])
    tok, _, _ = draw(logits.expand(2, 5), ends, 1.0)
    assert tok.view(-1).tolist() == [1, 3]  # the first and the last token with mass, never a -inf one
    p = torch.tensor([0.1, 0.2, 0.3, 0.4])
    n = 40000
    u = 1.0 - torch.rand(n, 1, generator=torch.Generator().manual_seed(8))
    tok, _, _ = draw(p.log().expand(n, 4), u, 1.0)
    freq = torch.bincount(tok.view(-1), minlength=4).float() / n
    assert torch.allclose(freq, p, atol=0.01)  # 4 standard errors at most ~0.0098



@pytest.fixture
def two_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


def reference_loop(nw, logits, uniforms, temperature, eos_id, eos_check, cache):
    """decode_loop's contract written out with the per-token ops it replaces."""
    draw = native.sampler(logits)
    cols = []
    for t in range(uniforms.size(0)):
        cols.append(draw(logits, uniforms[t], temperature))
        if t + 1 == uniforms.size(0):
            break
        if eos_id >= 0 and (t + 1) % eos_check == 0:
            seen = torch.cat([c[0] for c in cols], 1) == eos_id
            if bool(seen.any(1).all()):
                break
        logits = native.step(nw, cols[-1][0].view(-1), cache)
        cache.pos += 1
    return tuple(torch.cat([c[i] for c in cols], 1) for i in range(3))


@pytest.mark.parametrize("ragged,temperature,eos_id", [(False, 1.0, -1), (True, 0.7, 2), (True, 1.0, "frequent")])
def test_native_loop_equals_the_step_by_step_loop(monkeypatch, two_threads, ragged, temperature, eos_id):
    """generate's one-call loop against the same native step and draw called per token:
    the same tokens, including the early stop once every row has drawn eos ("frequent": the
    model's most frequent token, so the loop ends well before the budget). With 2 threads
    the loop runs two blocks of rows, each stopping on its own."""
    m = make({"pos": "rope", "n_kv_head": 2})
    prompts = [[1, 4, 5, 6], [1, 7], [1, 8, 9]] * 4 if ragged else [[1, 4, 5]] * 6

    def run(eos):
        return generate(m, prompts, 28, DecodeRule(temperature=temperature), eos_id=eos,
                        generator=torch.Generator().manual_seed(9))

    frequent = eos_id == "frequent"
    if frequent:
        eos_id = int(run(-1).tokens.flatten().bincount().argmax())
    calls = []
    real = native.loop
    monkeypatch.setattr(native, "loop", lambda *a: calls.append(1) or real(*a))
    fast = run(eos_id)
    assert calls == [1]
    monkeypatch.setattr(native, "loop", reference_loop)
    slow = run(eos_id)
    for a, b in zip((fast.tokens, fast.lengths, fast.finished), (slow.tokens, slow.lengths, slow.finished)):
        assert torch.equal(a, b)
    # the blocks' single-threaded matmuls may round differently from the whole batch's
    assert torch.allclose(fast.model_logprobs, slow.model_logprobs, atol=1e-5, rtol=0)
    assert torch.allclose(fast.sampling_logprobs, slow.sampling_logprobs, atol=1e-5, rtol=0)
    if frequent:
        assert bool(fast.finished.all()) and fast.tokens.size(1) < 28


def test_the_first_build_notice_does_not_split_an_open_progress_bar(capsys, tmp_path):
    """The 'compiling' line goes through tqdm.write: on its own line, with training's bar
    redrawn below it, not appended to the bar's half-written line."""
    from seqlab.train import Progress

    class NoBuildYet:  # a build directory with no library in it: the first build
        @staticmethod
        def _get_build_directory(name, verbose):
            return str(tmp_path)

    bar = Progress(10, 0, enabled=True)
    bar.update(1, loss=1.0)
    native._say_if_first_build(NoBuildYet, "seqlab_native")
    bar.bar.close()
    lines = [seg.strip() for seg in capsys.readouterr().err.replace("\r", "\n").split("\n")]
    assert "seqlab: compiling the native kernels (once per machine, ~30 s)" in lines
