"""The native (C++) decode step against the Python step it replaces."""

import copy
import shutil
from pathlib import Path

import pytest
import torch
from float32_tolerance import assert_float32_close, float32_bound, scaled_error, transformer_bound

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
    # what imported models add: Qwen3 (QK-norm, heads wider than n_embd / n_head), Qwen2
    # (q/k/v biases only, a non-default eps), GPT-2 (tanh GELU)
    {"pos": "rope", "norm": "rmsnorm", "mlp": "swiglu", "n_kv_head": 2, "qk_norm": True, "head_dim": 16},
    {"pos": "rope", "norm": "rmsnorm", "mlp": "swiglu", "n_kv_head": 2, "qkv_bias": True, "norm_eps": 1e-6},
    {"bias": True, "gelu": "tanh"},
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


bound = transformer_bound


def both_steps(m, idx, lengths, steps, seed=0, reference=None):
    """Largest logit difference between the native and the Python step on the same token
    stream, relative to the logits' scale (float rounding grows with it), and both caches.
    `reference`: run the Python step on this model instead (a copy with a bug put in)."""
    reference = m if reference is None else reference
    g = torch.Generator().manual_seed(seed)
    with torch.inference_mode():
        _, fast = m.prefill(idx, lengths, total_len=idx.size(1) + steps)
        _, slow = reference.prefill(idx, lengths, total_len=idx.size(1) + steps)
        assert fast.native is not None
        slow.native = None
        errs = []
        for _ in range(steps):
            tok = torch.randint(0, V, (idx.size(0),), generator=g)
            a, _ = m.step(tok, fast)
            b, _ = reference.step(tok, slow)
            errs.append(scaled_error(a, b))
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
    assert err <= bound(m)
    p = fast.pos
    for layer in range(2):  # the cache holds the same keys and values (RoPE applied to keys)
        # layer L's keys went through L whole layers and its own qkv projection
        for got, want in ((fast.k[layer], slow.k[layer]), (fast.v[layer], slow.v[layer])):
            err = scaled_error(got[:, :, :p], want[:, :, :p])
            assert err <= bound(m, layer) + float32_bound(m.cfg.n_embd), (layer, err)


def _swap_heads(m):
    """Query heads 0 and H-1 trade places: they read other key/value heads under GQA and
    write to each other's columns of the output projection (a head-indexing bug)."""
    a = m.blocks[0].attn
    D, H = a.head_dim, a.n_head
    w = a.qkv.weight.data
    first, last = w[:D].clone(), w[(H - 1) * D:H * D].clone()
    w[:D], w[(H - 1) * D:H * D] = last, first


def _rope_wrong_theta(m):
    """RoPE angles for base 100,000 instead of the model's 10,000 (as if an imported model's
    rope_theta were dropped). A uniform shift of positions would be no bug: RoPE is relative."""
    from seqlab.models.layers import rope_tables

    m.rope_cos, m.rope_sin = rope_tables(m.blocks[0].attn.head_dim, m.max_len, 100000.0)


def _no_attention_scale(m):
    """Scores without the 1/sqrt(D): the same as queries sqrt(D) times larger."""
    for block in m.blocks:
        a = block.attn
        a.qkv.weight.data[:a.n_head * a.head_dim] *= a.head_dim ** 0.5


def _no_qk_norm(m):
    """QK-norm skipped (as if a Qwen3 model's q_norm/k_norm were dropped)."""
    for block in m.blocks:
        block.attn.q_norm = block.attn.k_norm = None


def _k_norm_for_q(m):
    """The key heads' QK-norm weights used for the queries too."""
    for block in m.blocks:
        block.attn.q_norm.weight.data.copy_(block.attn.k_norm.weight.data)


ROPE = {"pos": "rope", "n_kv_head": 2}
QWEN3 = {"pos": "rope", "norm": "rmsnorm", "mlp": "swiglu", "n_kv_head": 2, "qk_norm": True, "head_dim": 32}


@pytest.mark.parametrize("bug,extra", [(_swap_heads, ROPE), (_rope_wrong_theta, ROPE), (_no_attention_scale, ROPE),
                                       (_no_qk_norm, QWEN3), (_k_norm_for_q, QWEN3)],
                         ids=["swap_heads", "rope_theta", "no_scale", "no_qk_norm", "k_norm_for_q"])
