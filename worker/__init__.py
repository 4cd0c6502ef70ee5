"""cancel-orders: bulk-cancel SOGET MouvONE customer orders, resumably, within the quota."""

__version__ = "0.1.0"
