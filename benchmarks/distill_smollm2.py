"""Distilling the GRPO-trained SmolLM2 into a 6-layer student: on-policy vs off-policy vs SFT.

    python benchmarks/distill_smollm2.py --teacher runs/smol-s0/grpo [--teacher-bits 32|8|4] [--minutes 8]
        [--work /tmp/seqlab-distill] [--out benchmarks/raw/distill-smollm2.json]

Teacher: a run of `seqlab recipe arithmetic --base smollm2` after GRPO (float32, merged
LoRA), used as it is (the default) or quantized with `seqlab quantize --bits 8|4` for speed;
both distillation modes sample or score with it. A merged GRPO update is smaller than a 4-bit
step, so the int4 teacher loses what GRPO taught (measured: see docs/results.md): the first
run of this script used it and is kept as `--teacher-bits 4`.
Student: 6 of the teacher's 30 blocks (every fifth, from the first; DistilBERT's way of
initialising a student from its teacher) with its embeddings, final norm and tokenizer:
49M parameters, full fine-tuning. The same 512 training word problems for all three
methods, through the chat template with the workshop's system prompt, and the same
wall-clock budget:
  sft        `post sft` on the problems' worked solutions in the reasoning template
  offpolicy  `post distill mode=offpolicy`: one teacher sample per prompt, then SFT on them
  onpolicy   `post distill mode=onpolicy divergence=forward`: the student samples, and
             learns the teacher's next-token distributions on its own tokens
Reported: the pretrained recipe's held-out test accuracy (300 problems, greedy, 64 tokens)
and the KL from the teacher to each student on the teacher's greedy replies to 24 test
questions (teacher-forced, reply tokens only).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def make_student(teacher: Path, out: Path, keep: list[int]) -> None:
    from seqlab import atomic
    from seqlab.checkpoint import load_model, save_best
    from seqlab.models import build_model

    model, tok, cfg = load_model(teacher)
    cfg.model.n_layer = len(keep)
    student = build_model(cfg.model, model.wte.weight.size(0))
    state = {}
    for k, v in model.state_dict().items():
        if k.startswith("blocks."):
            i = int(k.split(".")[1])
            if i in keep:
                state[k.replace(f"blocks.{i}.", f"blocks.{keep.index(i)}.", 1)] = v
        else:
            state[k] = v
    student.load_state_dict(state)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "tokenizer.json"):
        shutil.copyfile(teacher / name, out / name)
    d = json.loads((out / "config.json").read_text())
    d["model"]["n_layer"] = len(keep)
    atomic.write_json(out / "config.json", d)
    save_best(out, student, {"student_of": str(teacher), "blocks": keep})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--teacher-bits", type=int, choices=(32, 8, 4), default=32)
    ap.add_argument("--work", default="/tmp/seqlab-distill-f32")
    ap.add_argument("--minutes", type=float, default=8.0)
    ap.add_argument("--prompts", type=int, default=512)
    ap.add_argument("--out", default=str(HERE / "raw" / "distill-smollm2.json"))
    a = ap.parse_args()
    torch.set_num_threads(2)
    sys.path.insert(0, str(HERE))
    from bench_core import machine_info
    from bench_quantize import heldout

    from seqlab.interop.quantize import agreement, log_probs, quantize_run
    from seqlab.post import get_runner
    from seqlab.post.config import PostConfig
    from seqlab.post.template import ReasoningTemplate
    from seqlab.recipes.pretrained import PretrainedRecipeConfig, evaluate
    from seqlab.recipes.word_problems import SYSTEM, rl_row, sft_row, split

    teacher = Path(a.teacher)
    WORK = Path(a.work)
    WORK.mkdir(parents=True, exist_ok=True)
    tq = teacher
    if a.teacher_bits != 32:
        tq = WORK / f"teacher-int{a.teacher_bits}"
        if not (tq / "best.safetensors").exists():
            quantize_run(teacher, tq, a.teacher_bits)
    student0 = WORK / "student-init"
    if not (student0 / "best.safetensors").exists():
        make_student(teacher, student0, [0, 5, 10, 15, 20, 25])
    rcfg = PretrainedRecipeConfig()
    template = ReasoningTemplate()
    test, _, train = split(rcfg.seed, rcfg.n_test, rcfg.n_dev, rcfg.n_sft + rcfg.n_rl)
    problems = train[rcfg.n_sft: rcfg.n_sft + a.prompts]  # the recipe's RL problems: never its test or dev
    (WORK / "rl.jsonl").write_text("".join(json.dumps(rl_row(p)) + "\n" for p in problems))
    (WORK / "sft.jsonl").write_text("".join(json.dumps(sft_row(p, template)) + "\n" for p in problems))
    common = dict(policy=str(student0), system=SYSTEM, chat_template=True, steps=100000,
                  max_seconds=a.minutes * 60, batch_size=8, lr=5e-5, max_new_tokens=64, threads=2, seed=0,
                  samples_every=10, checkpoint_interval=100000)
    runs = {
        "sft": ("sft", dict(data=str(WORK / "sft.jsonl"))),
        "offpolicy": ("distill", dict(data=str(WORK / "rl.jsonl"), teacher=str(tq), mode="offpolicy",
                                      group_size=1, temperature=1.0)),
        "onpolicy": ("distill", dict(data=str(WORK / "rl.jsonl"), teacher=str(tq), mode="onpolicy",
                                     divergence="forward", temperature=1.0)),
    }
    res = {"machine": machine_info(), "teacher": str(teacher), "teacher_bits": a.teacher_bits,
           "minutes": a.minutes, "prompts": a.prompts,
           "student_blocks": [0, 5, 10, 15, 20, 25], "runs": {}}
    ids, mask, _ = heldout("smollm2", str(teacher))
    from seqlab.checkpoint import load_model

    ref = log_probs(load_model(teacher)[0], ids)
    for name, (algorithm, kw) in runs.items():
        out = WORK / name
        if not (out / "best.safetensors").exists():
            shutil.rmtree(out, ignore_errors=True)
            t = time.perf_counter()
            r = get_runner(algorithm)(PostConfig(out=str(out), **common, **kw), progress=False)
            log(f"{name}: {r.get('step')} updates in {time.perf_counter() - t:.0f} s")
    teachers = [("teacher (float32)", teacher)]
    if tq != teacher:
        teachers.append((f"teacher (int{a.teacher_bits})", tq))
    for name, run in teachers + [("student before", student0)] + [(n, WORK / n) for n in runs]:
        acc = evaluate(Path(run), test, template, rcfg)
        q = agreement(ref, log_probs(load_model(run)[0], ids), mask)
        steps = None
        if (Path(run) / "best.json").exists():
            steps = json.loads((Path(run) / "best.json").read_text()).get("step")
        res["runs"][name] = {"accuracy": acc["accuracy"], "format_rate": acc["format_rate"],
                             "per_kind": acc["per_kind"], "kl_to_teacher": q["kl"],
                             "top1_agreement": q["top1_agreement"], "updates": steps}
        log(f"{name}: test accuracy {acc['accuracy']:.1%} (format {acc['format_rate']:.1%}), KL to the teacher "
            f"{q['kl']:.3f}, top-1 {q['top1_agreement']:.1%}, {steps} updates")
    Path(a.out).write_text(json.dumps(res, indent=1))
    log(f"wrote {a.out}")


if __name__ == "__main__":
    main()
