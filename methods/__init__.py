"""Fine-tuning strategies, one module each; importing this package imports every module in it, which registers
them all (a new ``methods/<name>.py`` needs no line here).

A module that needs an optional dependency imports it inside its builder, so a missing package breaks only
that method.
"""

import importlib
import pkgutil

__all__ = sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.ispkg and not m.name.startswith("_"))
for _name in __all__:
    importlib.import_module(f"{__name__}.{_name}")