def test_the_float32_bound_still_catches_real_bugs(bug, extra):
    """The bound the tests above use is loose enough for any CPU's rounding and tight
    enough for a bug: the Python step of a copy with each bug put in, against the correct
    native step, is far outside it."""
    m = make(extra, 64)
    broken = copy.deepcopy(m)
    bug(broken)
    idx = torch.randint(3, V, (5, 6), generator=torch.Generator().manual_seed(1))
    err, _, _ = both_steps(m, idx, torch.full((5,), 6), steps=12, reference=broken)
    assert err > 20 * bound(m), err
    ok, _, _ = both_steps(m, idx, torch.full((5,), 6), steps=12)
    assert ok <= bound(m)


def test_native_step_matches_the_full_forward():
    m = make({"pos": "rope", "n_kv_head": 2})
    seq = torch.randint(3, V, (3, 14), generator=torch.Generator().manual_seed(2))
    full, _ = m(seq)
    with torch.inference_mode():
        logits, cache = m.prefill(seq[:, :4], torch.full((3,), 4), total_len=14)
        assert cache.native is not None
        for t in range(4, 14):
            logits, cache = m.step(seq[:, t], cache)
            assert_float32_close(logits, full[:, t], reduction=m.cfg.n_embd * 4, depth=6 * 2 + 1)


@pytest.mark.parametrize("n_embd", [32, 64])
def test_peaked_attention_matches(n_embd):
    """Large weights: attention scores spread over tens of units, so the softmax's exp runs
    over a wide range (and underflows to 0 for far keys) on the native path."""
    m = make({"n_kv_head": 2}, n_embd, noise=1.5)
    idx = torch.randint(3, V, (4, 5), generator=torch.Generator().manual_seed(6))
    lengths = torch.tensor([5, 1, 3, 5])
    err, fast, _ = both_steps(m, idx.masked_fill(torch.arange(5) >= lengths[:, None], 0), lengths, steps=15)
    # Scores spread over tens of units: a score's rounding is relative to the scores' scale
    # S, and the softmax passes it on to the output multiplied by S (d p_i / d s_j ~ p_i), so
    # the bound grows by S. A wrong mask, scale or exp gives errors of order 1.
    with torch.inference_mode():
        a = m.blocks[0].attn
        h = m.blocks[0].norm1(m.wte.weight)  # every token's first-layer query and key
        q, k, _ = a.qkv(h).split([a.n_head * a.head_dim, a.n_kv_head * a.head_dim, a.n_kv_head * a.head_dim], -1)
        q = q.view(V, a.n_head, -1)
        k = k.view(V, a.n_kv_head, -1).repeat_interleave(a.n_head // a.n_kv_head, dim=1)
        S = torch.einsum("ihd,jhd->hij", q, k).abs().max().item() * a.head_dim ** -0.5
    assert S > 5  # the case this test is about
    assert err <= S * bound(m)


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
    assert err <= bound(m)


def test_generate_gives_the_same_samples_with_and_without_the_native_step(monkeypatch):
    m = make({"mlp": "swiglu", "norm": "rmsnorm"})
    prompts = [[1], [1, 4, 5], [1, 6]] * 3
    rule = DecodeRule(temperature=0.8, top_k=6)

    def run():
        return generate(m, prompts, 20, rule, eos_id=2, generator=torch.Generator().manual_seed(4))

    fast = run()
    monkeypatch.setattr(native, "pack", lambda model, rows=None: None)
    slow = run()
    assert torch.equal(fast.tokens, slow.tokens) and torch.equal(fast.lengths, slow.lengths)
    # log-probs: the logits' rounding (relative to their scale) plus the log-softmax's
    for got, want in ((fast.model_logprobs, slow.model_logprobs), (fast.sampling_logprobs, slow.sampling_logprobs)):
        assert scaled_error(got, want) <= bound(m) + float32_bound(V)


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
        m.blocks[1].attn.qkv = torch.nn.Sequential(m.blocks[1].attn.qkv)  # a wrapper it cannot compute
        with torch.inference_mode():
            assert m.prefill(idx, lengths)[1].native is None
    assert m.prefill(idx, lengths)[1].native is None  # gradients on: the Python step keeps autograd
    monkeypatch.setenv("SEQLAB_NATIVE", "0")
    assert native.load() is None


@pytest.mark.parametrize("extra", [{}, {"pos": "rope", "norm": "rmsnorm", "mlp": "swiglu", "n_kv_head": 2}])
def test_native_step_computes_lora_adapters(extra, monkeypatch):
    """A peft LoRA model (adapters on every linear layer, B away from 0) takes the native
    step, which matches the Python step through the peft layers; a native step that left
    the adapters out (the bug this guards) is far outside the bound."""
    peft = pytest.importorskip("peft")
    m = make(extra)
    targets = ["qkv", "proj", "gate_up" if extra else "fc"]
    peft.get_peft_model(m, peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False))
    m.eval()
    idx = torch.randint(3, V, (5, 6), generator=torch.Generator().manual_seed(1))
    lengths = torch.tensor([6, 2, 6, 1, 4])
    idx = idx.masked_fill(torch.arange(6) >= lengths[:, None], 0)
    with torch.inference_mode():
        assert m.prefill(idx, lengths)[1].native is not None
    err, _, _ = both_steps(m, idx, lengths, steps=12)
    assert err <= bound(m)
    plain = native._plain_linear
    monkeypatch.setattr(native, "_plain_linear", lambda mod: (plain(mod)[0], None))
    err, _, _ = both_steps(m, idx, lengths, steps=12)
    assert err > 20 * bound(m), err


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
    assert scaled_error(out.model_logprobs[0], ref) <= bound(m) + float32_bound(V)


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
    # one log-softmax: a max, a sum of 37 exps and a log
    assert_float32_close(model_lp, logits.log_softmax(-1).gather(1, tok), reduction=37, depth=2)
    assert_float32_close(sample_lp, slp.gather(1, tok), reduction=37, depth=2)
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


