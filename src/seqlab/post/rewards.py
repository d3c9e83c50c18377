"""Reward functions: fn(prompts, completions, **columns) -> list[float | None].

The calling convention TRL users know: one value per completion; `None` means
"no opinion" and is left out of the weighted sum (a completion on which every
function abstains gets reward 0 and is reported). Built-ins are named below;
user functions load from `module:function`. A function that raises stops the
run with an error naming the function and the sample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from ..errors import SeqlabError
from ..plugins import load_object
from .template import ReasoningTemplate

RewardFn = Callable[..., list]


def _parse_number(text: str | None) -> Optional[float]:
    if text is None:
        return None
    try:
        return float(text.replace(",", "").strip())
    except ValueError:
        return None


def make_builtins(template: ReasoningTemplate) -> dict[str, RewardFn]:
    fmt = template.format_regex()

    def format_exact(prompts, completions, **_):
        """3.0 when the completion has exactly the template's shape, else 0."""
        return [3.0 if fmt.match(c) else 0.0 for c in completions]

    def format_approx(prompts, completions, **_):
        """Per-tag credit: +0.5 for each closing/solution tag seen exactly once, -1 otherwise."""
        tags = [template.reasoning_end, template.solution_start, template.solution_end]
        return [sum(0.5 if c.count(t) == 1 else -1.0 for t in tags) for c in completions]

    def answer_exact(prompts, completions, answer, **_):
        """3.0 when the extracted answer equals the `answer` column as text; -1 when missing."""
        out = []
        for c, a in zip(completions, answer):
            got = template.extract_answer(c)
            out.append(-1.0 if got is None else (3.0 if got == str(a).strip() else 0.0))
        return out

    def answer_distance(prompts, completions, answer, **_):
        """Numeric closeness (the workshop's scheme): 2.0 exact; 1.5 within 10%; 0.5 within 20%;
        else -1.0 (wrong, or out of range); -2.5 when no number can be read."""
        out = []
        for c, a in zip(completions, answer):
            got, want = _parse_number(template.extract_answer(c)), _parse_number(str(a))
            if got is None or want is None:
                out.append(-2.5)
                continue
            if got == want:
                out.append(2.0)
                continue
            ratio = got / want if want != 0 else math.inf
            out.append(1.5 if 0.9 <= ratio <= 1.1 else 0.5 if 0.8 <= ratio <= 1.2 else -1.0)
        return out

    def length_penalty(prompts, completions, **_):
        """-0.01 per character beyond 64 (discourages rambling)."""
        return [-0.01 * max(0, len(c) - 64) for c in completions]

    return {"format_exact": format_exact, "format_approx": format_approx, "answer_exact": answer_exact,
            "answer_distance": answer_distance, "length_penalty": length_penalty}


@dataclass
class RewardSet:
    names: list[str]
    fns: list[RewardFn]
    weights: list[float]

    def __call__(self, prompts: list[str], completions: list[str], columns: dict[str, list]):
        """Total rewards (N,) and each function's values (name -> list of float | None)."""
        per_fn = {}
        for name, fn in zip(self.names, self.fns):
            try:
                values = fn(prompts, completions, **columns)
            except Exception as e:
                i = _first_failing(fn, prompts, completions, columns)
                where = f" on sample {i}: {completions[i]!r}" if i is not None else ""
                raise SeqlabError(f"reward function {name} raised {type(e).__name__}: {e}{where}") from None
            if not isinstance(values, (list, tuple)) or len(values) != len(completions):
                raise SeqlabError(f"reward function {name} must return one value per completion "
                                  f"({len(completions)}), got {type(values).__name__} of length "
                                  f"{len(values) if hasattr(values, '__len__') else '?'}")
            per_fn[name] = [None if v is None else float(v) for v in values]
        totals = []
        for i in range(len(completions)):
            parts = [w * per_fn[n][i] for n, w in zip(self.names, self.weights) if per_fn[n][i] is not None]
            totals.append(sum(parts) if parts else 0.0)
        return totals, per_fn


def _first_failing(fn, prompts, completions, columns) -> int | None:
    for i in range(len(completions)):
        try:
            fn(prompts[i:i + 1], completions[i:i + 1], **{k: v[i:i + 1] for k, v in columns.items()})
        except Exception:
            return i
    return None


def build_rewards(specs: Sequence[str], weights: Sequence[float] | None, template: ReasoningTemplate) -> RewardSet:
    if not specs:
        raise SeqlabError("config key 'rewards': give at least one reward function")
    builtins = make_builtins(template)
    fns = []
    for spec in specs:
        if spec in builtins:
            fns.append(builtins[spec])
        elif ":" in spec:
            fn = load_object(spec)
            if not callable(fn):
                raise SeqlabError(f"reward {spec} is not callable")
            fns.append(fn)
        else:
            raise SeqlabError(f"unknown reward '{spec}' (built-ins: {', '.join(builtins)}; or module:function)")
    if weights is None:
        weights = [1.0] * len(fns)
    if len(weights) != len(fns):
        raise SeqlabError(f"config key 'reward_weights': {len(weights)} weights for {len(fns)} rewards")
    return RewardSet(list(specs), fns, [float(w) for w in weights])
