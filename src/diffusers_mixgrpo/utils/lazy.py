"""Lazy exports for package `__init__` modules: a public name loads its module on first access.

The idea of diffusers' `_LazyModule`, reduced to a module-level `__getattr__` (PEP 562): `import diffusers_mixgrpo`,
`diffusers_mixgrpo.training` or `diffusers_mixgrpo.rewards` stays cheap (no transformers, peft or plotting libraries)
until a name that needs them is used.

    _LAZY = {".trainer": ["GRPOTrainer", "TrainOutput"], ".config": ["GRPOConfig"]}
    __all__ = lazy_names(_LAZY)
    __getattr__, __dir__ = lazy_exports(__name__, _LAZY)
"""

import sys
from collections.abc import Callable, Mapping, Sequence
from importlib import import_module
from typing import Any

__all__ = ["lazy_exports", "lazy_names"]


def lazy_names(structure: Mapping[str, Sequence[str]]) -> list[str]:
    """The names of `structure` (module -> names), sorted: a package's `__all__`."""
    return sorted(name for names in structure.values() for name in names)


def lazy_exports(
    package: str, structure: Mapping[str, Sequence[str]]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The `__getattr__` and `__dir__` of package `package` for the lazily exported names of `structure`.

    Args:
        package (`str`): the package's `__name__`.
        structure (`Mapping[str, Sequence[str]]`): module, relative to `package` (`".trainer"`,
            `".schedulers.sliding_window"`) -> the public names it defines (diffusers' `_import_structure` layout).

    A name is looked up in its module on each access that misses the package's namespace (the module itself is
    imported once), so a module patched or reloaded later is seen. Any other name raises `AttributeError` as usual.
    """
    names = {name: module for module, module_names in structure.items() for name in module_names}

    def __getattr__(name: str) -> Any:
        if name not in names:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(import_module(names[name], package), name)

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(names))

    return __getattr__, __dir__
