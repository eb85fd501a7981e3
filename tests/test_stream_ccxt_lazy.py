"""ccxt loaded lazily (streamer.ccxt_lazy) offers the same names and classes as ccxt loaded whole.

Each side runs in a fresh interpreter: the test process may have imported ccxt already.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_NAMES = """
import json, sys, types
{setup}
import ccxt, ccxt.async_support, ccxt.pro
loaded_at_import = sum(1 for m in sys.modules if m.startswith("ccxt."))
out = {{"loaded_at_import": loaded_at_import}}
for package in (ccxt, ccxt.async_support, ccxt.pro):
    names = sorted(set(dir(package)) | set(package.exchanges))
    out[package.__name__] = {{
        n: f"{{v.__module__}}.{{v.__qualname__}}" if isinstance(v, type) else type(v).__name__
        for n in names if not n.startswith("_") for v in [getattr(package, n)]
        if not isinstance(v, types.ModuleType)  # subpackages show up as they get imported
    }}
# the names once more, now that every exchange module is loaded: still classes, not modules
out["rebound"] = [n for n in ccxt.pro.exchanges if not isinstance(getattr(ccxt.pro, n), type)]
print(json.dumps(out))
"""


def _names(*setups: str) -> list[dict[str, object]]:
    """The names each setup ends up with; the interpreters run side by side (each takes seconds)."""
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", _NAMES.format(setup=setup)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for setup in setups
    ]
    results: list[dict[str, object]] = []
    for run in runs:
        out, err = run.communicate(timeout=120)
        assert run.returncode == 0, err
        results.append(json.loads(out))
    return results


def test_lazy_ccxt_has_the_same_names_and_classes() -> None:
    eager, lazy = _names("", "import streamer.ccxt_lazy as lazy; assert lazy.install()")
    for package in ("ccxt", "ccxt.async_support", "ccxt.pro"):
        assert lazy[package] == eager[package], package
    assert lazy["rebound"] == eager["rebound"] == []
    loaded_lazy, loaded_eager = lazy["loaded_at_import"], eager["loaded_at_import"]
    assert isinstance(loaded_lazy, int) and isinstance(loaded_eager, int)
    assert loaded_lazy < loaded_eager / 4  # the point: the exchanges were not imported up front


def test_exchange_class_bound_after_direct_submodule_import() -> None:
    script = (
        "import streamer.ccxt_lazy as lazy; assert lazy.install()\n"
        "from ccxt.pro.binance import binance\n"  # the submodule first, never via the package
        "import ccxt.pro, ccxt.async_support\n"
        "assert ccxt.pro.binance is binance and issubclass(binance, ccxt.async_support.binance)\n"
        "assert isinstance(ccxt.async_support.binance, type)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
