"""Only the C extension is declared here; the rest of the metadata is in pyproject.toml."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("netsonde.flow._fastpath", ["src/netsonde/flow/_fastpath.c"],
                             extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wno-strict-aliasing"],
                             optional=True),
                   # the sFlow scanner (docs/sflow.md); without it sFlow falls back to the reference decoder
                   Extension("netsonde.flow.sflow._fastsflow", ["src/netsonde/flow/sflow/_fastsflow.c"],
                             extra_compile_args=["-O2", "-std=gnu99", "-Wall"], optional=True)])
