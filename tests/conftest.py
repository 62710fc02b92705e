"""Shared fixtures: where prefork's commands and Debian's real binaries live."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
DEBIAN_BIN = Path("/usr/bin")


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
