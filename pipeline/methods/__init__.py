"""Classification methods: one :class:`~.registry.Method` record each (see :mod:`.registry`).

Importing the package registers the built-in methods; it imports no heavy library.
"""
# registration order is the order of the --method choices
from . import baselines  # noqa: F401, I001
from . import lazsl  # noqa: F401
from . import awt  # noqa: F401
from . import object_bound  # noqa: F401
from . import controls  # noqa: F401
from . import czsl  # noqa: F401
from .registry import (
    Method,
    MethodTexts,
    ScoreContext,
    find_method,
    get_method,
    method_names,
    register,
    unregister,
)

__all__ = ["Method", "MethodTexts", "ScoreContext", "find_method", "get_method", "method_names", "register",
           "unregister"]
