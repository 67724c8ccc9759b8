"""C extensions (the hot paths) are required: a missing one is an error, not a silent 10x slowdown.

`make install` (pip install -e) builds them and fails loudly when it cannot. A module that imports one calls
`slow_path_allowed` when the import fails: it re-raises unless `NETSONDE_ALLOW_SLOW_PATH=1` is set, in which
case the pure-Python reference path is used and a warning says so.
"""

from __future__ import annotations

import logging
import os

ALLOW_ENV = "NETSONDE_ALLOW_SLOW_PATH"

log = logging.getLogger(__name__)


def slow_path_allowed(module: str, exc: ImportError) -> None:
    """Return if the Python fallback for the C extension `module` is explicitly allowed; raise otherwise."""
    if os.environ.get(ALLOW_ENV, "") == "1":
        log.warning("%s is not built (%s): using the pure-Python path (%s=1)", module, exc, ALLOW_ENV)
        return
    raise ImportError(
        f"the C extension {module} is not built or does not load ({exc}); rebuild it with `make install` "
        f"(needs gcc and the Python headers), or set {ALLOW_ENV}=1 to run the much slower Python path"
    ) from exc
