"""ccxt without its 280 unused exchange modules: each exchange class is imported on first use.

``import ccxt.pro`` runs the ``__init__`` of three packages (``ccxt``, ``ccxt.async_support``,
``ccxt.pro``) that import every exchange ccxt supports, about 104 + 105 + 76 modules: the process
grows from 11 MB to 112 MB before it has done anything. The streamer uses one or two exchanges;
with only Binance loaded the same import costs 55 MB.

``install()`` puts a finder in front of the import system for those three packages only. Each
``__init__`` runs as ccxt wrote it, minus its lines ``from ccxt.<package>.<name> import <name>``;
the package imports ``<name>`` when it is first asked for (PEP 562), so ``ccxt.pro.binance``,
``getattr(ccxt.pro, "kraken")`` and ``from ccxt.pro import okx`` give the same classes as before.
If ccxt's files stop matching that line pattern, nothing is removed and ccxt loads as usual.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import re
import sys
import types
from collections.abc import Sequence
from typing import Any

_PACKAGES = ("ccxt", "ccxt.async_support", "ccxt.pro")
_LAZY = "_volcast_lazy_exchanges"  # in a package's __dict__: exchange class name -> its module


def _exchange_import(package: str) -> re.Pattern[str]:
    """``from ccxt.pro.binance import binance  # noqa: F401``: one exchange, as ccxt generates it."""
    return re.compile(rf"^from {re.escape(package)}\.(?P<name>\w+) import (?P=name)[ \t]+# noqa: F401[ \t]*$", re.M)


class _ExchangePackage(types.ModuleType):
    """A ccxt package whose exchange classes are imported when first used."""

    def __getattr__(self, name: str) -> Any:
        module_name = self.__dict__.get(_LAZY, {}).get(name)
        if module_name is None:
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module_name), name)
        super().__setattr__(name, value)  # once: later lookups are plain attribute reads
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        # Loading ``ccxt.pro.binance`` makes the import system bind the module on its package;
        # ccxt's own ``__init__`` binds the class instead, and ccxt relies on that
        # (``class binance(ccxt.async_support.binance)``): keep it so.
        if isinstance(value, types.ModuleType) and self.__dict__.get(_LAZY, {}).get(name) == value.__name__:
            value = getattr(value, name)
        super().__setattr__(name, value)

    def __dir__(self) -> list[str]:
        return sorted({*super().__dir__(), *self.__dict__.get(_LAZY, {})})


class _LazyExchangesLoader(importlib.machinery.SourceFileLoader):
    def exec_module(self, module: types.ModuleType) -> None:
        package = module.__name__
        lazy: dict[str, str] = {}

        def defer(match: re.Match[str]) -> str:
            lazy[match["name"]] = f"{package}.{match['name']}"
            return ""  # the line stays, empty: tracebacks keep ccxt's line numbers

        source = _exchange_import(package).sub(defer, self.get_data(self.path).decode("utf-8"))
        module.__class__ = _ExchangePackage
        module.__dict__[_LAZY] = lazy
        exec(compile(source, self.path, "exec", dont_inherit=True), module.__dict__)  # ccxt's own file, trimmed


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in _PACKAGES:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or not isinstance(spec.loader, importlib.machinery.SourceFileLoader) or not spec.origin:
            return None  # not ccxt as we know it: let the import system do its usual work
        spec.loader = _LazyExchangesLoader(fullname, spec.origin)
        return spec


def install() -> bool:
    """Make later imports of ccxt lazy; False if ccxt was imported already (then nothing changes)."""
    if any(isinstance(finder, _Finder) for finder in sys.meta_path):
        return True
    if any(name in sys.modules for name in _PACKAGES):
        return False
    sys.meta_path.insert(0, _Finder())
    return True