@pytest.mark.parametrize("ragged,temperature,eos_id,window", [(False, 1.0, -1, 0), (True, 0.7, 2, 0),
                                                               (True, 1.0, "frequent", 0), (True, 1.0, "frequent", 6)])
def test_native_loop_equals_the_step_by_step_loop(monkeypatch, two_threads, ragged, temperature, eos_id, window):
    """generate's one-call loop against the same native step and draw called per token:
    the same tokens, including the early stop once every row has drawn eos ("frequent": the
    model's most frequent token, so rows end early, leave the loop's batch (their slots
    taken by live rows, caches, key masks and offsets moved with them), and the loop ends
    well before the budget), with a ring cache too (window 6). With 2 threads the loop runs
    two blocks of rows, each stopping on its own."""
    m = make({"pos": "rope", "n_kv_head": 2, **({"attention_window": window} if window else {})})
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
    for got, want in ((fast.model_logprobs, slow.model_logprobs), (fast.sampling_logprobs, slow.sampling_logprobs)):
        assert scaled_error(got, want) <= bound(m) + float32_bound(V)
    if frequent:  # every row ended (with the window, one row of this draw ends only at the budget)
        assert bool(fast.finished.all()) and (fast.tokens.size(1) < 28 or window)
        assert int(fast.lengths.min()) < 10  # rows left the batch early


def test_the_first_build_notice_does_not_split_an_open_progress_bar(capsys, tmp_path):
    """The 'compiling' line goes through tqdm.write: on its own line, with training's bar
    redrawn below it, not appended to the bar's half-written line."""
    from seqlab.engine import Progress

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


def test_the_native_build_is_keyed_by_the_cpu_features():
    """A -march=native library found in a shared extensions folder must have been built for
    this CPU's instruction set: two feature sets, two build names (and so two libraries)."""
    from torch.utils import cpp_extension

    zen = "avx avx2 fma sse4_2"
    sapphire = "avx avx2 avx512f amx_tile fma sse4_2"
    assert native.build_name(zen) != native.build_name(sapphire)
    assert native.build_name(zen) == native.build_name(" ".join(zen.split()))
    features = native.cpu_features()
    assert features and features == " ".join(sorted(set(features.split())))
    assert native.load() is not None
    name = native.build_name(features)
    assert (Path(cpp_extension._get_build_directory(name, False)) / f"{name}.so").exists()


