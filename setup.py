"""Packaging: everything else is in setup.cfg. This file exists for one mapping setup.cfg
cannot express beside `packages = find:`: the repo's top-level `gin_configs/` ships inside
the wheel as the data package `keras_unc.gin_configs` (read with `importlib.resources`).
"""

from setuptools import find_packages, setup

setup(
  packages=find_packages(include=["keras_unc", "keras_unc.*"]) + ["keras_unc.gin_configs"],
  package_dir={"keras_unc.gin_configs": "gin_configs"},
  package_data={"keras_unc.gin_configs": ["*.gin", "**/*.gin"]},
)
