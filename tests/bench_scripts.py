"""Load a script of benchmarks/ as a module, for the tests of its plans and records.

The benchmark scripts are programs, not a package: each test module used to repeat the same
importlib lines. `load_bench("bench_prune")` returns a fresh module object each call, with
benchmarks/ on sys.path for the scripts that import a sibling (bench_factorize uses bench_prune's
child runner).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_bench(name: str) -> ModuleType:
    path = BENCHMARKS / f"{name}.py"
    if not path.is_file():
        raise FileNotFoundError(f"no benchmark script {path}")
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
