"""cancel-orders: bulk-cancel SOGET MouvONE customer orders, resumably, within the quota.

The Python API (docs/python-api.md): ``await cancel_orders(order_ids, settings)`` runs what
``cancel-orders run --yes`` runs, with the settings from ``load_settings``."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["Cancellation", "RunControl", "__version__", "cancel_orders", "load_settings"]

_API = {  # name -> module: imported when first asked for (the command line starts faster)
    "cancel_orders": "worker.pipeline.lifecycle",
    "Cancellation": "worker.pipeline.lifecycle",
    "RunControl": "worker.pipeline.control",
    "load_settings": "worker.settings",
}


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'worker' has no attribute {name!r}")
    import importlib  # noqa: PLC0415

    return getattr(importlib.import_module(module), name)
