"""The framework's methods, one module each, registered in `fedprivacy.methods.registry`.

Importing this package imports every module in it (each registers its method) and every
module that an installed distribution names in the ``fedprivacy.methods`` entry-point group,
so a third-party method needs no edit here.
"""

from __future__ import annotations

import importlib
import pkgutil
from importlib.metadata import entry_points

from fedprivacy.methods import registry  # noqa: F401  (first: the modules below use it)

for _info in pkgutil.iter_modules(__path__):
    if _info.name != "registry":
        importlib.import_module(f"{__name__}.{_info.name}")
for _entry in entry_points(group="fedprivacy.methods"):
    _entry.load()
