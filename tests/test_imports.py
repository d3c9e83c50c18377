"""Every module imports (catches syntax errors and broken imports in rarely run paths)."""

import importlib
import pkgutil

import seqlab


def test_import_every_module():
    names = [m.name for m in pkgutil.walk_packages(seqlab.__path__, "seqlab.")]
    assert len(names) > 25
    for name in names:
        importlib.import_module(name)
