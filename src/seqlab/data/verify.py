"""Judging generated strings: rule success, well-formedness, novelty, diversity.

A verifier is a built-in task or a user function `fn(s) -> bool` (returning
None or raising for a malformed string), given as `module:function`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from .tasks import Task, get_task
from ..errors import SeqlabError
from ..plugins import is_spec, load_object


@dataclass
class Verifier:
    name: str
    check: Callable[[str], tuple[bool, bool]]  # -> (wellformed, obeys_rule)
    entropy_floor: Optional[Callable[[], float]] = None


def verifier_from_task(task: Task) -> Verifier:
    return Verifier(task.name, task.check, task.entropy_floor)


def user_verifier(spec: str) -> Verifier:
    fn = load_object(spec)
    if not callable(fn):
        raise SeqlabError(f"{spec}: is not callable")

    def check(s: str) -> tuple[bool, bool]:
        try:
            out = fn(s)
        except Exception:  # the user's convention for "malformed"
            return False, False
        if out is None:
            return False, False
        return True, bool(out)

    return Verifier(spec, check, None)


def get_verifier(name: str, equal: list[str] | None = None, length: str | None = None) -> Verifier:
    if is_spec(name):
        return user_verifier(name)
    return verifier_from_task(get_task(name, equal, length))


def judge(strings: list[str], verifier: Verifier, train_lines: Optional[set[str]] = None,
          show_failures: int = 5) -> dict:
    """Rates over `strings`; novelty is the fraction not in `train_lines` (None if unknown)."""
    if not strings:
        raise SeqlabError("nothing to evaluate (no strings)")
    wellformed = success = 0
    failures = []
    for i, s in enumerate(strings):
        w, ok = verifier.check(s)
        wellformed += w
        success += ok
        if not ok and len(failures) < show_failures:
            failures.append({"line": i + 1, "text": s, "wellformed": bool(w)})
    n = len(strings)
    return {
        "lines": n,
        "wellformed_rate": wellformed / n,
        "success_rate": success / n,
        "novelty": None if train_lines is None else sum(s not in train_lines for s in strings) / n,
        "distinct": len(set(strings)) / n,
        "failures": failures,
    }
