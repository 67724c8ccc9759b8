"""Only the C extensions are declared here; the rest of the metadata is in pyproject.toml.

They are required: a build failure fails the install (no silent fallback to the slow Python path)."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("netsonde.flow._fastpath", ["src/netsonde/flow/_fastpath.c"],
                             extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wno-strict-aliasing"]),
                   # the sFlow scanner (docs/sflow.md)
                   Extension("netsonde.flow.sflow._fastsflow", ["src/netsonde/flow/sflow/_fastsflow.c"],
                             extra_compile_args=["-O2", "-std=gnu99", "-Wall"])])
