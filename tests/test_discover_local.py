"""The `local` searcher, the batch improver and the `discover` verb (via command.add_parser)."""

import argparse
import csv
import json
import textwrap
import time

import numpy as np
import pytest

from seqlab.discover.command import add_parser
from seqlab.discover.local import Elite, decode_many, improve_many, pool_stats, run_local
from seqlab.discover.problems import get_problem
from seqlab.errors import SeqlabError


def test_pool_stats_numbers():
    s = pool_stats([1.0, 2.0, 3.0, 4.0, 10.0])
    assert s == {"size": 5, "mean": 4.0, "median": 3.0, "top20": 10.0, "max": 10.0}
    assert pool_stats([])["max"] is None


def test_elite_keeps_distinct_valid_best():
    p = get_problem("golomb", 4)
    e = Elite(p, keep=2)
    assert e.add([np.array([0, 1, 4, 6]), np.array([0, 1, 4, 6]), np.array([0, 1, 2, 3]), np.array([0, 2, 7, 8]),
                  np.array([0, 1, 5, 7])]) == 3
    assert [s for s, _ in e.ranked()] == [-6.0, -7.0]
    assert e.best_score() == -6.0


def test_decode_many_counts_unusable():
    p = get_problem("no-three-in-line", 5)
    cs, bad = decode_many(p, ["0011", "!!", "", "4"])
    assert bad == 2 and len(cs) == 2 and cs[0].tolist() == [0, 6] and cs[1].size == 0  # "4": half a point


def test_improve_many_from_strings():
    p = get_problem("isosceles-free", 6)
    strings = ["000102030405", "0011223344", "zz", "5544"]  # a full row, a diagonal, junk, two points
    out = improve_many(p, strings, seed=3, moves_per_start=2000, workers=1)
    assert len(out) == 3 and all(p.is_valid(c) for c in out)
    assert all(p.score(c) >= 7 for c in out)  # repaired, completed, annealed
    again = improve_many(p, strings, seed=3, moves_per_start=2000, workers=1)
    assert all(np.array_equal(a, b) for a, b in zip(out, again))


def test_run_local_moves_budget_is_deterministic(tmp_path):
    p = get_problem("golomb", 7)
    a = run_local(p, seed=5, workers=1, moves=20_000, rounds=3, jobs_per_round=2, pool_out=tmp_path / "pool.txt")
    b = run_local(p, seed=5, workers=1, moves=20_000, rounds=3, jobs_per_round=2)
    assert [p.key(c) for c in a.best] == [p.key(c) for c in b.best]
    assert a.scores == b.scores and a.moves == b.moves > 0
    assert len(a.log) == 3 and [r["round"] for r in a.log] == [0, 1, 2]
    assert a.scores == sorted(a.scores, reverse=True) and len({p.key(c) for c in a.best}) == len(a.best)
    assert all(p.is_valid(c) for c in a.best)
    assert a.log[-1]["best"] == a.best_score >= -30  # 25 is optimal; greedy starts are ~ 40
    lines = (tmp_path / "pool.txt").read_text().splitlines()
    assert len(lines) == len(a.best) and p.score(p.decode(lines[0])) == a.best_score


def test_run_local_stops_at_time_budget_and_target():
    p = get_problem("no-three-in-line", 10)
    run_local(p, seed=0, workers=1, moves=1000, rounds=2, jobs_per_round=2)  # numba compiles outside the timing
    t = time.perf_counter()
    r = run_local(p, seconds=1.5, seed=0, workers=1, round_seconds=0.5)
    assert time.perf_counter() - t < 1.5 + 1.0  # one chunk of moves past the deadline at most
    assert r.log and r.best_score is not None and all(p.is_valid(c) for c in r.best)
    r = run_local(p, seconds=60, seed=0, workers=1, target=14)
    assert r.best_score >= 14 and r.seconds < 60


