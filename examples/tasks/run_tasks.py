"""Every built-in task beyond next-token prediction (issue 20), each model family and a simple
baseline, measured on held-out examples; rows appended to OUT/results.jsonl (a finished row is
skipped, so the script can be stopped and started again).

    python examples/tasks/run_tasks.py OUT [--only TASK ...] [--family TEXT ...] [--minutes 8] [--threads 1]
        [--train-flags "--group-by-length --dropout 0"]

Each seqlab run trains through `seqlab.train.train` with a wall-clock budget (--minutes, so
each stays within the issue's 10 minutes on a 2-core CPU) and is scored with `seqlab eval RUN
--data test.jsonl` on 1,000 examples from another seed. Baselines (scikit-learn, numpy):
classification: logistic regression on character 1-3-gram counts; regression: least squares
(on digit counts for digit-sum; an AR(p) model on the series for sine-forecast, p chosen on
the training data); seq2seq: none.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

# per task type: (family name, train flags); the model is otherwise seqlab's default
FAMILIES = {
    "classify": [
        ("transformer (causal, last token)", ["--n-layer", "2", "--n-embd", "64"]),
        ("transformer (bidirectional, mean)", ["--n-layer", "2", "--n-embd", "64", "--bidirectional"]),
        ("gru", ["--model", "gru", "--n-layer", "1", "--n-embd", "64"]),
        ("gru (bidirectional)", ["--model", "gru", "--n-layer", "1", "--n-embd", "64", "--bidirectional"]),
        ("lstm (bidirectional)", ["--model", "lstm", "--n-layer", "1", "--n-embd", "64", "--bidirectional"]),
        ("rnn (bidirectional)", ["--model", "rnn", "--n-layer", "1", "--n-embd", "64", "--bidirectional"]),
    ],
    "regress": [
        ("transformer (causal, last token)", ["--n-layer", "2", "--n-embd", "64"]),
        ("transformer (bidirectional, mean)", ["--n-layer", "2", "--n-embd", "64", "--bidirectional"]),
        ("gru", ["--model", "gru", "--n-layer", "1", "--n-embd", "64"]),
        ("gru (bidirectional)", ["--model", "gru", "--n-layer", "1", "--n-embd", "64", "--bidirectional"]),
    ],
    "seq2seq": [
        ("transformer encoder-decoder", ["--n-layer", "3", "--n-embd", "128", "--dropout", "0"]),
        ("gru + additive attention", ["--model", "gru", "--n-layer", "1", "--n-embd", "128",
                                      "--seq2seq-attention", "additive", "--dropout", "0"]),
    ],
}
MLM_FAMILY = "mlm-pretrained encoder (bidirectional, mean)"
NEWLINE = "\u23ce"  # a newline inside an input, for the line-based masked-LM data
TRAIN_N = {"add": 100_000, "date-format": 50_000, "python-compiles": 50_000}


def seqlab(*args) -> dict:
    r = subprocess.run([sys.executable, "-m", "seqlab", *map(str, args)], capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"seqlab {' '.join(map(str, args))}: {r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def train_run(data: Path, out: Path, flags: list[str], minutes: float, threads: int) -> dict:
    """seqlab train with a wall-clock budget (--minutes) and a long schedule (--steps 10^6:
    the learning rate stays near its peak within the budget)."""
    return seqlab("train", "--data", data, "--out", out, "--steps", 1_000_000, "--minutes", minutes,
                  "--threads", threads, "--quiet", "--json", *flags)


def baseline(task: str, kind: str, train_rows: list[dict], test_rows: list[dict]) -> dict | None:
    import numpy as np

    if kind == "classify":
        from sklearn.feature_extraction.text import CountVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.metrics import accuracy_score, f1_score

        vec = CountVectorizer(analyzer="char", ngram_range=(1, 3), lowercase=False)
        x = vec.fit_transform([r["input"] for r in train_rows])
        clf = LogisticRegression(max_iter=2000).fit(x, [r["label"] for r in train_rows])
        pred = clf.predict(vec.transform([r["input"] for r in test_rows]))
        truth = [r["label"] for r in test_rows]
        return {"model": "logistic regression, char 1-3-grams", "accuracy": accuracy_score(truth, pred),
                "macro_f1": f1_score(truth, pred, average="macro")}
    if task == "digit-sum":
        def counts(s):
            return [s.count(d) for d in "0123456789"] + [1.0]

        a = np.array([counts(r["input"]) for r in train_rows])
        w, *_ = np.linalg.lstsq(a, np.array([r["target"] for r in train_rows]), rcond=None)
        pred = np.array([counts(r["input"]) for r in test_rows]) @ w
        y = np.array([r["target"] for r in test_rows])
        name = "least squares on digit counts"
    elif task == "sine-forecast":
        x_train = np.array([r["input"] for r in train_rows])
        best = None
        for p in (2, 4, 8, 12, 16, 24):  # AR(p): next = w . last p values + b, fit on every window
            rows, ys = [], []
            for s in x_train[:2000]:
                for t in range(p, len(s)):
                    rows.append(np.append(s[t - p:t], 1.0))
                    ys.append(s[t])
            w, res, *_ = np.linalg.lstsq(np.array(rows), np.array(ys), rcond=None)
            mse = float(np.mean((np.array(rows) @ w - np.array(ys)) ** 2))
            if best is None or mse < best[0]:
                best = (mse, p, w)
        _, p, w = best
        preds = []
        for r in test_rows:  # roll the AR model forward over the horizon, feeding predictions back
            hist = list(r["input"])
            out = []
            for _ in range(len(r["target"])):
                nxt = float(np.append(hist[-p:], 1.0) @ w)
                out.append(nxt)
                hist.append(nxt)
            preds.append(out)
        pred, y = np.array(preds), np.array([r["target"] for r in test_rows])
        name = f"least-squares AR({p}), rolled over the horizon"
    else:
        return None
    err = pred - y
    sst = float(((y - y.mean(0)) ** 2).sum())
    return {"model": name, "mse": float((err ** 2).mean()), "mae": float(np.abs(err).mean()),
            "r2": 1 - float((err ** 2).sum()) / sst}


def main():
    from seqlab.data.example_tasks import TASKS

    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--family", nargs="*", help="only the model families whose names contain one of these")
    ap.add_argument("--minutes", type=float, default=8.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--train-flags", default="", help="more `seqlab train` flags for every labelled run "
                                                      "(recorded in its row's flags)")
    args = ap.parse_args()
    extra = shlex.split(args.train_flags)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.jsonl"
    done = {(r["task"], r["model"]) for r in map(json.loads, results.read_text().splitlines())} \
        if results.exists() else set()
    for name in args.only or list(TASKS):  # --only: in the order given
        task = TASKS[name]
        train_file, test_file = out / f"{name}.jsonl", out / f"{name}-test.jsonl"
        if not test_file.exists():
            seqlab("data", "make", name, "--out", train_file, "--n", TRAIN_N.get(name, task.default_n), "--seed", 0,
                   "--json")
            seqlab("data", "make", name, "--out", test_file, "--n", 1000, "--seed", 1, "--json")
        rows = []
        base_name = None
        if task.type != "seq2seq":
            train_rows = [json.loads(line) for line in train_file.read_text().splitlines()]
            test_rows = [json.loads(line) for line in test_file.read_text().splitlines()]
            b = baseline(name, task.type, train_rows, test_rows)
            base_name = b and b["model"]
            if b and (name, base_name) not in done:
                rows.append({"task": name, "type": task.type, "baseline": True, **b})
        families = list(FAMILIES[task.type])
        if task.type == "classify":  # BERT next to GPT: a masked-LM encoder, then its classifier
            families.append((MLM_FAMILY, ["--init-from"]))
        for family, flags in families:
            if (name, family) in done or (args.family and not any(f in family for f in args.family)):
                continue
            run = out / "runs" / (name + "-" + re.sub(r"[^a-z0-9]+", "-", family.lower()).strip("-"))
            if run.exists():
                import shutil

                shutil.rmtree(run)
            t0 = time.time()
            if family == MLM_FAMILY:  # half the budget on unlabelled inputs, half on the labels
                # masked-LM data is lines: a newline inside an input (python-compiles' programs)
                # becomes NEWLINE in the lines and, for this family, in the labelled files too
                # (the same information: the classifier reads what the encoder was trained on)
                def one_line(f: Path) -> Path:
                    dst = f.with_name(f.stem + "-one-line.jsonl")
                    dst.write_text("".join(json.dumps({**r, "input": r["input"].replace("\n", NEWLINE)}) + "\n"
                                           for r in map(json.loads, f.read_text().splitlines())))
                    return dst

                lines = out / f"{name}-inputs.txt"
                lines.write_text("".join(json.loads(r)["input"].replace("\n", NEWLINE) + "\n"
                                         for r in train_file.read_text().splitlines()))
                pre = run.with_name(run.name + "-mlm")
                if pre.exists():
                    import shutil

                    shutil.rmtree(pre)
                train_run(lines, pre, ["--task", "mlm", "--n-layer", "2", "--n-embd", "64"], args.minutes / 2,
                          args.threads)
                flags = ["--init-from", str(pre), *extra]
                res = train_run(one_line(train_file), run, flags, args.minutes / 2, args.threads)
                scored = one_line(test_file)
            else:
                flags = [*flags, *extra]
                res = train_run(train_file, run, flags, args.minutes, args.threads)
                scored = test_file
            wall = time.time() - t0
            ev = seqlab("eval", run, "--data", scored, "--json")
            ev.pop("confusion", None)
            rows.append({"task": name, "type": task.type, "model": family, "flags": flags, "steps": res["step"],
                         "params": res["params"], "train_wall_s": round(wall, 1), "threads": args.threads, **ev})
            with open(results, "a") as f:  # one row at a time: a stop loses at most the run in flight
                for r in rows:
                    f.write(json.dumps(r) + "\n")
                    print(json.dumps(r), flush=True)
            rows = []
        if rows:
            with open(results, "a") as f:
                for r in rows:
                    f.write(json.dumps(r) + "\n")
                    print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
