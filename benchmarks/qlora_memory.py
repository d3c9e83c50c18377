"""Peak memory of GRPO with LoRA on SmolLM2-135M: float32 base vs a 4-bit base (QLoRA).

    python benchmarks/qlora_memory.py [--work /tmp/seqlab-qlora-mem] [--steps 2] [--micro-batch 8 1]
        [--out benchmarks/raw/qlora-memory.json]

Each configuration is its own `seqlab post grpo` process under `/usr/bin/time -v` (peak
resident set, "Maximum resident set size"), with the resident set also sampled every 0.5 s
(psutil-free: /proc/PID/status) to report what it holds while training. Runs: LoRA rank 16 on
the float32 import (`seqlab import smollm2`), QLoRA on the 4-bit import (`--keep-quantized`:
the GGUF's own Q4_1 values) saved as base + adapter (the default on a quantized run), and
QLoRA with `lora_merge = true` (the float model written at the end). 4 prompts x 8 completions
of up to 64 tokens, the workshop's system prompt and rewards, 2 threads.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SYSTEM = ("You are given a problem. Think about the problem and provide your working out. Place it between "
          "<start_working_out> and <end_working_out>. Then, provide your solution between <SOLUTION></SOLUTION>")


def seqlab(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "seqlab", *args], check=True, capture_output=True)


def toml_for(policy: Path, out: Path, micro_batch: int, steps: int, merge: bool | None) -> str:
    lines = ["[post]", f'policy = "{policy}"', f'data = "{ROOT / "examples/post/data/word_problems.jsonl"}"',
             f'out = "{out}"', 'rewards = ["format_exact", "answer_exact", "answer_distance"]',
             f'system = "{SYSTEM}"', "chat_template = true", "lora_rank = 16", f"steps = {steps}", "group_size = 8",
             "prompts_per_step = 4", f"micro_batch = {micro_batch}", "max_new_tokens = 64", "lr = 2e-4",
             "threads = 2", "checkpoint_interval = 1000"]
    if merge is not None:
        lines.append(f"lora_merge = {'true' if merge else 'false'}")
    return "\n".join(lines) + "\n"


def rss_kib(pid: int) -> int:
    """VmRSS of pid and its children (the seqlab process is a child of /usr/bin/time)."""
    total = 0
    for p in [pid] + children(pid):
        try:
            m = re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{p}/status").read_text())
            total += int(m.group(1)) if m else 0
        except OSError:
            pass
    return total


def children(pid: int) -> list[int]:
    try:
        kids = [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []
    return kids + [g for k in kids for g in children(k)]


def measure(cfg: Path) -> dict:
    proc = subprocess.Popen(["/usr/bin/time", "-v", sys.executable, "-m", "seqlab", "post", "grpo", "--config",
                             str(cfg), "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    samples: list[tuple[float, int]] = []
    t0 = time.perf_counter()

    def sample():
        while proc.poll() is None:
            samples.append((time.perf_counter() - t0, rss_kib(proc.pid)))
            time.sleep(0.5)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out, err = proc.communicate()
    th.join()
    if proc.returncode:
        raise SystemExit(f"{cfg}: {err[-2000:]}")
    peak = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", err).group(1))
    return {"peak_gib": round(peak / 2**20, 3), "wall_s": round(time.perf_counter() - t0, 1),
            "rss_trace_gib": [(round(t, 1), round(k / 2**20, 3)) for t, k in samples[::4]],
            "result": json.loads(out.strip().splitlines()[-1])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/seqlab-qlora-mem")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--micro-batch", type=int, nargs="+", default=[8, 1])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default=str(HERE / "raw" / "qlora-memory.json"))
    a = ap.parse_args()
    sys.path.insert(0, str(HERE))
    from bench_core import machine_info

    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    f32, q4 = work / "smol", work / "smol-q4"
    if not (f32 / "best.safetensors").exists():
        seqlab("import", "smollm2", "--out", str(f32))
    if not (q4 / "best.safetensors").exists():
        seqlab("import", "smollm2", "--out", str(q4), "--keep-quantized")
    variants = {"LoRA, float32 base": (f32, None), "QLoRA, 4-bit base kept apart": (q4, None),
                "QLoRA, merged to float at the end": (q4, True)}
    res = {"machine": machine_info(), "steps": a.steps, "runs": []}
    for r in range(a.rounds):
        for mb in a.micro_batch:
            for name, (policy, merge) in variants.items():
                out = work / f"run-{r}-{mb}-{abs(hash(name)) % 10**6}"
                subprocess.run(["rm", "-rf", str(out)], check=True)
                cfg = work / (out.name + ".toml")
                cfg.write_text(toml_for(policy, out, mb, a.steps, merge))
                m = measure(cfg)
                row = {"variant": name, "micro_batch": mb, "round": r, **m}
                res["runs"].append(row)
                print(f"{name}, micro_batch {mb}: peak {m['peak_gib']} GiB, {m['wall_s']} s", file=sys.stderr,
                      flush=True)
                subprocess.run(["rm", "-rf", str(out)], check=True)
    Path(a.out).write_text(json.dumps(res, indent=1))
    print(f"wrote {a.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