def test_improve_many_workers_do_not_change_results():
    """Spawned workers give the same results as one process (each start has its own seed)."""
    p = get_problem("c4-free", 12)
    rng = np.random.default_rng(0)
    starts = [np.sort(rng.choice([u * 12 + v for u in range(12) for v in range(u + 1, 12)], 30, replace=False))
              for _ in range(6)]
    one = improve_many(p, starts, seed=1, moves_per_start=3000, workers=1)
    two = improve_many(p, starts, seed=1, moves_per_start=3000, workers=2)
    assert len(one) == 6 and all(np.array_equal(a, b) for a, b in zip(one, two))


# ------------------------------------------------------------------ the verb
def discover(*argv):
    parser = argparse.ArgumentParser(prog="seqlab")
    sub = parser.add_subparsers(dest="verb")
    add_parser(sub)
    args = parser.parse_args(["discover", *map(str, argv)])
    return args.func(args)


def test_discover_list_json(capsys):
    discover("--list", "--json")
    out = capsys.readouterr().out.strip().splitlines()
    data = json.loads(out[-1])
    names = [r["name"] for r in data["problems"]]
    assert names == ["isosceles-free", "no-three-in-line", "distance-4-5", "c4-free", "golomb"]
    assert data["problems"][3]["best_known"]["33"] == 96
    discover("--list")
    assert "golomb" in capsys.readouterr().out


def test_discover_local_run_files(tmp_path, capsys):
    out = tmp_path / "run"
    discover("golomb", "--n", 6, "--out", out, "--searcher", "local", "--minutes", 0.5, "--workers", 1,
             "--target", "best-known", "--json", "--quiet")
    cap = capsys.readouterr()
    res = json.loads(cap.out.strip().splitlines()[-1])
    assert len(cap.out.strip().splitlines()) == 1  # nothing else on stdout
    assert res["best_score"] == -17 and res["best_known"] == -17 and res["generations"]
    assert "reaches the best known -17" in cap.err
    best = json.loads((out / "best.json").read_text())
    p = get_problem("golomb", 6)
    assert best["best_score"] == -17 and p.score(p.decode(best["constructions"][0]["encoded"])) == -17
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert len(rows) == len(res["generations"]) and float(rows[-1]["max"]) == -17
    assert (out / "best.png").stat().st_size > 1000
    with pytest.raises(SeqlabError, match="already holds a run"):
        discover("golomb", "--n", 6, "--out", out, "--minutes", 0.01, "--workers", 1)
    discover("golomb", "--n", 6, "--out", out, "--searcher", "local", "--minutes", 0.05, "--workers", 1, "--resume",
             "--json", "--quiet")
    res2 = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res2["best_score"] == -17 and res2["generations"][0]["round"] == len(rows)


def test_an_interrupted_run_resumes_from_its_last_round(tmp_path, capsys, monkeypatch):
    """best.json is written after every round, so a run killed in round 2 resumes from round 1's pool."""
    import seqlab.discover.local as local

    p = get_problem("golomb", 5)
    ruler = np.array([0, 1, 4, 9, 11])
    real = local.run_local

    def killed_in_round_two(problem, seconds, pool_out=None, progress=None, **kw):
        pool_out.write_text(p.encode(ruler) + "\n")
        progress({"round": 0, "seconds": 2.5, "moves": 7, "new": 1, "distinct": 1, "pool_size": 1, "mean": -11.0,
                  "median": -11.0, "top20": -11.0, "max": -11.0, "best": -11.0})
        raise KeyboardInterrupt

    monkeypatch.setattr(local, "run_local", killed_in_round_two)
    out = tmp_path / "k"
    out.mkdir()
    (out / "metrics.csv").write_text("round,seconds\n0,1.0\n")  # a run that failed before writing best.json
    with pytest.raises(KeyboardInterrupt):
        discover("golomb", "--n", 5, "--out", out, "--searcher", "local", "--minutes", 1, "--workers", 1, "--quiet")
    best = json.loads((out / "best.json").read_text())
    assert best["rounds"] == 1 and best["seconds"] == 2.5 and best["moves"] == 7 and best["best_score"] == -11
    assert [c["encoded"] for c in best["constructions"]] == [p.encode(ruler)]
    assert [r["seconds"] for r in csv.DictReader((out / "metrics.csv").open())] == ["2.5"]  # leftovers replaced
    monkeypatch.setattr(local, "run_local", real)
    discover("golomb", "--n", 5, "--out", out, "--searcher", "local", "--minutes", 0.05, "--workers", 1,
             "--resume", "--json", "--quiet")
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["generations"][0]["round"] == 1 and res["generations"][0]["seconds"] > 2.5
    assert res["generations"][0]["moves"] > 7 and res["moves"] == res["generations"][-1]["moves"]  # counts go on
    assert res["best_score"] >= -11  # it started from the saved ruler


