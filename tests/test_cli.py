"""CLI contract: --help everywhere, --json shapes, one-line `error:` failures."""

import json
import shutil
import subprocess

import pytest

from conftest import seqlab_cmd

VERBS = [[], ["quickstart"], ["train"], ["sample"], ["data"], ["data", "tasks"], ["data", "make"], ["data", "check"],
         ["eval"], ["heatmap"], ["post"], ["bench"], ["recipe"], ["recipe", "arithmetic"],
         ["discover"]]


def run(*args, check=False):
    return subprocess.run(seqlab_cmd(*args), capture_output=True, text=True, check=check)


def run_here(*args):
    """The CLI's main() in this process (no interpreter start-up: ~2 s per call saved), with
    what a subprocess would see: exit code, stdout, stderr."""
    import contextlib
    import io
    import types

    from seqlab.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:  # argparse's own errors
            code = e.code
    return types.SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


@pytest.mark.parametrize("verb", VERBS, ids=lambda v: " ".join(v) or "seqlab")
def test_help(verb):
    r = run(*verb, "--help")
    assert r.returncode == 0
    assert r.stdout.startswith("usage: seqlab")
    if verb:
        assert verb[-1] in r.stdout.splitlines()[0]


def assert_one_error_line(r, *fragments):
    assert r.returncode != 0
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in r.stderr
    for f in fragments:
        assert f in lines[0], (f, lines[0])


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    data = d / "w.txt"
    from conftest import tiny_words

    data.write_text("\n".join(tiny_words()) + "\n")
    out = d / "run"
    r = run("train", "--data", data, "--out", out, "--model", "gru", "--n-embd", "16", "--steps", "40",
            "--eval-interval", "20", "--quiet", "--json")
    assert r.returncode == 0, r.stderr
    return data, out, r


def test_train_json(trained_run):
    _, out, r = trained_run
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1
    payload = json.loads(lines[0])
    assert {"step", "train_loss", "val_loss", "seconds"} <= payload.keys()
    assert payload["step"] == 40 and 0 < payload["val_loss"] < 4
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["type"] == "gru" and config["train"]["steps"] == 40


def test_sample_json_and_novelty_split(trained_run):
    _, out, _ = trained_run
    r = run("sample", out, "--n", "12", "--seed", "3", "--json")
    assert r.returncode == 0, r.stderr
    payload = json.loads(r.stdout.strip().splitlines()[-1])
    assert len(payload["samples"]) == 12 and len(payload["logprobs"]) == 12
    assert all(lp < 0 for lp in payload["logprobs"])
    cut = json.loads(run("sample", out, "--n", "3", "--max-new-tokens", "1", "--temperature", "0", "--json").stdout)
    assert payload["finished"] == [True] * 12 and cut["finished"] == [False] * 3  # budget of 1: no room for <eos>
    assert payload["in_train"] + payload["in_val"] + payload["new"] == 12
    again = json.loads(run("sample", out, "--n", "12", "--seed", "3", "--json").stdout)
    assert again["samples"] == payload["samples"]
    human = run("sample", out, "--n", "5", "--prompt", "ka", "--seed", "0")
    assert "in train ---" in human.stdout and "new ---" in human.stdout
    body = [ln for ln in human.stdout.splitlines() if not ln.startswith(("#", "---"))]
    assert len(body) == 5 and all(ln.startswith("ka") for ln in body)


def test_sample_rules_via_flags_and_toml(trained_run, tmp_path):
    _, out, _ = trained_run
    greedy = [json.loads(run("sample", out, "--n", "3", "--temperature", "0", "--seed", str(s), "--json").stdout)
              for s in (0, 1)]
    assert greedy[0]["samples"] == greedy[1]["samples"] and greedy[0]["rule"] == "greedy"
    cfg = tmp_path / "s.toml"
    cfg.write_text("[sample]\nn = 4\ntop_k = 2\nseed = 5\n")
    r = json.loads(run("sample", out, "--config", cfg, "--json").stdout)
    assert len(r["samples"]) == 4 and "top_k=2" in r["rule"]
    beam = json.loads(run("sample", out, "--n", "2", "--beam", "3", "--json").stdout)
    assert beam["rule"].startswith("beam(width=3")
    assert len(set(beam["samples"])) == 2 and beam["logprobs"][0] >= beam["logprobs"][1]  # the 2 best, in order


