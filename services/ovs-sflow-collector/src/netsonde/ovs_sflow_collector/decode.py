"""Moved to `netsonde.flow.sflow.decode` (libs/flow), shared with probe-flow's `sflow` captures; this name is
kept so existing imports work."""

from netsonde.flow.sflow.decode import *  # noqa: F403
from netsonde.flow.sflow.decode import __all__  # noqa: F401
