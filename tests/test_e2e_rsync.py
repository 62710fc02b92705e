"""rsync end to end under prefork (docs/SERVICES.md): ``rsync --daemon`` in inetd mode behind prefork's tcpserver.

The tree (``e2e_harness.Tree``) is run by prefork's svscan; ``run`` is the README's tcpserver line with
``/usr/bin/rsync --daemon --config=...`` as the program, ``log/run`` is ``setuidgid nobody multilog t``.
A real ``rsync`` client pulls a module and the trees are compared file by file (type, mode, mtime,
SHA-256, link target).  rsync in inetd mode points its fds 1 and 2 at /dev/null, so its own log goes to
a file (``log file``), and the service's multilog gets tcpserver's lines only.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
from pathlib import Path

import pytest
from e2e_harness import RSYNC, Service, Tree, need, sample, tcpserver_run

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

END = r"tcpserver: end \d+ status "


@pytest.fixture
def tree():
    need(RSYNC)
    with Tree() as t:
        yield t


def source_tree(tree: Tree) -> Path:
    """A module to serve: nested directories, empty and binary files, odd names, a symlink, an executable."""
    src = tree.share("module", files={
        "README": b"served by rsync --daemon under prefork's tcpserver\n",
        "empty.dat": b"",
        "bin/all-bytes.bin": bytes(range(256)) * 4096,  # 1 MiB
        "bin/random.bin": os.urandom(300_000),
        "deep/a/b/c/d/leaf.txt": b"leaf\n",
        "names/with space.txt": b"space\n",
        "names/caf\u00e9 \u00fcml.txt": b"unicode\n",
    })
    (src / "empty-dir").mkdir()
    (src / "bin" / "tool.sh").write_bytes(b"#!/bin/sh\necho tool\n")
    (src / "bin" / "tool.sh").chmod(0o755)
    (src / "link-to-leaf").symlink_to("deep/a/b/c/d/leaf.txt")
    for d in [src, *(p for p in src.rglob("*") if p.is_dir())]:
        d.chmod(0o755)
    return src


def rsync_service(tree: Tree, src: Path, rules: str = "127.0.0.1:allow\n:deny\n") -> Service:
    conf = tree.base / "rsyncd.conf"
    conf.write_text(
        "use chroot = no\n"
        "reverse lookup = no\n"
        f"log file = {tree.base / 'rsyncd.log'}\n"
        "[mod]\n"
        f"    path = {src}\n"
        "    read only = yes\n"
        "    comment = prefork e2e\n"
    )
    svc = tree.service("rsync", tcpserver_run("rsync", "127.0.0.1", 0, f"{RSYNC} --daemon --config={conf}"))
    svc.rules(rules)
    return svc


def rsync(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Debian's rsync client (a clean environment: no RSYNC_* from the caller)."""
    return subprocess.run([RSYNC, *args], capture_output=True, text=True, timeout=timeout,
                          env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"})


def manifest(top: Path) -> dict[str, tuple]:
    """Every entry below TOP: (kind, mode, and for files size, mtime, SHA-256; for links the target)."""
    out = {}
    for p in sorted(top.rglob("*")):
        st = os.lstat(p)
        rel = str(p.relative_to(top))
        if p.is_symlink():
            out[rel] = ("link", os.readlink(p))
        elif p.is_dir():
            out[rel] = ("dir", st.st_mode & 0o7777)
        else:
            out[rel] = ("file", st.st_mode & 0o7777, st.st_size, int(st.st_mtime),
                        hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def test_rsync_client_transfers_a_tree(tree):
    src = source_tree(tree)
    svc = rsync_service(tree, src)
    tree.start()
    port = svc.wait_port()
    dest = tree.base / "dest"

    listing = rsync(f"rsync://127.0.0.1:{port}/")
    assert listing.returncode == 0, listing.stderr
    assert re.fullmatch(r"mod\s+prefork e2e\n", listing.stdout)

    got = rsync("-a", f"rsync://127.0.0.1:{port}/mod/", f"{dest}/")
    assert (got.returncode, got.stderr) == (0, "")
    want = manifest(src)
    assert len(want) == 17  # 9 files and links, 8 directories
    assert manifest(dest) == want

    # a second run sends only what changed
    (src / "deep" / "a" / "b" / "c" / "d" / "leaf.txt").write_bytes(b"leaf, changed\n")
    os.utime(src / "deep" / "a" / "b" / "c" / "d" / "leaf.txt", (1_600_000_000, 1_600_000_000))
    again = rsync("-a", "--stats", f"rsync://127.0.0.1:{port}/mod/", f"{dest}/")
    assert again.returncode == 0, again.stderr
    assert re.search(r"^Number of regular files transferred: 1$", again.stdout, re.M), again.stdout
    assert manifest(dest) == manifest(src)

    lines = svc.wait_count(END, 3)
    oks = [x for x in lines if x.startswith("tcpserver: ok ")]
    assert len(oks) == 3
    assert all(re.fullmatch(rf"tcpserver: ok \d+ 0:127\.0\.0\.1:{port} :127\.0\.0\.1::\d+", x) for x in oks)
    statuses = [int(x.rsplit(" ", 1)[1]) for x in lines if re.match(END, x)]
    assert statuses == [255 << 8, 0, 0]  # rsync ends a module listing with exit 255, a transfer with 0
    daemon_log = (tree.base / "rsyncd.log").read_text()
    assert daemon_log.count("connect from UNDETERMINED (127.0.0.1)") == 3  # tcpserver gave it the client's address
    assert len(re.findall(r"rsync on mod/ from UNDETERMINED \(127\.0\.0\.1\)", daemon_log)) == 2
    m = tree.metrics(svc)
    assert sample(m, "tcpserver_connections_accepted_total", service="rsync") == 3
    assert sample(m, "tcpserver_program_exits_total", service="rsync", exit="zero") == 2


def test_rsync_client_from_a_denied_address_gets_nothing(tree):
    src = source_tree(tree)
    svc = rsync_service(tree, src)
    tree.start()
    port = svc.wait_port()
    dest = tree.base / "dest"
    got = rsync("-a", "--address=127.0.0.2", f"rsync://127.0.0.1:{port}/mod/", f"{dest}/")
    # closed at once (or reset, if the client's first bytes were unread): no greeting, a protocol error
    assert got.returncode in (5, 12), (got.returncode, got.stderr)
    assert "rsync error: " in got.stderr
    assert not dest.exists() or not any(dest.iterdir())
    lines = svc.wait_count(END, 1)
    assert any(re.fullmatch(rf"tcpserver: deny \d+ 0:127\.0\.0\.1:{port} :127\.0\.0\.2::\d+", x) for x in lines)
    assert not (tree.base / "rsyncd.log").exists()  # rsync never ran