def test_resume_via_cli_extends_training(trained_run, tmp_path):
    data, _, _ = trained_run
    out = tmp_path / "r"
    run("train", "--data", data, "--out", out, "--model", "bigram", "--steps", "10", "--quiet", check=True)
    r = run("train", "--out", out, "--resume", "--steps", "15", "--quiet", "--json")
    assert r.returncode == 0, r.stderr
    extended = json.loads(r.stdout)
    assert extended["step"] == 15
    # a finished run resumed: nothing to do, the summary reports the logged losses
    again = run("train", "--out", out, "--resume", "--quiet")
    assert again.returncode == 0, again.stderr
    logged = float(again.stdout.split("train loss ")[1].split(",")[0])
    assert again.stdout.startswith("trained 225 parameters for 15 steps")
    assert logged == pytest.approx(extended["train_loss"], abs=1e-4)  # metrics.csv keeps 6 decimals
    assert_one_error_line(run("train", "--out", out, "--resume", "--steps", "12"), "already at step 15")
    assert_one_error_line(run("train", "--out", out, "--resume", "--steps", "20", "--lr", "0.5", "--model", "lstm"),
                          "only --steps and --device may change", "model.type ('bigram' -> 'lstm')", "train.lr")
    assert_one_error_line(run("train", "--data", data, "--out", tmp_path / "z", "--steps", "0"), "train.steps")


def test_data_tasks_and_make(tmp_path):
    tasks = json.loads(run("data", "tasks", "--json").stdout)["tasks"]
    names = [t["name"] for t in tasks]
    assert "rule-13-22" in names and "positions" in names and len(names) == 22
    types = {t["name"]: t["type"] for t in tasks}
    assert types["rule-13-22"] == "lm" and types["add"] == "seq2seq" and types["parity"] == "classify"
    assert sum(v == "lm" for v in types.values()) == 12
    out = tmp_path / "r.txt"
    r = run("data", "make", "rule-13-22", "--out", out, "--n", "50", "--seed", "1", "--json")
    assert json.loads(r.stdout)["lines"] == 50
    lines = out.read_text().splitlines()
    assert len(lines) == 50 and all(s[12] == s[21] for s in lines)


