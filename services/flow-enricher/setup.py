"""Builds the C hot path (`netsonde.flow_enricher._fastflow`); metadata lives in pyproject.toml."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("netsonde.flow_enricher._fastflow",
                             ["src/netsonde/flow_enricher/_fastflow.c"],
                             extra_compile_args=["-O2", "-std=c99", "-Wall"])])
