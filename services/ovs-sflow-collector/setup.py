"""No C extension here any more: the sFlow scanner is built with libs/flow (`netsonde.flow.sflow._fastsflow`).
Metadata lives in pyproject.toml."""

from setuptools import setup

setup()