def test_errors_are_one_line(tmp_path, trained_run):
    data, out, _ = trained_run
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok\n\xff\n")
    cfg = tmp_path / "c.toml"
    cfg.write_text("[model]\nn_layers = 2\n")
    wrong = tmp_path / "w.toml"
    wrong.write_text("[train]\nsteps = 'many'\n")
    bad_sample = tmp_path / "bs.toml"
    bad_sample.write_text("[sample]\ntop_k = 'two'\n")
    damaged = tmp_path / "damaged"
    shutil.copytree(out, damaged)
    weights = damaged / "best.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # cut short, as by a full disk in an old copy
    nested = data.parent / "sub.toml"  # next to the data file; the test runs from another folder
    nested.write_text('[data]\npath = "w.txt"\n')
    a_file = tmp_path / "a-file"
    a_file.write_text("not a run\n")
    cases = [
        (("sample", damaged), ["best.safetensors", "cannot load these weights"]),
        (("train", "--data", data, "--out", a_file), ["a-file: is a file"]),
        (("data", "make", "rule-13-22", "--out", tmp_path), [f"{tmp_path}: is a folder"]),
        (("bench", "--repeats", "0"), ["--repeats must be >= 1"]),
        (("recipe", "arithmetic", "--out", tmp_path / "ar", "--pretrain-steps", "-5"), ["--pretrain-steps must be"]),
        (("train", "--config", nested, "--out", tmp_path / "n"),
         ["data file not found: w.txt", "sub.toml", f"did you mean {data}?"]),
        (("bench", "--repeats", "0", "--bogus"), ["unrecognized arguments: --bogus"]),
        (("train", "--data", empty, "--out", tmp_path / "a"), ["empty.txt", "no examples"]),
        (("train", "--data", bad, "--out", tmp_path / "b"), ["bad.txt:2", "UTF-8"]),
        (("train", "--data", tmp_path / "missing.txt", "--out", tmp_path / "c"), ["data file not found"]),
        (("train", "--data", data, "--out", tmp_path / "d", "--block-size", "3"), ["block_size=3", "--truncate"]),
        (("train", "--data", data, "--out", tmp_path / "e", "--config", cfg), ["c.toml: ", "model.n_layers"]),
        (("train", "--data", data, "--out", tmp_path / "f", "--config", wrong), ["w.toml: ", "train.steps"]),
        # the flag's value is wrong, not the file's: no file name
        (("train", "--data", data, "--out", tmp_path / "f", "--config", wrong, "--steps", "-2"),
         ["error: config key 'train.steps'"]),
        (("train", "--data", data, "--out", out), ["already holds a run", "--resume"]),
        (("train", "--out", tmp_path / "g", "--resume"), ["not a seqlab run directory"]),
        (("train", "--data", data, "--out", tmp_path / "h", "--device", "cuda"), ["CUDA is not available"]),
        (("train", "--model", "cnn", "--out", tmp_path / "i"), ["invalid choice"]),
        (("sample", out, "--prompt", "Zé"), ["not in the vocabulary", "'Z'", "'é'"]),
        (("sample", tmp_path), ["not a seqlab run directory"]),
        (("sample", out, "--top-p", "1.5"), ["top-p"]),
        (("sample", out, "--max-new-tokens", "-1"), ["sample.max_new_tokens", "--max-new-tokens"]),
        (("sample", out, "--n", "0"), ["sample.n"]),
        (("sample", out, "--config", bad_sample), ["bs.toml: ", "sample.top_k"]),
        (("data", "make", "nope", "--out", tmp_path / "x.txt"), ["unknown task 'nope'"]),
        (("frobnicate",), ["invalid choice"]),
    ]
    post_cfg = tmp_path / "post.toml"
    post_cfg.write_text(f'[post]\npolicy = "{out}"\ndata = "{data}"\nout = "{tmp_path / "p"}"\n')
    import torch

    if not torch.cuda.is_available():  # every verb that runs a model names the missing device first
        cases += [(args, ["CUDA is not available"]) for args in (
            ("post", "sft", "--config", post_cfg, "--device", "cuda"),
            ("discover", "golomb", "--n", "6", "--out", tmp_path / "dd", "--device", "cuda"),
            ("heatmap", out, "--input", "a", "--out", tmp_path / "h.png", "--device", "cuda"),
            ("quickstart", "--out", tmp_path / "q", "--device", "cuda"),
            ("recipe", "arithmetic", "--out", tmp_path / "ra", "--device", "cuda"),
            ("eval", out, "--task", "rule-13-22", "--device", "cuda:0"),
        )]
    cases.append((("sample", out, "--device", "tpu"), ["unknown device 'tpu'"]))
    for args, fragments in cases:
        assert_one_error_line(run_here(*args), *fragments)
    for left in ("p", "dd", "q", "ra", "h.png"):  # nothing was written before the error
        assert not (tmp_path / left).exists(), left
    # the real entry point, as a user's shell starts it
    assert_one_error_line(run("frobnicate"), "invalid choice")
    assert_one_error_line(run("train", "--data", bad, "--out", tmp_path / "b2"), "bad.txt:2", "UTF-8")
    for args in (("--debug", "bench", "--repeats", "0"), ("bench", "--repeats", "0", "--debug")):
        assert "Traceback" in run(*args).stderr  # --debug before or after the verb


def test_bench_json():
    r = run("bench", "--repeats", "1", "--json")
    assert r.returncode == 0, r.stderr
    p = json.loads(r.stdout)
    assert p["train_step_ms"] > 0 and p["sample_tokens_per_s"] > 0 and p["device"] == "cpu"
