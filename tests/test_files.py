"""The file-system layer: atomic writes, temporary names that say who writes them, live and abandoned writers."""

from __future__ import annotations

import os

import pytest

from restorecli.files import write_atomic


def test_write_atomic_leaves_old_content_when_interrupted(tmp_path, monkeypatch):
    target = tmp_path / "out.png"
    target.write_bytes(b"old")

    def boom(*args):
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", boom)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, b"new content")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]  # no temporary file left behind


def _dead_pid() -> int:
    """The pid of a process that has ended (and been reaped), for a temporary file whose writer is gone."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def test_a_temporary_file_names_its_writer_and_only_abandoned_ones_are_removed(tmp_path):
    """SIGKILL (the out-of-memory killer) leaves the temporary file of the image in hand; the next run removes
    it, and only it: not a live process's file, not one from another host, not a file restorecli did not name."""
    from restorecli.files import _host, atomic_writer, remove_abandoned_temporaries

    with atomic_writer(tmp_path / "photo.png") as handle:
        (ours,) = tmp_path.glob(".photo.png.*.part")
        assert ours.name.startswith(f".photo.png.restorecli-{os.getpid()}@{_host()}.")
        handle.write(b"x")
    host, dead = _host(), _dead_pid()
    abandoned = tmp_path / f".a.png.restorecli-{dead}@{host}.k2j3h4g5.part"
    kept = [tmp_path / f".b.png.restorecli-{os.getpid()}@{host}.abcdefgh.part",  # a live writer
            tmp_path / f".c.png.restorecli-{dead}@another_host.abcdefgh.part",  # another machine's
            tmp_path / ".d.png.abcdefgh.part",  # not named by restorecli's writer
            tmp_path / "photo.png"]
    for path in (abandoned, *kept[:3]):
        path.write_bytes(b"partial")
    assert remove_abandoned_temporaries(tmp_path) == [abandoned]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in kept)
    assert remove_abandoned_temporaries(tmp_path / "missing") == []


def test_a_name_near_the_file_system_s_limit_gets_a_temporary_file_that_fits(tmp_path):
    """A temporary file's name adds about 50 bytes to the output's; a name near 255 bytes is cut for it and
    carries a hash of the whole, so two long names that share their start never share a temporary name."""
    import subprocess

    from restorecli.files import _TEMPORARY, LiveWriters, _host, _temporary_name, atomic_writer

    long_name = "ü" * 120 + "_001.png"  # 248 bytes in UTF-8
    target, sibling = tmp_path / long_name, tmp_path / long_name.replace("_001", "_002")
    with atomic_writer(target) as handle:
        (temporary,) = [p for p in tmp_path.iterdir() if p.name.endswith(".part")]
        assert len(temporary.name.encode()) <= 255 and _TEMPORARY.match(temporary.name)
        handle.write(b"done")
    assert target.read_bytes() == b"done" and sorted(tmp_path.iterdir()) == [target]
    assert _temporary_name(long_name) != _temporary_name(sibling.name)
    assert _temporary_name("short.png") == "short.png"
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        (tmp_path / f".{_temporary_name(long_name)}.restorecli-{sleeper.pid}@{_host()}.abcdefgh.part").touch()
        assert LiveWriters().of(target) == sleeper.pid and LiveWriters().of(sibling) is None
    finally:
        sleeper.kill()
        sleeper.wait()


def test_on_windows_a_writer_s_liveness_is_asked_without_signalling_it(monkeypatch):
    """On Windows os.kill(pid, 0) does not probe a process, it ends it (TerminateProcess): the liveness check
    there opens a query-only handle and reads the exit code instead, with these answers from Windows."""
    from restorecli import files

    class Kernel32:
        def __init__(self, handle, exit_code):
            self.handle, self.exit_code, self.closed = handle, exit_code, []

        def OpenProcess(self, access, inherit, pid):
            assert access == 0x1000 and not inherit  # PROCESS_QUERY_LIMITED_INFORMATION: it can only look
            return self.handle

        def GetExitCodeProcess(self, handle, code):
            code._obj.value = self.exit_code
            return 1

        def CloseHandle(self, handle):
            self.closed.append(handle)

    running, ended = Kernel32(7, 259), Kernel32(7, 0)
    assert files._windows_process_exists(42, running, lambda: 0) and running.closed == [7]
    assert not files._windows_process_exists(42, ended, lambda: 0) and ended.closed == [7]
    assert not files._windows_process_exists(42, Kernel32(0, 0), lambda: 87)  # ERROR_INVALID_PARAMETER: no such
    assert files._windows_process_exists(42, Kernel32(0, 0), lambda: 5)  # ERROR_ACCESS_DENIED: someone else's

    def kill(pid, signal):
        raise AssertionError("os.kill would end the process on Windows")

    asked = []
    monkeypatch.setattr(files.os, "kill", kill)
    monkeypatch.setattr(files, "_windows_process_exists", lambda pid: asked.append(pid) or True)
    monkeypatch.setattr(files.os, "name", "nt")
    assert files._process_exists(4242)
    monkeypatch.undo()
    assert asked == [4242]


def test_a_live_writer_of_an_output_is_found_and_only_a_live_one(tmp_path):
    import subprocess

    from restorecli.files import LiveWriters, _host, atomic_writer

    target = tmp_path / "photo [1].png"  # glob characters in the name are taken literally
    assert LiveWriters().of(target) is None
    with atomic_writer(target):
        assert LiveWriters().of(target) is None  # this process's own file is not another run's
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        for pid, host, found in ((_dead_pid(), _host(), None), (sleeper.pid, "another_host", None),
                                 (sleeper.pid, _host(), sleeper.pid)):
            temporary = tmp_path / f".photo [1].png.restorecli-{pid}@{host}.abcdefgh.part"
            temporary.write_bytes(b"half")
            assert LiveWriters().of(target) == found
            assert LiveWriters().of(tmp_path / "photo [2].png") is None
            temporary.unlink()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_folder_is_listed_again_only_after_twenty_times_its_listing_took(tmp_path, monkeypatch):
    """A folder of 100,000 outputs takes about 50 ms to list: listing it at every image of a fast batch would
    cost more than the files. A writer found in a listing is asked again whether it still runs."""
    import subprocess

    from restorecli import files

    listings = []
    real = files._own_host_temporaries
    monkeypatch.setattr(files, "_own_host_temporaries", lambda folder: listings.append(folder) or real(folder))
    now = [100.0]

    def clock():
        now[0] += 0.5  # each reading half a second on: a listing "takes" 0.5 s, so it lasts 10 s
        return now[0]

    writers = files.LiveWriters(clock)
    target = tmp_path / "a.png"
    sleeper = subprocess.Popen(["sleep", "60"])
    temporary = tmp_path / f".a.png.restorecli-{sleeper.pid}@{files._host()}.abcdefgh.part"
    try:
        assert writers.of(target) is None and len(listings) == 1
        temporary.write_bytes(b"half")
        assert writers.of(target) is None and len(listings) == 1  # not seen yet: the listing is reused
        now[0] += 10
        assert writers.of(target) == sleeper.pid and len(listings) == 2
        sleeper.kill()
        sleeper.wait()
        assert writers.of(target) is None and len(listings) == 2  # listed before, but no longer running
    finally:
        sleeper.kill()
        sleeper.wait()


# Images for the strip writers: any layout they take, random pixels, cut into strips at random rows.
