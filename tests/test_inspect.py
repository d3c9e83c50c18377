"""eval / data check / heatmap verbs, on a tiny model and on model-free input."""

import json
import math
import subprocess

import pytest

from conftest import seqlab_cmd
from test_cli import assert_one_error_line


def run(*args, cwd=None):
    return subprocess.run(seqlab_cmd(*args), capture_output=True, text=True, cwd=cwd)


@pytest.fixture(scope="module")
def rule_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("rule")
    data = d / "r.txt"
    assert run("data", "make", "rule-13-22", "--out", data, "--n", "200").returncode == 0
    out = d / "run"
    r = run("train", "--data", data, "--out", out, "--n-layer", "2", "--n-head", "2", "--n-embd", "16",
            "--steps", "30", "--quiet")
    assert r.returncode == 0, r.stderr
    gru = d / "gru"
    assert run("train", "--data", data, "--out", gru, "--model", "gru", "--steps", "5", "--quiet").returncode == 0
    return data, out, gru


def test_eval_on_the_training_file_is_perfect_and_not_novel(rule_run):
    data, out, _ = rule_run
    r = run("eval", out, "--task", "rule-13-22", "--samples", data, "--json")
    assert r.returncode == 0, r.stderr
    p = json.loads(r.stdout)
    assert p["success_rate"] == 1.0 and p["wellformed_rate"] == 1.0
    assert p["novelty"] == 0.0 and p["distinct"] == 1.0
    assert p["entropy_floor"] == pytest.approx(0.72124720588, abs=1e-9)
    assert 0.5 < p["val_loss"] < math.log(5)  # better than uniform over <pad> <bos> <eos> 0 1


def test_eval_sampling_json_keys(rule_run):
    _, out, _ = rule_run
    p = json.loads(run("eval", out, "--task", "rule-13-22", "--n", "50", "--json").stdout)
    for key in ("success_rate", "wellformed_rate", "novelty", "distinct", "val_loss", "entropy_floor"):
        assert key in p
    assert 0 <= p["success_rate"] <= p["wellformed_rate"] <= 1
    assert (out / "loss_vs_floor.png").read_bytes()[:4] == b"\x89PNG" and p["plot"].endswith("loss_vs_floor.png")


def test_user_verifier_module_function(rule_run, tmp_path):
    data, out, _ = rule_run
    (tmp_path / "myrules.py").write_text(
        "def starts_with_zero(s):\n"
        "    if set(s) - {'0', '1'}:\n        return None\n"
        "    return s[0] == '0'\n")
    r = run("data", "check", "myrules:starts_with_zero", data, "--json", cwd=tmp_path)
    p = json.loads(r.stdout)
    lines = data.read_text().split()
    assert p["success_rate"] == pytest.approx(sum(s[0] == "0" for s in lines) / len(lines))
    assert p["wellformed_rate"] == 1.0
    r = run("eval", out, "--task", "myrules:starts_with_zero", "--samples", data, "--json", cwd=tmp_path)
    assert json.loads(r.stdout)["entropy_floor"] is None
    assert_one_error_line(run("data", "check", "myrules:nope", data, cwd=tmp_path), "no attribute 'nope'")
    assert_one_error_line(run("data", "check", "nomodule:f", data, cwd=tmp_path), "cannot import nomodule")


def test_data_check_lists_failures(tmp_path):
    f = tmp_path / "x.txt"
    f.write_text("0120\n0101010101\n0101201010\n")
    p = json.loads(run("data", "check", "unique-2", f, "--json").stdout)
    assert p["lines"] == 3 and p["wellformed_rate"] == pytest.approx(2 / 3)
    assert p["success_rate"] == pytest.approx(1 / 3)
    assert [x["line"] for x in p["failures"]] == [1, 2]


def test_heatmap_png_per_layer_and_head(rule_run, tmp_path):
    _, out, gru = rule_run
    png = tmp_path / "h.png"
    r = run("heatmap", out, "--input", "0" * 30, "--out", png, "--avg-samples", "20", "--json")
    assert r.returncode == 0, r.stderr
    p = json.loads(r.stdout)
    assert (p["layers"], p["heads"], p["tokens"]) == (2, 2, 31)
    for path in (png, tmp_path / "h-avg.png"):
        assert path.read_bytes()[:4] == b"\x89PNG"
    assert_one_error_line(run("heatmap", gru, "--input", "01", "--out", tmp_path / "g.png"), "need a transformer")
    assert_one_error_line(run("heatmap", out, "--input", "0a", "--out", tmp_path / "g.png"), "'a'")


def test_verbs_take_a_toml_table(rule_run, tmp_path):
    _, out, _ = rule_run
    cfg = tmp_path / "e.toml"
    cfg.write_text('[eval]\nn = 7\ntask = "rule-13-22"\n[heatmap]\navg_samples = 0\n')
    p = json.loads(run("eval", out, "--config", cfg, "--json").stdout)
    assert p["lines"] == 7
    p = json.loads(run("eval", out, "--config", cfg, "--n", "3", "--json").stdout)
    assert p["lines"] == 3  # the flag wins over the file
    r = run("heatmap", out, "--config", cfg, "--input", "01", "--out", tmp_path / "h.png", "--json")
    assert "avg_out" not in json.loads(r.stdout)
    bad = tmp_path / "b.toml"
    bad.write_text("[eval]\nn = 'seven'\n")
    assert_one_error_line(run("eval", out, "--config", bad, "--task", "rule-13-22"), "eval.n")
    bad.write_text("[eval]\nsamplez = 1\n")
    assert_one_error_line(run("eval", out, "--config", bad), "unknown config key 'eval.samplez'")
    assert_one_error_line(run("eval", out), "--task is required")
