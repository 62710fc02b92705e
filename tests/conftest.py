"""Shared fixtures: where prefork's commands and Debian's real binaries live."""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
DEBIAN_BIN = Path("/usr/bin")
# What no committed file may name: a developer's checkout or root's home (an absolute path starting with one
# of those two directory names, then a name), or a pytest temporary directory.  test_docs checks every
# committed file with it, test_loadtest_reporting the benchmark reports.
LOCAL_PATH = re.compile(r"(?<![\w.-])/(?:work|root)/[\w.-]|/tmp/pytest[-]")


def ours(name: str) -> str:
    """Path of prefork's console script NAME (installed in the venv running the tests)."""
    path = VENV_BIN / name
    if not path.exists():
        found = shutil.which(name, path=str(VENV_BIN))
        if found is None:
            raise FileNotFoundError(f"prefork command {name} is not installed in {VENV_BIN}")
        return found
    return str(path)


def real(name: str) -> str:
    """Path of Debian's binary NAME; skips the test when the package is not installed."""
    path = DEBIAN_BIN / name
    if not os.access(path, os.X_OK):
        pytest.skip(f"Debian's {name} is not installed (apt-get install ucspi-tcp daemontools)")
    return str(path)


@pytest.fixture
def clean_env() -> dict[str, str]:
    """A small, deterministic environment for commands under test."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"}


# -- tcpserver fixtures: every differential test runs once per implementation -----------------
# ucspi-tcp-ipv6 (0.88 with the IPv6 patch) conflicts with ucspi-tcp as a package, so .ci/run unpacks it
# here instead of installing it: the judge of the IPv6 differential tests.
JUDGE_BIN = Path("/opt/ucspi-tcp-ipv6/usr/bin")


def judge(name: str) -> str:
    """ucspi-tcp-ipv6's NAME; skips the test when the package has not been unpacked."""
    path = JUDGE_BIN / name
    if not os.access(path, os.X_OK):
        pytest.skip(f"ucspi-tcp-ipv6's {name} is not unpacked in {JUDGE_BIN} (see .ci/run)")
    return str(path)


@pytest.fixture(params=["debian", "prefork"])  # tcpserver_harness.IMPLS (it imports this module)
def impl(request) -> str:
    """Which tcpserver a differential test drives (Debian's is skipped where it is not installed)."""
    if request.param == "debian":
        real("tcpserver")
    return request.param


@pytest.fixture
def launch(impl, tmp_path):
    """Start servers of the current implementation; all of them are ended by pid afterwards."""
    from tcpserver_harness import Launcher

    launcher = Launcher(impl, tmp_path)
    yield launcher
    launcher.close()


@pytest.fixture
def prefork(tmp_path):
    """Start prefork tcpservers (prefork-only tests); all of them are ended by pid afterwards."""
    from tcpserver_harness import Launcher

    launcher = Launcher("prefork", tmp_path)
    yield launcher
    launcher.close()


# -- shared-memory files keyed by a directory of the test's -----------------------------------------------------
_SHM_KEYED = ("prefork-svscan", "prefork-supervise", "prefork-multilog")


@pytest.fixture(autouse=True)
def _remove_shm_files_of_tmp_path(request):
    """Remove what this test's svscan, supervise and multilog left in /dev/shm for its own directories.

    Their tables and counter blocks are named after a directory's device and inode, so a process
    killed by the test (or one that never removes its file, as svscan without --stop-services)
    leaves one there.  Autouse fixtures are set up first, so this teardown runs after the test's
    other fixtures have ended its processes.
    """
    if "tmp_path" not in request.fixturenames:
        yield
        return
    root = request.getfixturevalue("tmp_path")  # now: its teardown then comes after this one's
    yield
    remove_shm_files_of(root)


def remove_shm_files_of(root) -> None:
    """Remove the svscan/supervise tables and multilog blocks named after any directory under ROOT
    (for tests whose trees live outside tmp_path: call it before removing the tree)."""
    keys = set()
    for directory, _subdirs, _files in os.walk(root):
        try:
            st = os.stat(directory, follow_symlinks=False)
        except OSError:
            continue
        keys.add(f"{st.st_dev}.{st.st_ino}")
    for key in keys:
        for prefix in _SHM_KEYED:
            try:
                os.unlink(f"/dev/shm/{prefix}.{key}")
            except OSError:
                pass


def fuzz_examples(default: int) -> int:
    """How many examples a property test or fuzz draws: DEFAULT (the CI size), or more when
    PREFORK_FUZZ_EXAMPLES asks for a long run (docs/THREAT_MODEL.md, "Fuzz runs")."""
    try:
        return max(default, int(os.environ.get("PREFORK_FUZZ_EXAMPLES", "0")))
    except ValueError:
        return default


def supervised(d: Path) -> bool:
    """What svok (and runit's sv) checks first: some supervisor holds D/supervise/ok open for reading."""
    try:
        fd = os.open(d / "supervise" / "ok", os.O_WRONLY | os.O_NONBLOCK)
    except OSError:
        return False
    os.close(fd)
    return True
