"""Built-in discovery problems and the registry that also loads user problems.

    get_problem("c4-free", 33)                  a built-in, by its CLI name
    get_problem("mymod:MyProblem", 10)          a user class (module or file.py path)
    list_problems()                             name, description, best-known table
"""

from __future__ import annotations

from ...errors import SeqlabError
from ...plugins import is_spec, load_object
from ..problem import Problem
from .c4 import C4Free
from .distance45 import Distance45
from .golomb import Golomb
from .isosceles import IsoscelesFree
from .lines import NoThreeInLine

PROBLEMS: dict[str, type] = {cls.name: cls for cls in (IsoscelesFree, NoThreeInLine, Distance45, C4Free, Golomb)}

_REQUIRED = ("encode", "decode", "is_valid", "score", "random_construction")


def get_problem_class(name_or_spec: str) -> type:
    if name_or_spec in PROBLEMS:
        return PROBLEMS[name_or_spec]
    if not is_spec(name_or_spec):
        raise SeqlabError(f"unknown problem '{name_or_spec}' (built-ins: {', '.join(PROBLEMS)}; "
                          f"or module:Class / file.py:Class)")
    cls = load_object(name_or_spec)
    if not isinstance(cls, type):
        raise SeqlabError(f"{name_or_spec}: is not a class")
    missing = [m for m in _REQUIRED if not callable(getattr(cls, m, None))]
    if missing:
        raise SeqlabError(f"{name_or_spec}: problem class lacks {', '.join(missing)}")
    return cls


def get_problem(name_or_spec: str, n: int):
    """An instance for size n: a built-in by name, or a user `module:Class` / `file.py:Class`."""
    cls = get_problem_class(name_or_spec)
    try:
        problem = cls(n)
    except SeqlabError:
        raise
    except Exception as e:
        raise SeqlabError(f"{name_or_spec}: cannot construct the problem with n={n} ({type(e).__name__}: {e})") from None
    if not getattr(problem, "name", ""):
        problem.name = name_or_spec
    problem.spec = name_or_spec  # how a worker process re-creates it
    return problem


def list_problems() -> list[dict]:
    """The built-ins: name, description, n range and best-known values (score units)."""
    return [{"name": name, "description": cls.description, "min_n": cls.min_n, "max_n": cls.max_n,
             "best_known": {int(n): v for n, v in sorted(cls.best_known_table.items())}}
            for name, cls in PROBLEMS.items()]


__all__ = ["PROBLEMS", "Problem", "get_problem", "get_problem_class", "list_problems",
           "IsoscelesFree", "NoThreeInLine", "Distance45", "C4Free", "Golomb"]
