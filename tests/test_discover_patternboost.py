"""The PatternBoost loop: the model's decoded samples really reach the local search
(the PatternBoost code once silently rejected every sample after a tokenizer change,
so its loop degraded to local search alone), and a user problem runs a generation."""

import numpy as np
import pytest

import seqlab.discover.patternboost as pb
from seqlab.discover.patternboost import PatternBoostConfig, run_patternboost
from seqlab.discover.problems import get_problem

@pytest.fixture(scope="module", autouse=True)
def native_kernels_built():
    """Build (or load) the native kernels and compile golomb's numba search before any timed
    run: a first build takes 15-30 s, which would otherwise eat the budgets of the runs below."""
    from seqlab.models import native

    native.load()
    pb.improve_many(get_problem("golomb", 6), [None], seed=0, moves_per_start=100)


TINY = PatternBoostConfig(first_steps=30, steps=10, samples=48, moves_per_start=200, n_layer=1, n_embd=32,
                          grpo_steps=2, grpo_group=4, init_fraction=0.2)


def test_model_samples_reach_the_local_search(tmp_path, monkeypatch):
    problem = get_problem("golomb", 6)
    seen = []
    real = pb.improve_many

    def spy(problem_, starts, **kw):
        if any(s is not None for s in starts):  # generation 0 starts from scratch (None)
            seen.append(list(starts))
        return real(problem_, starts, **kw)

    monkeypatch.setattr(pb, "improve_many", spy)
    log = []
    run_patternboost(problem, tmp_path / "run", seconds=12, seed=0, workers=1, cfg=TINY, progress=log.append)
    gens = [e for e in log if e["generation"] >= 1]
    assert gens and len(seen) == len(gens)
    for starts, entry in zip(seen, gens):
        # every decodable sample goes to the local search, as a construction of the problem
        assert len(starts) == round(entry["decodable"] * TINY.samples) > 0
        assert all(isinstance(c, np.ndarray) and len(c) > 0 for c in starts)
    assert gens[-1]["decodable"] > 0.5  # a trained model writes mostly well-formed strings
    assert (tmp_path / "run" / "gen-001" / "train.txt").read_text().count("\n") >= 1


@pytest.mark.parametrize("use_grpo", [False, True])
def test_user_problem_runs_a_generation(tmp_path, monkeypatch, use_grpo):
    (tmp_path / "myproblem.py").write_text(
        "import numpy as np\n"
        "from seqlab.discover.problem import Problem, as_rng\n"
        "class Sidon(Problem):\n"
        "    '''subsets of 0..n-1 with distinct pairwise sums (a Sidon set); maximise the size'''\n"
        "    name = 'sidon'\n"
        "    def __init__(self, n):\n"
        "        self.n = n\n"
        "    def vocabulary(self):\n"
        "        return 'abcdefghijklmnopqrstuvwxyz'[: self.n]\n"
        "    def encode(self, c):\n"
        "        return ''.join(self.vocabulary()[i] for i in c)\n"
        "    def decode(self, s):\n"
        "        v = self.vocabulary()\n"
        "        c = sorted({v.index(ch) for ch in s if ch in v})\n"
        "        return np.array(c, dtype=np.int64) if c else None\n"
        "    def is_valid(self, c):\n"
        "        sums = [a + b for i, a in enumerate(c) for b in c[i:]]\n"
        "        return len(sums) == len(set(sums))\n"
        "    def score(self, c):\n"
        "        return float(len(c))\n"
        "    def random_construction(self, rng=None):\n"
        "        rng = as_rng(rng)\n"
        "        c = []\n"
        "        for x in rng.permutation(self.n):\n"
        "            if self.is_valid(sorted(c + [int(x)])):\n"
        "                c = sorted(c + [int(x)])\n"
        "        return np.array(c, dtype=np.int64)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    problem = get_problem("myproblem:Sidon", 12)
    log = []
    result = run_patternboost(problem, tmp_path / "run", seconds=8, seed=1, workers=1, cfg=TINY,
                              progress=log.append, use_grpo=use_grpo)
    assert [e["generation"] for e in log][:2] == [0, 1]
    assert all(problem.is_valid(c) for c in result.best)
    assert result.best_score == max(problem.score(c) for c in result.best) >= 4


def test_generation_zero_pool_is_diverse(tmp_path):
    # many short searches from random starts, as in the paper: a pool of many distinct
    # good constructions for the model to learn from, not a handful of long anneals
    problem = get_problem("golomb", 8)
    log = []
    run_patternboost(problem, tmp_path / "run", seconds=3, seed=0, workers=1, cfg=TINY, progress=log.append)
    g0 = log[0]
    assert g0["generation"] == 0 and g0["new"] >= TINY.samples
    assert g0["pool_size"] >= TINY.samples // 2
    assert g0["max"] >= problem.best_known(8) - 15  # score = minus the length; optimal length 34


def test_resume_continues_with_the_pool_and_the_model(tmp_path, monkeypatch):
    problem = get_problem("golomb", 6)
    first = []
    result = run_patternboost(problem, tmp_path / "run", seconds=10, seed=0, workers=1, cfg=TINY,
                              progress=first.append)
    last_gen = first[-1]["generation"]
    assert last_gen >= 1
    # (a generation cut off by the budget after training has saved its model too)
    newest = max(int(d.name[4:]) for d in (tmp_path / "run").glob("gen-*") if (d / "model").is_dir())
    assert newest in (last_gen, last_gen + 1)
    models_at_fit = []
    real_fit = pb.ModelSide.fit

    def spy(self, lines, generation, **kw):
        models_at_fit.append((generation, self.model is not None))
        return real_fit(self, lines, generation, **kw)

    monkeypatch.setattr(pb.ModelSide, "fit", spy)
    second = []
    run_patternboost(problem, tmp_path / "run", seconds=6, seed=0, workers=1, cfg=TINY, init=result.best,
                     progress=second.append, last_logged=last_gen)
    # no new generation 0; the first resumed generation trains the last logged generation's model
    # further (a model trained after it, in a generation cut off by the budget, is trained again)
    assert second and second[0]["generation"] == last_gen + 1
    assert models_at_fit[0] == (last_gen + 1, True)
    assert second[0]["max"] >= result.best_score


def test_local_search_budget_follows_the_measured_speed():
    speed = pb._Throughput(workers=2)
    assert speed.moves_for(0.5) == 500_000  # nothing measured yet: 1e6 moves/s assumed
    speed.add(moves=4_000_000, seconds=1.0)  # 2 workers for 1 s: 2e6 moves per worker-second
    assert speed.moves_for(0.25) == 500_000
    assert speed.moves_for(1e-9) == 1000  # never fewer than 1000 moves per start
