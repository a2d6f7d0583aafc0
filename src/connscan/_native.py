"""Choose between a compiled module (``connscan._X_c``) and its pure-Python twin (``_X_py``).

CONNSCAN_NO_EXTENSIONS=1 selects the twins; CONNSCAN_REQUIRE_EXTENSION=1 turns a missing
compiled module into an ImportError, so that a broken build cannot pass as green.
"""
from __future__ import annotations

import importlib
import os
import warnings
from types import ModuleType


def _flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


_warned: set[str] = set()


def load(name: str, impl: str | None = None) -> ModuleType:
    """Return the implementation of module ``name`` (e.g. "engine"): impl "c", "py" or auto."""
    if impl is None:
        if _flag("CONNSCAN_NO_EXTENSIONS"):
            impl = "py"
        elif _flag("CONNSCAN_REQUIRE_EXTENSION"):
            impl = "c"
    if impl == "py":
        return importlib.import_module(f"connscan._{name}_py")
    try:
        return importlib.import_module(f"connscan._{name}_c")
    except ImportError:
        if impl == "c":
            raise
        if name not in _warned:
            _warned.add(name)
            warnings.warn(
                f"connscan: compiled module _{name}_c unavailable, using the pure-Python twin",
                RuntimeWarning,
                stacklevel=2,
            )
        return importlib.import_module(f"connscan._{name}_py")


def implementations(name: str) -> list[str]:
    """The implementations of ``name`` importable here ("c" first), for tests and benchmarks."""
    found = []
    for impl in ("c", "py"):
        try:
            importlib.import_module(f"connscan._{name}_{impl}")
            found.append(impl)
        except ImportError:
            pass
    return found
