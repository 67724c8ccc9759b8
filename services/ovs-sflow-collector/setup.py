"""Builds the C hot path (`netsonde.sflow_collector._fastsflow`); metadata lives in pyproject.toml.

The extension is optional: without a compiler or Python headers the install still succeeds and the collector
falls back to the pure-Python decoder (about 10x slower; the test suite fails loudly in that case)."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("netsonde.sflow_collector._fastsflow",
                             ["src/netsonde/sflow_collector/_fastsflow.c"],
                             extra_compile_args=["-O2", "-std=gnu99", "-Wall"], optional=True)])
