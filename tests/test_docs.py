"""The documents: self-contained, complete for every command and metric, and with links that lead somewhere.

- No committed text file cites notes outside the repository (the section sign citations and the
  design notes they came with) or names a path of a developer's machine (``conftest.LOCAL_PATH``: the
  checkout's or root's home directory, or a pytest temporary directory).  A bare ``/tmp`` or ``/tmp/x``
  in a shell example is fine.
- Every console script of pyproject.toml has a page in docs/reference/ that names it in backquotes.
- Every metric name the collector can emit is listed in docs/reference/metrics.md, and every name
  listed there is one the collector emits.
- Relative links in README.md and docs/ (reference pages included) point to existing files, and a
  ``#fragment`` into a Markdown file names one of its headings.
- A code comment that cites ``docs/CONTRACTS.md, SECTION`` or ``docs/ARCHITECTURE.md, SECTION``
  names a heading that exists.
"""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

import pytest
from conftest import LOCAL_PATH, ROOT

DOCS = ROOT / "docs"
REFERENCE = DOCS / "reference"

# Built from pieces so that this file does not match its own patterns.
SECTION_SIGN = "spec " + "\u00a7"
DESIGN_NOTES = "DESIGN" + ".md"
BINARY_SUFFIXES = {".png", ".jpg", ".gif", ".cdb", ".gz", ".ico"}


def committed_files() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    paths = [ROOT / p for p in out.decode("utf-8", "surrogateescape").split("\0") if p]
    return [p for p in paths if p.suffix not in BINARY_SUFFIXES and p.is_file() and not p.is_symlink()]


def text_of(path: Path) -> str | None:
    data = path.read_bytes()
    if b"\0" in data:
        return None
    return data.decode("utf-8", "replace")


def test_no_external_citations_or_local_paths_in_committed_files():
    problems = []
    for path in committed_files():
        text = text_of(path)
        if text is None:
            continue
        for n, line in enumerate(text.splitlines(), 1):
            where = f"{path.relative_to(ROOT)}:{n}"
            if SECTION_SIGN in line:
                problems.append(f"{where}: cites external notes by section sign: {line.strip()[:100]}")
            if DESIGN_NOTES in line:
                problems.append(f"{where}: cites the external design notes: {line.strip()[:100]}")
            m = LOCAL_PATH.search(line)
            if m:
                problems.append(f"{where}: local path {m.group(0)!r}: {line.strip()[:100]}")
    assert not problems, "\n".join(problems)


def test_local_path_pattern_is_precise():
    assert LOCAL_PATH.search("cd /work" + "/main && make")
    assert LOCAL_PATH.search("see /root" + "/prefork")
    assert LOCAL_PATH.search("/tmp/pytest" + "-of-root/x")
    for fine in ("chmod -t /tmp", "mktemp -d /tmp/x.XXXX", "/var/service", "a" + "/work" + "/b"):
        assert not LOCAL_PATH.search(fine), fine


def console_scripts() -> list[str]:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return sorted(tomllib.load(f)["project"]["scripts"])


def test_every_console_script_has_a_reference_page():
    pages = {p.name: p.read_text() for p in REFERENCE.glob("*.md")}
    missing = [name for name in console_scripts() if not any(f"`{name}`" in text for text in pages.values())]
    assert not missing, f"no page in docs/reference/ names these commands: {missing}"


def emitted_metric_names() -> set[str]:
    """Every family name build_families can produce, as served (counters with _total)."""
    from prefork.metrics import collector

    families = collector.build_families([], [], sources=[("scoreboard", "x", True, 0)], served_logs=[])
    return {f.name + "_total" if f.kind == "counter" else f.name for f in families}


METRIC_ROW = re.compile(r"^\|\s*`((?:tcpserver|supervise|svscan|multilog|prefork_exporter)_[a-z_]+)`\s*\|", re.M)


def test_every_metric_is_documented_and_every_documented_metric_exists():
    text = (REFERENCE / "metrics.md").read_text()
    documented = set(METRIC_ROW.findall(text))
    emitted = emitted_metric_names()
    assert emitted, "the collector produced no families"
    assert not emitted - documented, f"not in docs/reference/metrics.md: {sorted(emitted - documented)}"
    assert not documented - emitted, f"documented but never emitted: {sorted(documented - emitted)}"


def slug(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def headings(path: Path) -> list[str]:
    out, fenced = [], False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("#"):
            out.append(line.lstrip("#").strip())
    return out


def linked_documents() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.glob("*.md")), *sorted(REFERENCE.glob("*.md"))]


LINK = re.compile(r"\]\(([^)\s]+)\)")


@pytest.mark.parametrize("doc", linked_documents(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_lead_to_existing_files_and_headings(doc):
    problems = []
    text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.S)
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        file_part, _, fragment = target.partition("#")
        dest = (doc.parent / file_part).resolve() if file_part else doc
        if not dest.exists():
            problems.append(f"{target}: no such file")
            continue
        if fragment and dest.suffix == ".md" and fragment not in {slug(h) for h in headings(dest)}:
            problems.append(f"{target}: no heading with anchor #{fragment} in {dest.relative_to(ROOT)}")
    assert not problems, f"{doc.relative_to(ROOT)}:\n" + "\n".join(problems)


CITATION = re.compile(r"docs/(CONTRACTS|ARCHITECTURE)\.md, \"?([^\n\"]+)")


def test_section_citations_in_code_name_existing_headings():
    sections = {name: [h.lower() for h in headings(DOCS / f"{name}.md")] for name in ("CONTRACTS", "ARCHITECTURE")}
    problems = []
    for path in committed_files():
        if path.suffix != ".py" or path.name == "test_docs.py":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            for doc, rest in CITATION.findall(line):
                if not any(rest.lower().startswith(h) for h in sections[doc]):
                    problems.append(f"{path.relative_to(ROOT)}:{n}: docs/{doc}.md has no section {rest!r}")
    assert not problems, "\n".join(problems)
