"""Default settings and the outcome table; shipped inside the package as ``worker.defaults``."""
