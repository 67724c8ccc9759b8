"""Moved to `netsonde.flow.sflow.collector` (libs/flow), shared with probe-flow's `sflow` captures; this name is
kept so existing imports work."""

from netsonde.flow.sflow.collector import *  # noqa: F403
from netsonde.flow.sflow.collector import __all__  # noqa: F401
