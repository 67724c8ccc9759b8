"""Child processes the tools start and stop (the two-host demo's services, the test harness's servers)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from typing import Any


def stop_process(popen: subprocess.Popen[bytes] | None, grace_s: float) -> None:
    """SIGTERM a child that still runs, and SIGKILL it if it has not exited after `grace_s` seconds (a
    service gets the time its own shutdown needs, but a hung one never blocks whoever stops it)."""
    if popen is not None and popen.poll() is None:
        popen.terminate()
        try:
            popen.wait(grace_s)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait(5)


def wait_until(
    fn: Callable[[], Any],
    timeout: float,
    what: str,
    interval: float = 0.3,
    retry_on: tuple[type[BaseException], ...] = (OSError,),
) -> Any:
    """Poll `fn` until it returns something truthy; fail with the last answer (or error) after `timeout` s.

    Errors of the `retry_on` types count as "not yet" (a service still starting refuses connections).
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = fn()
            if last:
                return last
        except retry_on as exc:
            last = exc
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")
