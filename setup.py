"""The one C extension; everything else about the package is in pyproject.toml.

extproc/complexity/_native.c holds the complexity scorer's per-token loops (extproc.complexity.native).
Optional: without a C compiler the install still succeeds and the scorer runs its numpy reference,
which gives the same scores about three times slower.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("extproc.complexity._native", ["extproc/complexity/_native.c"], optional=True)])
