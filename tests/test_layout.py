"""The package layout: one installed top-level name, and imports that only point one way.

docs/ARCHITECTURE.md draws the map: ``prefork`` (the connection server and
the formats everything shares) <- ``prefork.control`` (supervision and the
logger) <- ``prefork.metrics`` (the collector and the exporter).  A module
may import from its own layer and the ones to its left, never to its right.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = {"prefork": 0, "prefork.control": 1, "prefork.metrics": 2}


def product_files() -> dict[str, Path]:
    """Module name -> file for every product module, each reached through its real folder once."""
    found: dict[str, Path] = {}
    for folder, package in (("prefork", "prefork"), ("control", "prefork.control"), ("metrics", "prefork.metrics")):
        base = ROOT / folder
        for dirpath, dirnames, filenames in os.walk(base):  # os.walk does not follow prefork/control, prefork/metrics
            dirnames[:] = [d for d in dirnames if d != "__pycache__"]
            rel = Path(dirpath).relative_to(base)
            for name in filenames:
                if name.endswith(".py"):
                    parts = [*rel.parts, name[:-3]]
                    if parts[-1] == "__init__":
                        parts.pop()
                    found[".".join([package, *parts])] = Path(dirpath, name)
    return found


def imports_of(path: Path, module: str) -> set[str]:
    """Every module name PATH imports (relative imports resolved against MODULE)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_bytes(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".")[: -node.level] if not path.name == "__init__.py" else module.split(".")
                base = ".".join([*package[: len(package) - (node.level - 1)], *([base] if base else [])])
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names)
    return names


def layer(module: str) -> int | None:
    """The layer MODULE belongs to, or None for modules outside the product."""
    best = None
    for prefix, rank in LAYERS.items():
        if module == prefix or module.startswith(prefix + "."):
            best = rank if best is None or rank > best else best
    return best


def test_the_links_make_the_checkout_importable_as_installed():
    assert os.readlink(ROOT / "prefork" / "control") == "../control"
    assert os.readlink(ROOT / "prefork" / "metrics") == "../metrics"


def test_imports_point_one_way():
    files = product_files()
    assert len(files) > 60, sorted(files)
    wrong = []
    for module, path in sorted(files.items()):
        own = layer(module)
        for name in sorted(imports_of(path, module)):
            top = name.split(".")[0]
            if top in {"control", "metrics", "loadtest", "tests"}:
                wrong.append(f"{module} imports {name} (not a product name)")
            target = layer(name)
            if target is not None and own is not None and target > own:
                wrong.append(f"{module} imports {name}")
    assert wrong == []


def test_metrics_holds_only_what_serves_metrics():
    files = {p.name for p in (ROOT / "metrics").glob("*.py")}
    assert files == {"__init__.py", "collector.py", "exporter.py"}


def test_the_wheel_adds_one_top_level_name(tmp_path):
    """Build the wheel from a copy of the checkout, install it into a fresh venv, compare site-packages."""
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, symlinks=True, ignore=shutil.ignore_patterns(
        ".venv", ".git", "__pycache__", "build", "*.egg-info", ".pytest_cache", "results", ".mypy_cache",
        ".ruff_cache"))
    wheels = tmp_path / "wheels"
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(source)],
                           capture_output=True, text=True, timeout=300)
    if built.returncode and "No matching distribution found for setuptools" in built.stderr:
        pytest.skip("no setuptools>=77 to build with (no package index)")
    assert built.returncode == 0, built.stderr
    (wheel,) = wheels.glob("prefork-*.whl")
    venv = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True, timeout=30).stdout.strip())
    before = set(os.listdir(site))
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                   check=True, timeout=120)
    added = set(os.listdir(site)) - before
    assert added == {"prefork", f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info"}
    package = site / "prefork"
    assert not (package / "control").is_symlink() and (package / "control" / "svscan.py").is_file()
    assert (package / "control" / "log" / "multilog.py").is_file()
    assert (package / "metrics" / "exporter.py").is_file()
    assert not (site / "loadtest").exists()
    # The console scripts name the subpackages; one that needs no third-party import runs.
    assert "prefork.control.svok" in (venv / "bin" / "svok").read_text()
    ran = subprocess.run([str(venv / "bin" / "svok")], capture_output=True, timeout=30)
    assert (ran.returncode, ran.stderr) == (100, b"svok: usage: svok dir\n")
