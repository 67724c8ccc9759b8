"""Only the C extension is declared here; the rest of the metadata is in pyproject.toml."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("netsonde.flow._fastpath", ["src/netsonde/flow/_fastpath.c"],
                             extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wno-strict-aliasing"],
                             optional=True)])
