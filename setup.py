"""The build finds every package under worker/ by itself; config/ (the shipped defaults and the
outcome table) goes into the wheel as the package worker.defaults. Everything else is in
pyproject.toml."""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["worker", "worker.*"]), "worker.defaults"],
    package_dir={"worker.defaults": "config"},
)
