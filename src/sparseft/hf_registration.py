"""Register sparseft's transformers quantizer when transformers' quantizer registry is imported.

`import sparseft` must stay fast and must not import torch, but `AutoModelFor*.from_pretrained`
on a sparseft folder needs the "sparseft" quantizer (export/hf_quantizer.py) registered first.
`install()` therefore registers at once when `transformers.quantizers.auto` is already
imported, and otherwise adds an import hook (a `sys.meta_path` finder) that registers right after
that module has been executed; the finder then removes itself. Nothing of transformers is
patched: registration goes through `register_quantization_config` / `register_quantizer`.
"""

from __future__ import annotations

import importlib.machinery
import sys

TARGET = "transformers.quantizers.auto"


def _register() -> None:
    try:
        from sparseft.export.hf_quantizer import register

        register()
    except Exception as exc:  # never break `import transformers`; say loudly what is lost
        import warnings

        warnings.warn(f"sparseft could not register its transformers quantizer ({exc!r}); sparseft folders will "
                      f"not load through from_pretrained (use sparseft.load)", RuntimeWarning, stacklevel=2)


class _Loader:  # the importlib Loader protocol (importlib.abc itself costs ~0.1 s to import)
    """Runs the real loader, then registers sparseft's quantizer."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module) -> None:
        self.inner.exec_module(module)
        _register()


class _Finder:  # the importlib MetaPathFinder protocol
    def find_spec(self, fullname, path, target=None):
        if fullname != TARGET:
            return None
        sys.meta_path.remove(self)  # one shot; also keeps the lookup below from finding us again
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _Loader(spec.loader)
        return spec


def install() -> None:
    """Make sure the "sparseft" quantizer is registered before transformers needs it (idempotent)."""
    if TARGET in sys.modules:
        _register()
    elif not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
