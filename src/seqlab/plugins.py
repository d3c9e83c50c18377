"""Load user code named as `module:attr` (or `path/to/file.py:attr`).

Used for user verifiers (`seqlab eval --task mymod:check`), reward functions
and discovery problems. Errors name the spec.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

from .errors import SeqlabError


def is_spec(text: str) -> bool:
    return ":" in text and not text.startswith(":") and not text.endswith(":")


def load_object(spec: str):
    if not is_spec(spec):
        raise SeqlabError(f"'{spec}' is not of the form module:name or file.py:name")
    module_name, _, attr = spec.rpartition(":")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.exists():
                raise SeqlabError(f"{spec}: file {path} not found")
            folder = str(path.resolve().parent)
            if folder not in sys.path:  # like `python file.py`: modules next to the file are importable
                sys.path.insert(0, folder)
            mod_spec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(mod_spec)
            sys.modules.setdefault(path.stem, module)
            mod_spec.loader.exec_module(module)
        else:
            if "" not in sys.path and "." not in sys.path:
                sys.path.insert(0, "")  # like `python -m`: the working directory is importable
            module = importlib.import_module(module_name)
    except SeqlabError:
        raise
    except Exception as e:
        raise SeqlabError(f"{spec}: cannot import {module_name} ({type(e).__name__}: {e})") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise SeqlabError(f"{spec}: module {module_name} has no attribute '{attr}'") from None