def test_a_resumed_patternboost_run_numbers_its_rounds_on(tmp_path, capsys, monkeypatch):
    """metrics.csv and best.json count PatternBoost's generations once: 0, 1, 2, then 3, 4 after
    a resume (the searcher numbers them on itself; the command must not add the old count again)."""
    import seqlab.discover.patternboost as pb
    from seqlab.discover.local import LocalResult

    p = get_problem("golomb", 5)
    ruler = np.array([0, 1, 4, 9, 11])

    def fake(problem, out, seconds, seed=0, workers=None, init=None, progress=None, pool_out=None, **kw):
        start = 3 if init else 0  # as the real one: a resumed run goes on after its newest model
        for g in range(start, start + (2 if init else 3)):
            pool_out.write_text(p.encode(ruler) + "\n")
            progress({"generation": g, "seconds": 1.0 + g, "pool_size": 1, "mean": -11.0, "median": -11.0,
                      "top20": -11.0, "max": -11.0, "best": -11.0, "moves": 10, "scores": [-11.0]})
        return LocalResult(best=[ruler], scores=[-11.0], log=[{}] * (2 if init else 3), moves=10, seconds=5.0)

    monkeypatch.setattr(pb, "run_patternboost", fake)
    out = tmp_path / "pb"
    for extra in ([], ["--resume"]):
        discover("golomb", "--n", 5, "--out", out, "--searcher", "patternboost", "--minutes", 0.01, "--quiet",
                 *extra)
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [int(r["round"]) for r in rows] == [0, 1, 2, 3, 4]
    assert json.loads((out / "best.json").read_text())["rounds"] == 5


def test_discover_writes_a_record_when_beating_best_known(tmp_path, capsys, monkeypatch):
    """A user problem whose table is too pessimistic: the run must save the 'record'."""
    (tmp_path / "weak_golomb.py").write_text(textwrap.dedent('''
        from seqlab.discover.problems.golomb import Golomb

        class WeakGolomb(Golomb):
            name = "weak-golomb"
            best_known_table = {5: -12.0}   # the truth is 11
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "rec"
    discover("weak_golomb:WeakGolomb", "--n", 5, "--out", out, "--minutes", 0.05, "--workers", 1, "--json",
             "--quiet")
    cap = capsys.readouterr()
    assert "NEW RECORD" in cap.err and "beats the best known -12" in cap.err
    rec = json.loads((out / "record--11.json").read_text())
    p = get_problem("golomb", 5)
    assert rec["score"] == -11 and p.is_valid(np.array(rec["construction"]))
    assert p.score(p.decode(rec["encoded"])) == -11


@pytest.mark.parametrize("argv,fragment", [
    (["golomb", "--n", 5, "--out", "X", "--minutes", 0], "--minutes must be a positive number"),
    (["golomb", "--n", 5, "--out", "X", "--minutes", "nan"], "--minutes must be a positive number, got nan"),
    (["golomb", "--n", 5, "--out", "X", "--keep", 0], "--keep must be >= 1"),
    (["golomb", "--n", 5, "--out", "X", "--workers", 0], "--workers must be >= 1"),
    (["golomb", "--n", 5, "--out", "X", "--round-seconds", 0], "--round-seconds must be positive"),
    (["golomb", "--out", "X"], "--n is required"),
    (["golomb", "--n", 5], "--out is required"),
    (["nope", "--n", 5, "--out", "X"], "unknown problem 'nope'"),
    (["golomb", "--n", 5, "--out", "X", "--target", "high"], "--target must be a number"),
    (["golomb", "--n", 5, "--out", "Y", "--resume"], "nothing to resume"),
])
def test_discover_errors(argv, fragment, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SeqlabError, match=fragment.replace("(", r"\(")):
        discover(*argv)
