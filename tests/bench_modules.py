"""The bench scripts (bench/*.py) loaded as modules for their unit tests: they are scripts,
not a package, and import their sibling throughput.py by its name."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parents[1] / "bench"


def load_bench(script: str) -> ModuleType:
    """``bench/<script>.py`` as the module ``bench_<script>``."""
    sys.path.insert(0, str(BENCH))  # its siblings, such as throughput.py
    try:
        spec = importlib.util.spec_from_file_location(f"bench_{script}", BENCH / f"{script}.py")
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCH))
    return module
