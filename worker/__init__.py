"""cancel-orders: bulk-cancel SOGET MouvONE customer orders, resumably, within the quota.

The Python API (docs/python-api.md): ``await cancel_orders(order_ids, settings)`` runs what
``cancel-orders run --yes`` runs, with the settings from ``load_settings``. Its names load on
first use, so that the command line does not import the pool to print its help."""

from __future__ import annotations

from typing import TYPE_CHECKING

from worker.lazy import lazy_names

if TYPE_CHECKING:
    from worker.pipeline.control import RunControl
    from worker.runs.lifecycle import Cancellation, cancel_orders
    from worker.settings import load_settings

__version__ = "0.1.0"
__all__ = ["Cancellation", "RunControl", "__version__", "cancel_orders", "load_settings"]
_HOMES = {
    "cancel_orders": "worker.runs.lifecycle",
    "Cancellation": "worker.runs.lifecycle",
    "RunControl": "worker.pipeline.control",
    "load_settings": "worker.settings",
}

__getattr__ = lazy_names(__name__, _HOMES)
