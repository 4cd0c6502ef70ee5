"""cancel-orders: bulk-cancel SOGET MouvONE customer orders, resumably and within the API's quota."""

__version__ = "0.1.0"
