"""The gin files of keras_unc, shipped inside the package as `keras_unc.gin_configs`.

This folder stays at the top of the repository; `setup.py` maps it into the package, and
`keras_unc.config` finds it with `importlib.resources`.
"""
