"""Builds the C hot path (`netsonde.sflow_collector._fastsflow`); metadata lives in pyproject.toml."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("netsonde.sflow_collector._fastsflow",
                             ["src/netsonde/sflow_collector/_fastsflow.c"],
                             extra_compile_args=["-O2", "-std=c99", "-Wall"])])
