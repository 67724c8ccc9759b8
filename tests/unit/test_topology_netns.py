"""Namespace discovery helpers on real files: plain files in a netns dir are "pending" (not yet an nsfs
mount), /proc scanning skips the excluded (root) namespace, inotify reports entries created and removed."""

from __future__ import annotations

import os

import pytest

from netsonde.probe_topology import netns


def test_scan_named_tells_mounts_from_plain_files(tmp_path):
    d = tmp_path / "netns"
    d.mkdir()
    (d / "not-mounted-yet").write_text("")
    found, pending = netns.scan_named((str(d), str(d)))
    assert found == {} and pending == [str(d / "not-mounted-yet")]
    assert netns.scan_named((str(tmp_path / "absent"),)) == ({}, [])


def test_scan_processes_excludes_root():
    root = netns.root_netns()
    assert root.kind == "root" and root.inode == os.stat("/proc/self/ns/net").st_ino
    found = netns.scan_processes({root.inode})
    assert root.inode not in found
    assert all(ns.kind == "process" and ns.path.startswith("/proc/") for ns in found.values())


def test_inotify_reports_creations_and_deletions(tmp_path):
    ino = netns.Inotify()
    try:
        assert ino.watch(str(tmp_path))
        assert not ino.watch(str(tmp_path / "absent"))
        (tmp_path / "x").write_text("")
        (tmp_path / "x").unlink()
        events = ino.read()
        assert [(d, n) for d, n, _ in events] == [(str(tmp_path), "x"), (str(tmp_path), "x")]
        assert events[0][2] & netns.Inotify.IN_CREATE and events[1][2] & netns.Inotify.IN_DELETE
        assert ino.read() == []
    finally:
        ino.close()


@pytest.mark.root
def test_run_in_netns_enters_the_namespace():
    # entering our own namespace by path: the callable runs in the thread that did setns
    assert netns.run_in_netns("/proc/self/ns/net", lambda: os.stat("/proc/thread-self/ns/net").st_ino) == \
        os.stat("/proc/self/ns/net").st_ino
