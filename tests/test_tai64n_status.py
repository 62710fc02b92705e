"""TAI64N labels and the 18-byte supervise/status, checked against daemontools' own svstat and supervise."""

from __future__ import annotations

import os
import stat
import subprocess
import time

import psutil
import pytest
from conftest import real
from hypothesis import given
from hypothesis import strategies as st

from prefork import tai64n
from prefork.control import statusfile
from prefork.control.statusfile import Status


def test_label_layout_matches_the_spec_example():
    # docs/CONTRACTS.md, Service status: 40 00 00 00 6b 07 bf 7e 37 61 6b ec 2d 28 00 00 00 75 = pid 10285, up, want up
    raw = bytes.fromhex("400000006b07bf7e37616bec2d2800000075")
    status = statusfile.decode(raw)
    assert status.pid == 10285 and not status.paused and status.want == b"u"
    assert status.seconds == 0x6B07BF7E - 10
    assert statusfile.encode(status) == raw


def test_now_has_daemontools_resolution():
    secs, nano = tai64n.unpack(tai64n.now())
    assert abs(secs - time.time()) < 5
    assert nano % 1000 == 500 and nano < 1_000_000_000


@given(st.integers(0, 2**40), st.integers(0, 999_999_999))
def test_label_round_trip(seconds, nanoseconds):
    label = tai64n.pack(seconds, nanoseconds)
    assert len(label) == 12 and label[0] == 0x40
    assert tai64n.unpack(label) == (seconds, nanoseconds)
    assert tai64n.parse_external(tai64n.external(label)) == label


@pytest.mark.parametrize("text", ["@", "@4000", "@400000006B07BF7E37616BEC", "400000006b07bf7e37616bec0", "@400000006b07bf7e37616bexx"])
def test_malformed_external_labels_are_refused(text):
    assert tai64n.parse_external(text) is None


@given(st.integers(0, 2**32 - 1), st.booleans(), st.sampled_from([b"u", b"d", b"\0", b"x"]))
def test_status_round_trip(pid, paused, want):
    status = Status(tai64n.now(), pid, paused, want)
    data = statusfile.encode(status)
    assert len(data) == 18
    assert statusfile.decode(data) == status
    assert statusfile.decode(data + b"\x01\x02") == status  # runit's 20-byte file reads the same


def test_short_status_is_bad_format():
    with pytest.raises(ValueError, match="bad format"):
        statusfile.decode(b"\0" * 17)


def test_write_replaces_atomically_and_leaves_no_temporary(tmp_path):
    statusfile.write(str(tmp_path), Status(tai64n.now(), 1, False, b"u"))
    first_inode = (tmp_path / "status").stat().st_ino
    statusfile.write(str(tmp_path), Status(tai64n.now(), 2, True, b"d"))
    assert statusfile.read(str(tmp_path)).pid == 2
    assert (tmp_path / "status").stat().st_ino != first_inode  # a new file renamed over, never rewritten in place
    assert not (tmp_path / "status.new").exists()
    assert stat.S_IMODE((tmp_path / "status").stat().st_mode) == 0o644 & ~_umask()


def test_write_failure_leaves_the_old_status(tmp_path):
    statusfile.write(str(tmp_path), Status(tai64n.now(), 7, False, b"u"))
    (tmp_path / "status.new").mkdir()  # the temporary cannot be created
    with pytest.raises(IsADirectoryError):
        statusfile.write(str(tmp_path), Status(tai64n.now(), 8, False, b"u"))
    assert statusfile.read(str(tmp_path)).pid == 7


def _eventually(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / 0.02) + 1):
        if predicate():
            return True
        if time.monotonic() > deadline:
            break
        time.sleep(0.02)
    return False


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.parametrize(
    ("pid", "paused", "want", "down_file", "expected"),
    [
        (1234, False, b"u", False, "up (pid 1234) 7 seconds"),
        (1234, True, b"d", True, "up (pid 1234) 7 seconds, normally down, paused, want down"),
        (0, False, b"u", False, "down 7 seconds, normally up, want up"),
        (0, True, b"d", False, "down 7 seconds, normally up"),
        (0, False, b"\0", True, "down 7 seconds"),
        (99, False, b"\0", False, "up (pid 99) 7 seconds"),
    ],
)
def test_debian_svstat_reads_what_we_write(tmp_path, pid, paused, want, down_file, expected):
    """Differential: daemontools' svstat parses prefork's status bytes (docs/CONTRACTS.md, svstat output)."""
    svstat = real("svstat")
    service = tmp_path / "svc"
    (service / "supervise").mkdir(parents=True)
    if down_file:
        (service / "down").touch()
    os.mkfifo(service / "supervise" / "ok", 0o600)
    ok = os.open(service / "supervise" / "ok", os.O_RDONLY | os.O_NONBLOCK)  # "supervise is running"
    try:
        secs = int(time.time()) - 7
        statusfile.write(str(service / "supervise"), Status(tai64n.pack(secs, 500), pid, paused, want))
        out = subprocess.run([svstat, str(service)], capture_output=True, timeout=30)
    finally:
        os.close(ok)
    line = out.stdout.decode()
    assert out.returncode == 0
    # one second may pass between writing and svstat reading
    assert line in (f"{service}: {expected}\n", f"{service}: {expected.replace('7 seconds', '8 seconds')}\n")


def test_we_read_what_debian_supervise_writes(tmp_path):
    """Differential: the status written by daemontools' supervise decodes to its child's real pid."""
    supervise = real("supervise")
    svc_cmd = real("svc")
    service = tmp_path / "svc"
    service.mkdir()
    (service / "run").write_text("#!/bin/sh\nexec sleep 300\n")
    (service / "run").chmod(0o755)
    proc = subprocess.Popen([supervise, str(service)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        status = None
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                status = statusfile.read(str(service / "supervise"))
            except (OSError, ValueError):
                status = None
            if status is not None and status.pid:
                break
            time.sleep(0.05)
        assert status is not None and status.pid, "supervise did not start the service"
        children = [c.pid for c in psutil.Process(proc.pid).children()]
        assert children == [status.pid]
        assert status.want == b"u" and not status.paused
        assert abs(status.seconds - time.time()) < 10
        subprocess.run([svc_cmd, "-p", str(service)], check=True, timeout=30)  # svc only queues the byte
        assert _eventually(lambda: statusfile.read(str(service / "supervise")).paused)
        subprocess.run([svc_cmd, "-dx", str(service)], check=True, timeout=30)
        proc.wait(timeout=15)
        final = statusfile.read(str(service / "supervise"))
        assert final.pid == 0 and final.want == b"d"
    finally:
        if proc.poll() is None:
            for child in psutil.Process(proc.pid).children():
                child.kill()
            proc.kill()
            proc.wait(5)