def packed_ops():
    ops = native.load()
    if ops is None or ops.packed_width() == 0:
        pytest.skip("this build has no packed kernel (AVX-512 or AVX2 only)")
    return ops


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("n,k", [(37, 5), (48, 64), (200, 33)])
def test_packed_products_equal_the_product_for_every_row_count(threads, n, k):
    """decode.cpp's packed kernel: 1-16 rows (one or two row chunks of 8), output counts
    that are and are not multiples of its 16-column blocks, with and without bias, against
    a float64 product; each element within float32 rounding of its own terms."""
    ops = packed_ops()
    g = torch.Generator().manual_seed(n + k)
    w, b = torch.randn(n, k, generator=g), torch.randn(n, generator=g)
    packed = native.packed_weight(w)
    assert packed.shape == (-(-n // 16), k, 16)
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for rows in range(1, native.PACKED_MAX_ROWS + 1):
            x = torch.randn(rows, k, generator=g)
            exact = x.double() @ w.double().T
            terms = x.double().abs() @ w.double().abs().T  # the scale of each element's sum
            for bias in (None, b):
                got = ops.packed_mm(x, packed, n, bias).double()
                want = exact + (0 if bias is None else b.double())
                assert got.shape == (rows, n)
                assert bool(((got - want).abs() <= 4 * k * EPS * (terms + want.abs())).all()), (rows, bias is None)
    finally:
        torch.set_num_threads(saved)


EPS = torch.finfo(torch.float32).eps


def test_packed_copies_follow_in_place_weight_updates(monkeypatch):
    """The packed copy is made once per version of a weight: after an optimizer-like
    in-place update the next generation uses the new values, as the Python step does."""
    packed_ops()
    m = make({"pos": "rope", "n_kv_head": 2})
    w = m.blocks[0].mlp.fc.weight
    first = native.packed_weight(w)
    assert native.packed_weight(w) is first  # made once
    prompts = [[1, 4, 5], [1, 7]] * 2

    def run():
        return generate(m, prompts, 12, DecodeRule(temperature=1.0), generator=torch.Generator().manual_seed(5))

    run()
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(-1.5)
    assert native.packed_weight(w) is not first
    fast = run()
    monkeypatch.setattr(native, "pack", lambda model, rows=None: None)
    slow = run()
    assert torch.equal(fast.tokens, slow.tokens)
    assert scaled_error(fast.model_logprobs, slow.model_logprobs) <= bound(m) + float32_bound(V)


def test_a_model_beyond_the_caches_samples_the_same_tokens_in_one_loop(monkeypatch, two_threads):
    """decode_loop's other branch: a model whose weights exceed kSharedWeightBytes (16 MB)
    runs as one block of rows with both threads splitting each packed product (a block per
    thread would stream all the weights once per block): the same tokens as the
    step-by-step loop."""
    packed_ops()
    m = make({"pos": "rope", "n_kv_head": 2}, n_embd=448, noise=0.02)
    weight_bytes = sum(p.numel() * 4 for n, p in m.named_parameters() if n.endswith("weight") and p.dim() == 2)
    assert weight_bytes > 16 << 20
    prompts = [[1, 4, 5], [1, 7], [1, 8, 9], [1]] * 2

    def run():
        return generate(m, prompts, 8, DecodeRule(temperature=1.0), generator=torch.Generator().manual_seed(2))

    fast = run()
    monkeypatch.setattr(native, "loop", reference_loop)
    slow = run()
    assert torch.equal(fast.tokens, slow.tokens)
    assert scaled_error(fast.model_logprobs, slow.model_logprobs) <= bound(m) + float32_bound(V)


def test_no_packed_copy_for_weights_beyond_a_quarter_of_memory(monkeypatch):
    """A model whose weights would not leave room for their copy samples from the weights
    themselves: pack() hands decode.cpp no packed copies, and the step gives the same tokens."""
    packed_ops()
    m = make({"pos": "rope", "n_kv_head": 2})
    nw = native.pack(m, rows=4)
    assert nw.layers[22].dim() == 3  # the qkv weight's packed copy (decode_step's w[22])
    monkeypatch.setattr(native.os, "sysconf", lambda name: 1 if name == "SC_PAGE_SIZE" else 1000)
    nw = native.pack(m, rows=4)
    assert nw.layers[22].numel() == 0
    prompts = [[1, 4, 5], [1, 7]]

    def run():
        return generate(m, prompts, 10, DecodeRule(temperature=1.0), generator=torch.Generator().manual_seed(1))

    unpacked = run()
    monkeypatch.undo()
    assert torch.equal(run().tokens, unpacked.tokens)


def test_packed_copies_follow_a_fused_optimizer_step_and_frozen_ones_stay(monkeypatch):
    """torch's fused AdamW (seqlab's optimizer) updates weights without moving their version
    counters: a weight that trains is packed again after any optimizer step, so sampling
    after an update uses the updated weights; a frozen weight (a LoRA base) keeps its copy."""
    packed_ops()
    m = make({"pos": "rope", "n_kv_head": 2})
    frozen = m.blocks[1].mlp.fc.weight
    frozen.requires_grad_(False)
    trained = m.blocks[0].mlp.fc.weight
    first_trained, first_frozen = native.packed_weight(trained), native.packed_weight(frozen)
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=0.5, fused=True)
    version = trained._version
    m.train()
    m(torch.randint(0, V, (2, 6)))[0].square().mean().backward()
    opt.step()
    m.eval()
    assert trained._version == version  # the counter did not move: the case this is about
    assert native.packed_weight(trained) is not first_trained
    assert native.packed_weight(frozen) is first_frozen
    prompts = [[1, 4, 5], [1, 7]] * 2

    def run():
        return generate(m, prompts, 12, DecodeRule(temperature=1.0), generator=torch.Generator().manual_seed(5))

    fast = run()
    monkeypatch.setattr(native, "pack", lambda model, rows=None: None)
    slow = run()
    assert torch.equal(fast.tokens, slow.tokens)
    assert scaled_error(fast.model_logprobs, slow.model_logprobs) <= bound(m) + float32_bound(V)


AVX2_CHECK = r"""
import sys, torch
from torch.utils import cpp_extension
src = sys.argv[1]
cpp_extension.load(name="seqlab_avx2_check", sources=[src + "/decode.cpp", src + "/attention.cpp"],
                   extra_cflags=["-O3", "-march=haswell", "-fopenmp"], build_directory=sys.argv[2],
                   is_python_module=False, verbose=False)
from seqlab.models.native import packed_weight
ops = torch.ops.seqlab
assert ops.packed_width() == 16
g = torch.Generator().manual_seed(0)
worst = 0.0
for n, k in ((37, 5), (200, 33), (48, 64)):
    w, b = torch.randn(n, k, generator=g), torch.randn(n, generator=g)
    for rows in range(1, 17):
        x = torch.randn(rows, k, generator=g)
        want = x.double() @ w.double().T + b.double()
        scale = x.double().abs() @ w.double().abs().T + want.abs()
        got = ops.packed_mm(x, packed_weight(w), n, b).double()
        worst = max(worst, ((got - want).abs() / scale).max().item())
print(worst)
"""


@pytest.mark.slow
def test_the_avx2_packed_kernel_on_a_machine_without_avx512(tmp_path):
    """The packed kernel's AVX2 build (laptops without AVX-512: 8-float vectors, 4-row
    chunks), compiled here with -march=haswell in its own process: every row count 1-16
    within float32 rounding of a float64 product."""
    import subprocess
    import sys

    flags = native.cpu_features().split()
    if "avx2" not in flags or "fma" not in flags:
        pytest.skip("this CPU cannot run an AVX2 build")
    src = Path(native.__file__).with_name("native")
    r = subprocess.run([sys.executable, "-c", AVX2_CHECK, str(src), str(tmp_path)], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert float(r.stdout.split()[-1]) <= 4 * 64 * EPS
