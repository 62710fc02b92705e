"""Facts about the machine a benchmark ran on: numbers mean little without them."""

from __future__ import annotations

import os
import platform
import subprocess


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _package_version(name: str) -> str | None:
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", name], capture_output=True, text=True,
                             timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def _git_commit() -> str | None:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "-C", here, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def machine_facts() -> dict:
    """CPU model, CPU counts, kernel, Python, and the versions of what was compared."""
    return {
        "cpu_model": _cpu_model(),
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "ucspi_tcp": _package_version("ucspi-tcp"),
        "prefork_commit": _git_commit(),
        "load_average": os.getloadavg(),
    }


def repo_relative(text: str) -> str:
    """TEXT with this checkout's own path dropped (``/.../.venv/bin/svscan`` -> ``.venv/bin/svscan``): a
    committed report names commands the way a reader of any checkout runs them."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + "/"
    return text.replace(root, "")
