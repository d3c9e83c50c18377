"""Data-parallel training under torchrun (gloo, 2 CPU processes spawned by the test): the
same losses as one process with the same global batch, rank 0 alone writes, and a run
resumes with a different number of processes exactly where the data order says."""

import csv
import json
import os
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from seqlab.config import run_config_from_dict
from seqlab.train import train

from conftest import seqlab_cmd

TRAIN = """
[data]
path = "{data}"
[model]
type = "transformer"
n_layer = 2
n_head = 2
n_embd = 16
dropout = 0.0
[train]
steps = {steps}
batch_size = 8
lr = 0.01
warmup_steps = 0
min_lr_ratio = 1.0
log_interval = 1
eval_interval = 4
checkpoint_interval = 4
threads = 1
"""


def launch(nproc: int, *args, env_extra=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    if nproc == 1:
        cmd = seqlab_cmd(*args)
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "seqlab", *map(str, args)]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    return p


def metrics(run, *columns):
    with open(run / "metrics.csv") as f:
        return [[r["step"]] + [r[c] for c in columns] for r in csv.DictReader(f)]


def close(a, b, rel=1e-4):
    """Rows of (step, numbers...) equal up to float rounding (the gradient sum over ranks
    adds in another order)."""
    assert len(a) == len(b)
    for ra, rb in zip(a, b):
        assert ra[0] == rb[0]
        for x, y in zip(ra[1:], rb[1:]):
            assert (x == y == "") or abs(float(x) - float(y)) <= rel * max(1.0, abs(float(y))), (ra, rb)


def test_train_two_processes_equal_one_and_resume_with_another_world_size(words_file, tmp_path):
    def config(steps):
        p = tmp_path / f"train{steps}.toml"
        p.write_text(TRAIN.format(data=words_file, steps=steps))
        return p

    one, two, mixed = tmp_path / "one", tmp_path / "two", tmp_path / "mixed"
    launch(1, "train", "--config", config(12), "--out", one, "--quiet")
    out = launch(2, "train", "--config", config(12), "--out", two, "--quiet", "--json")
    close(metrics(two, "train_loss", "val_loss"), metrics(one, "train_loss", "val_loss"))
    # rank 0 alone writes: one metrics row per step (both ranks appending would double them),
    # one JSON report on stdout
    assert [r[0] for r in metrics(two)] == [str(i) for i in range(1, 13)]
    assert len([line for line in out.stdout.splitlines() if line.startswith("{")]) == 1
    # 2 processes for 8 steps, then resumed in 1 process (and the other way round): the same
    # global batches in the same order, so the same curve as the uninterrupted run
    launch(2, "train", "--config", config(8), "--out", mixed, "--quiet")
    launch(1, "train", "--config", config(12), "--out", mixed, "--resume", "--quiet")
    close(metrics(mixed, "train_loss", "val_loss"), metrics(one, "train_loss", "val_loss"))
    a, b = load_file(str(one / "best.safetensors")), load_file(str(mixed / "best.safetensors"))
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-4
    back = tmp_path / "back"
    launch(1, "train", "--config", config(8), "--out", back, "--quiet")
    launch(2, "train", "--config", config(12), "--out", back, "--resume", "--quiet")
    close(metrics(back, "train_loss", "val_loss"), metrics(one, "train_loss", "val_loss"))


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    d = tmp_path_factory.mktemp("ddp")
    data = d / "base.txt"
    data.write_text("\n".join(f"{a}+{b}={a + b}" for a in range(10) for b in range(10)) + "\n")
    cfg = run_config_from_dict({"data": {"path": str(data)},
                                "model": {"type": "transformer", "n_layer": 1, "n_head": 2, "n_embd": 16,
                                          "block_size": 24, "dropout": 0.0},
                                "train": {"steps": 20, "batch_size": 16, "eval_interval": 20}})
    train(cfg, d / "base", progress=False)
    (d / "sft.jsonl").write_text("\n".join(json.dumps({"prompt": f"{a}+{b}=", "completion": str(a + b)})
                                           for a in range(5) for b in range(5)) + "\n")
    (d / "rl.jsonl").write_text("\n".join(json.dumps({"prompt": f"{a}+{b}=", "answer": str(a + b)})
                                          for a in range(5) for b in range(5)) + "\n")
    (d / "pref.jsonl").write_text("\n".join(json.dumps({"prompt": f"{a}+{b}=", "chosen": str(a + b),
                                                          "rejected": str(a + b + 1)})
                                              for a in range(5) for b in range(5)) + "\n")
    (d / "toyrewards.py").write_text("def count_ones(prompts, completions, **kw):\n"
                                     "    return [float(c.count('1')) for c in completions]\n")
    return d


RL = 'max_new_tokens = 6\nrewards = ["toyrewards:count_ones"]\n'
DATA = {"sft": "sft", "dpo": "pref", "rm": "pref", "grpo": "rl", "rejection": "rl", "ppo": "rl"}


@pytest.mark.parametrize("algorithm,columns,extra", [
    ("sft", ("loss", "completion_tokens", "grad_norm"), 'batch_size = 8\n'),
    ("grpo", ("loss", "reward", "reward_std", "completion_len", "entropy", "clip_high", "grad_norm"),
     'prompts_per_step = 2\ngroup_size = 4\nnum_iterations = 2\nsamples_every = 1\n' + RL),
    pytest.param("dpo", ("loss", "accuracy", "margin", "grad_norm"), 'batch_size = 8\n', marks=pytest.mark.slow),
    pytest.param("rm", ("loss", "train_accuracy", "val_accuracy", "grad_norm"), 'batch_size = 8\n',
                 marks=pytest.mark.slow),
    pytest.param("rejection", ("loss", "kept", "reward", "grad_norm"),
                 'batch_size = 8\nrounds = 2\ngroup_size = 3\nreward_threshold = 1.0\n' + RL, marks=pytest.mark.slow),
    pytest.param("ppo", ("loss", "reward", "policy_loss", "value_loss", "entropy", "grad_norm"),
                 'batch_size = 8\nminibatches = 2\nppo_epochs = 2\nkl_beta = 0.05\n' + RL, marks=pytest.mark.slow),
])
def test_post_two_processes_equal_one(base, algorithm, columns, extra):
    cfg = base / f"{algorithm}.toml"
    cfg.write_text(f'[post]\npolicy = "{base / "base"}"\ndata = "{base / DATA[algorithm]}.jsonl"\n'
                   f'steps = 6\nlr = 0.01\nthreads = 1\nlog_interval = 1\ncheckpoint_interval = 2\n{extra}')
    env = {"PYTHONPATH": f"{base}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    one, two = base / f"{algorithm}-one", base / f"{algorithm}-two"
    launch(1, "post", algorithm, "--config", cfg, "--out", one, "--quiet", env_extra=env)
    launch(2, "post", algorithm, "--config", cfg, "--out", two, "--quiet", env_extra=env)
    # rm: Adam turns a gradient component that is 0 up to rounding (the pair's shared terms
    # cancel in r_w - r_l; summed over ranks in another order) into a step of size lr
    tol = 2e-3 if algorithm == "rm" else 1e-4
    close(metrics(two, *columns), metrics(one, *columns), tol)
    a, b = load_file(str(one / "best.safetensors")), load_file(str(two / "best.safetensors"))
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < tol
    assert max(float((a[k] - load_file(str(base / "base" / "best.safetensors"))[k]).abs().max()) for k in a) > 1e-3
    if algorithm == "grpo":  # the samples of both ranks' groups, written once
        assert (two / "samples.jsonl").read_text() == (one / "samples.jsonl").read_text()
