"""Optional dependencies, imported lazily with an error that names the extra."""

from __future__ import annotations

import importlib
import sys
from typing import Any

__all__ = ["available", "require"]

_absent: set[str] = set()  # modules an import of failed: a later ask is one set lookup


def _imported(module: str) -> Any:
    """``module`` if it is imported whole, else None. A module another
    thread is still importing is in sys.modules half made (an offload in one
    thread met xxhash without its functions): import_module waits for it."""
    loaded = sys.modules.get(module)
    if loaded is None or getattr(getattr(loaded, "__spec__", None), "_initializing", False):
        return None
    return loaded


def require(module: str, extra: str) -> Any:
    """Import ``module`` or raise ImportError saying which extra installs it."""
    loaded = _imported(module)
    if loaded is not None:  # hot paths ask for their codec on every call
        return loaded
    try:
        if module == "matplotlib.pyplot":
            matplotlib = importlib.import_module("matplotlib")
            matplotlib.use("Agg")
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"{module.split('.')[0]} is needed for this; install it with: pip install 'swarmheap[{extra}]'"
        ) from exc


def available(module: str) -> bool:
    """Whether ``module`` imports (for a default that falls back without its extra)."""
    if _imported(module) is not None:
        return True
    if module in _absent:
        return False
    try:
        importlib.import_module(module)
    except ImportError:
        _absent.add(module)
        return False
    return True
