"""The one setns binding (`netsonde.common.netns`) and the components that use it."""

from __future__ import annotations

import os
import socket

import pytest

from netsonde.common import netns, simhost
from netsonde.flow.capture import CaptureError, setns


@pytest.mark.root
def test_run_in_netns_by_path_and_by_fd() -> None:
    own = os.stat("/proc/self/ns/net").st_ino
    assert netns.run_in_netns("/proc/self/ns/net", lambda: os.stat("/proc/thread-self/ns/net").st_ino) == own
    fd = os.open("/proc/self/ns/net", os.O_RDONLY)
    try:
        sock = simhost._socket_in_netns(fd)  # the simulated hosts' relay socket, made in the root namespace
        assert sock.family == socket.AF_INET and sock.type == socket.SOCK_STREAM
        sock.close()
        os.fstat(fd)  # an fd given by the caller stays open
    finally:
        os.close(fd)


@pytest.mark.root
def test_a_file_that_is_no_network_namespace_is_refused() -> None:
    with pytest.raises(netns.SetnsError) as exc:
        netns.run_in_netns("/proc/self/ns/uts", lambda: None)
    assert exc.value.errno == 22 and "setns(/proc/self/ns/uts)" in str(exc.value)
    with pytest.raises(
        CaptureError, match=r"cannot enter network namespace /proc/self/ns/uts: Invalid argument"
    ):
        netns.run_in_netns("/proc/self/ns/net", lambda: setns("/proc/self/ns/uts"))
    with pytest.raises(FileNotFoundError):
        netns.enter_netns("/nonexistent/netns")
