"""prefork/shmfile.py: shared-memory files appear whole, and a file planted in /dev/shm never receives our writes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from prefork import scoreboard as sb
from prefork import shmfile
from prefork.control import servicetable as st
from prefork.control.log import logcounters as lc

VICTIM_TEXT = b"root:x:0:0:precious\n"


def _victim(tmp_path: Path) -> Path:
    victim = tmp_path / "victim"
    victim.write_bytes(VICTIM_TEXT)
    return victim


def test_create_fills_and_renames(tmp_path):
    path = tmp_path / "block"
    fd, mm, identity = shmfile.create(str(path), 4096, lambda m: m.__setitem__(slice(0, 4), b"HEAD"))
    try:
        assert path.read_bytes()[:4] == b"HEAD" and path.stat().st_size == 4096
        assert (path.stat().st_dev, path.stat().st_ino) == identity
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
        assert os.get_inheritable(fd) is False
        assert sorted(p.name for p in tmp_path.iterdir()) == ["block"]  # no temporary left
    finally:
        mm.close()
        os.close(fd)


def test_mode_is_0644_whatever_the_umask(tmp_path):
    old = os.umask(0o077)
    try:
        fd, mm, _ = shmfile.create(str(tmp_path / "block"), 4096, lambda m: None)
    finally:
        os.umask(old)
    mm.close()
    os.close(fd)
    assert stat.S_IMODE((tmp_path / "block").stat().st_mode) == 0o644


def test_a_failing_fill_leaves_nothing(tmp_path):
    def fill(mm: object) -> None:
        raise RuntimeError("header does not fit")

    with pytest.raises(RuntimeError):
        shmfile.create(str(tmp_path / "block"), 4096, fill)
    assert list(tmp_path.iterdir()) == []


def _planted_at_temporary_name(tmp_path: Path, name: str) -> Path:
    victim = _victim(tmp_path)
    os.symlink(victim, tmp_path / f"{name}.new.{os.getpid()}")
    return victim


CREATORS = {
    "scoreboard": lambda path: sb.ScoreboardFile(path, 2, 10, os.getpid(), "svc"),
    "service_table": lambda path: st.ServiceTable.create(path, 4, st.KIND_SVSCAN, "/service"),
    "multilog_counters": lambda path: lc.LogCounters.create(path, "/var/log/x"),
}
MAGICS = {"scoreboard": sb.MAGIC, "service_table": st.MAGIC, "multilog_counters": lc.MAGIC}


@pytest.mark.parametrize("kind", sorted(CREATORS))
def test_a_symlink_planted_at_the_temporary_name_gets_none_of_our_bytes(tmp_path, kind):
    """/dev/shm is everybody's: a symlink named like our next temporary file must not make a root-run
    server truncate and overwrite the file it points to."""
    victim = _planted_at_temporary_name(tmp_path, "shm")
    made = CREATORS[kind](str(tmp_path / "shm"))
    assert victim.read_bytes() == VICTIM_TEXT
    path = tmp_path / "shm"
    assert not path.is_symlink() and path.read_bytes().startswith(MAGICS[kind])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shm", "victim"]
    del made


@pytest.mark.parametrize("kind", sorted(CREATORS))
def test_a_symlink_at_the_final_name_is_replaced_not_followed(tmp_path, kind):
    victim = _victim(tmp_path)
    os.symlink(victim, tmp_path / "shm")
    CREATORS[kind](str(tmp_path / "shm"))
    assert victim.read_bytes() == VICTIM_TEXT
    assert not (tmp_path / "shm").is_symlink()


def test_unlink_if_same_spares_a_newer_file(tmp_path):
    path = tmp_path / "block"
    fd, mm, identity = shmfile.create(str(path), 4096, lambda m: None)
    mm.close()
    os.close(fd)
    fd2, mm2, identity2 = shmfile.create(str(path), 4096, lambda m: None)  # a newer owner renamed over it
    mm2.close()
    os.close(fd2)
    assert identity2 != identity
    shmfile.unlink_if_same(str(path), identity)
    assert path.exists()
    shmfile.unlink_if_same(str(path), identity2)
    assert not path.exists()
    shmfile.unlink_if_same(str(path), identity2)  # already gone: nothing to say


def test_unlink_if_same_never_removes_what_a_symlink_points_to(tmp_path):
    victim = _victim(tmp_path)
    link = tmp_path / "block"
    os.symlink(victim, link)
    st_victim = victim.stat()
    shmfile.unlink_if_same(str(link), (st_victim.st_dev, st_victim.st_ino))
    assert victim.read_bytes() == VICTIM_TEXT and link.is_symlink()


@pytest.mark.parametrize(("make", "reason"), [
    (lambda d: os.mkfifo(d / "x"), "not a regular file"),
    (lambda d: (d / "x").mkdir(), "is a directory"),
    (lambda d: (d / "x").write_bytes(b"abc"), "truncated (3 bytes)"),
    (lambda d: (d / "x").write_bytes(b""), "truncated (0 bytes)"),
], ids=["fifo", "directory", "short", "empty"])
def test_map_regular_refuses_what_is_no_shared_memory_file(tmp_path, make, reason):
    make(tmp_path)
    with pytest.raises(ValueError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        shmfile.map_regular(str(tmp_path / "x"), 16)


def test_map_regular_refuses_a_device():
    with pytest.raises(ValueError, match="not a regular file"):
        shmfile.map_regular("/dev/zero", 16)


def test_map_regular_maps_a_file(tmp_path):
    (tmp_path / "x").write_bytes(b"0123456789abcdef!")
    mm, size = shmfile.map_regular(str(tmp_path / "x"), 16)
    try:
        assert (size, mm[:17]) == (17, b"0123456789abcdef!")
    finally:
        mm.close()
    with pytest.raises(FileNotFoundError):
        shmfile.map_regular(str(tmp_path / "missing"), 16)


# -- modes -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", [0o600, 0o640, 0o644])
def test_mode_is_the_one_asked_whatever_the_umask(tmp_path, mode):
    old = os.umask(0o000)
    try:
        fd, mm, _ = shmfile.create(str(tmp_path / "block"), 4096, lambda m: None, mode=mode)
    finally:
        os.umask(old)
    mm.close()
    os.close(fd)
    assert stat.S_IMODE((tmp_path / "block").stat().st_mode) == mode


@pytest.mark.parametrize("mode", [0o666, 0o646, 0o664, 0o4755])
def test_a_mode_that_lets_others_write_is_refused(tmp_path, mode):
    with pytest.raises(ValueError):
        shmfile.create(str(tmp_path / "block"), 4096, lambda m: None, mode=mode)
    assert list(tmp_path.iterdir()) == []


def test_group_is_set_before_the_file_appears(tmp_path):
    gid = 65534 if os.getuid() == 0 else os.getgid()
    seen = []
    fd, mm, _ = shmfile.create(str(tmp_path / "block"), 4096,
                               lambda m: seen.append(os.stat(tmp_path / f"block.new.{os.getpid()}").st_gid),
                               mode=0o640, group=gid)
    mm.close()
    os.close(fd)
    assert seen == [gid] and (tmp_path / "block").stat().st_gid == gid


# -- readers: bounded mappings, descriptors -------------------------------------------------------------
def test_map_regular_maps_at_most_max_size(tmp_path):
    path = tmp_path / "x"
    path.write_bytes(b"head")
    os.truncate(path, 1 << 30)  # 1 GB, sparse
    mm, size = shmfile.map_regular(str(path), 4, 4096)
    try:
        assert (size, len(mm), mm[:4]) == (1 << 30, 4096, b"head")
    finally:
        mm.close()


def test_map_regular_reads_a_descriptor_it_leaves_open(tmp_path):
    path = tmp_path / "x"
    path.write_bytes(b"0123456789abcdef")
    fd = shmfile.open_source(str(path))
    try:
        os.chmod(path, 0)
        path.rename(tmp_path / "y")  # neither the name nor the mode matters once it is open
        mm, size = shmfile.map_regular(str(path), 16, fd=fd)
        assert (size, mm[:]) == (16, b"0123456789abcdef")
        mm.close()
        os.fstat(fd)  # still open
    finally:
        os.close(fd)


@pytest.mark.parametrize(("text", "shown"), [
    ("web", "web"), ("caf\u00e9", "caf\u00e9"), ("a\nb", "a?b"), ("a\x1b[2Jb", "a?[2Jb"), ("\x7f\x85\u2028", "???"),
    ("raw\udcff", "raw\udcff"),
])
def test_printable(text, shown):
    assert shmfile.printable(text) == shown


# -- read_file: the readers' one shape ------------------------------------------------------------------
class _Refused(Exception):
    pass


def _seen(mm, size):
    return bytes(mm), size


def test_read_file_parses_at_most_max_size(tmp_path):
    (tmp_path / "f").write_bytes(b"HEAD" + bytes(range(100)))
    data, size = shmfile.read_file(str(tmp_path / "f"), None, _seen, _Refused, min_size=4, max_size=10)
    assert data == b"HEAD" + bytes(range(6)) and size == 104


def test_read_file_maps_what_the_header_calls_for(tmp_path):
    (tmp_path / "f").write_bytes(b"\x06" + b"abcdefghij")

    def extent(mm, size):
        need = mm[0]
        if need > size:
            raise _Refused(f"truncated, the header says {need}")
        return need

    assert shmfile.read_file(str(tmp_path / "f"), None, _seen, _Refused, min_size=1, max_size=1,
                             extent=extent) == (b"\x06abcde", 11)
    (tmp_path / "f").write_bytes(b"\x60abc")
    with pytest.raises(_Refused, match="^truncated, the header says 96$"):
        shmfile.read_file(str(tmp_path / "f"), None, _seen, _Refused, min_size=1, max_size=1, extent=extent)


@pytest.mark.parametrize(("make", "reason"), [
    (lambda p: None, "file does not exist"), (lambda p: p.mkdir(), "is a directory"),
    (lambda p: p.write_bytes(b"ab"), "truncated (2 bytes)"), (lambda p: os.mkfifo(p), "not a regular file"),
])
def test_read_file_raises_only_the_readers_error(tmp_path, make, reason):
    make(tmp_path / "f")
    with pytest.raises(_Refused) as caught:
        shmfile.read_file(str(tmp_path / "f"), None, _seen, _Refused, min_size=4, max_size=8)
    assert reason in str(caught.value) and "\n" not in str(caught.value)


def test_read_file_can_leave_os_errors_to_its_caller(tmp_path):
    with pytest.raises(FileNotFoundError):
        shmfile.read_file(str(tmp_path / "f"), None, _seen, _Refused, min_size=4, max_size=8, keep_os_errors=True)
    (tmp_path / "f").write_bytes(b"ab")
    with pytest.raises(_Refused, match=r"^truncated \(2 bytes\)$"):
        shmfile.read_file(str(tmp_path / "f"), None, _seen, _Refused, min_size=4, max_size=8, keep_os_errors=True)


def test_read_file_reads_a_descriptor_it_leaves_open_and_closes_its_mapping(tmp_path):
    (tmp_path / "f").write_bytes(b"HEADtail")
    fd = shmfile.open_source(str(tmp_path / "f"))
    kept = []
    try:
        os.unlink(tmp_path / "f")  # only the descriptor reaches it now
        assert shmfile.read_file("gone", fd, lambda mm, size: kept.append(mm) or bytes(mm), _Refused,
                                 min_size=4, max_size=64) == b"HEADtail"
        assert kept[0].closed
        os.fstat(fd)  # still open
    finally:
        os.close(fd)
