"""Success rate during training (`seqlab train --eval-task`): the numbers `seqlab eval` gives
for the same checkpoint and seed, nothing added without a task, exact resume kept."""

import json
import struct

import pytest

from seqlab.cli import main


@pytest.fixture(scope="module")
def rule_data(tmp_path_factory):
    d = tmp_path_factory.mktemp("evaltask")
    assert main(["data", "make", "rule-13-22", "--out", str(d / "r.txt"), "--n", "1500"]) == 0
    return d


def train_args(d, out, *extra):
    return ["train", "--data", str(d / "r.txt"), "--out", str(out), "--model", "transformer", "--n-layer", "1",
            "--n-embd", "32", "--n-head", "4", "--eval-interval", "40", "--checkpoint-interval", "40",
            "--quiet", "--json", *extra]


def rows(run):
    lines = (run / "metrics.csv").read_text().splitlines()
    header = lines[0].split(",")
    return header, [dict(zip(header, x.split(","))) for x in lines[1:]]


def png_height(path) -> int:
    return struct.unpack(">I", path.read_bytes()[20:24])[0]  # the IHDR chunk's height


def test_in_training_success_equals_seqlab_eval_and_resume_is_exact(rule_data, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(train_args(rule_data, run, "--steps", "80", "--eval-task", "rule-13-22", "--eval-samples",
                           "150", "--seed", "5")) == 0
    header, logged = rows(run)
    assert header[-3:] == ["success_rate", "wellformed_rate", "novelty"]
    rated = [r for r in logged if r["success_rate"]]
    assert [r["step"] for r in rated] == ["40", "80"]
    capsys.readouterr()
    assert main(["eval", str(run), "--task", "rule-13-22", "--n", "150", "--seed", "5", "--checkpoint", "last",
                 "--json"]) == 0
    e = json.loads(capsys.readouterr().out)
    for key in ("success_rate", "wellformed_rate", "novelty"):
        assert float(rated[-1][key]) == pytest.approx(e[key], abs=1e-6), key
    assert png_height(run / "loss.png") > 600  # the success panel under the loss panel
    # 40 steps, then resumed to 80: the same rows (sampling for the evaluation does not
    # touch the training's random stream)
    half = tmp_path / "half"
    assert main(train_args(rule_data, half, "--steps", "40", "--eval-task", "rule-13-22", "--eval-samples", "150",
                           "--seed", "5")) == 0
    assert main(["train", "--out", str(half), "--resume", "--steps", "80", "--quiet", "--json"]) == 0
    _, resumed = rows(half)
    strip = ("tokens_per_s", "elapsed_s")
    assert [{k: v for k, v in r.items() if k not in strip} for r in resumed] == \
        [{k: v for k, v in r.items() if k not in strip} for r in logged]


def test_no_task_no_columns_and_a_bad_task_fails_first(rule_data, tmp_path, capsys):
    run = tmp_path / "plain"
    assert main(train_args(rule_data, run, "--steps", "40")) == 0
    header, _ = rows(run)
    assert "success_rate" not in header and png_height(run / "loss.png") < 600
    capsys.readouterr()
    assert main(train_args(rule_data, tmp_path / "bad", "--steps", "40", "--eval-task", "nope")) != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "nope" in err and "\n" not in err
    assert not (tmp_path / "bad").exists()
