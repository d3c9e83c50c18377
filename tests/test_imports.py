"""Every module imports (catches syntax errors and broken imports in rarely run paths)."""

import importlib
import pkgutil

import seqlab


def test_import_every_module():
    names = [m.name for m in pkgutil.walk_packages(seqlab.__path__, "seqlab.")]
    assert len(names) > 25
    for name in names:
        importlib.import_module(name)


def _onednn_capacity_after_import(env: dict) -> str:
    import os
    import subprocess
    import sys

    code = "import os, seqlab; print(os.environ['ONEDNN_PRIMITIVE_CACHE_CAPACITY'])"
    env = {k: v for k, v in os.environ.items() if k != "ONEDNN_PRIMITIVE_CACHE_CAPACITY"} | env
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.strip()


def test_import_bounds_onednn_primitive_cache_unless_the_user_set_it():
    # oneDNN's default (1,024 primitives, one per bfloat16 matmul shape) let a long bfloat16
    # sampling or GRPO run's memory grow by GBs; the user's own value must win
    assert _onednn_capacity_after_import({}) == "128"
    assert _onednn_capacity_after_import({"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "7"}) == "7"
