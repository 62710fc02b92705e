"""What every benchmark does with its results: one results folder per run, the report's shared parts, --publish.

A run writes its JSON, its markdown report and its chart into a folder of its own
(``loadtest/results/NAME-TIMESTAMP/``, or ``--out DIR``; loadtest/results/ is not in git), so a trial run
or a test never changes what the repository publishes.  Only ``--publish`` also writes the committed report
and chart (``--publish-dir``, default where they are committed).  ``--render JSON`` measures nothing: it
rebuilds the report and chart next to that JSON (and publishes them with ``--publish``).

The report's shared parts are built here too: the reproduce command (spelled as a reader at the
repository root types it), the machine section and tables, so every report says them the same way.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from loadtest.machine import repo_relative

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def stop_on_sigterm() -> None:
    """A benchmark's SIGTERM becomes SystemExit, which unwinds through its ``finally`` blocks: the servers
    it started are stopped and its temporary files removed."""
    import signal

    signal.signal(signal.SIGTERM, _exit_on_sigterm)


@dataclass(frozen=True)
class Bench:
    """One benchmark's outputs: NAME names its results folder and JSON; REPORT and CHART are file names, written
    into the results folder and, with --publish, into PUBLISH_DIR; RENDER and DRAW build them from the JSON."""

    name: str
    report: str
    chart: str
    render: Callable[[dict], str]
    draw: Callable[[dict, Path], object]
    publish_dir: Path = HERE

    def add_options(self, ap: argparse.ArgumentParser) -> None:
        ap.add_argument("--out", metavar="DIR", default=None,
                        help=f"results folder for the JSON, report and chart (default loadtest/results/{self.name}-TIMESTAMP)")
        ap.add_argument("--publish", action="store_true",
                        help=f"also write the committed {repo_relative(str(self.publish_dir / self.report))} and "
                             f"{self.chart}")
        ap.add_argument("--publish-dir", metavar="DIR", default=str(self.publish_dir),
                        help="where --publish writes (default: where they are committed)")
        ap.add_argument("--render", metavar="JSON", default=None,
                        help="measure nothing: rebuild the report and chart next to a results file of this benchmark")

    def folder(self, args: argparse.Namespace) -> Path:
        return Path(args.out) if args.out else RESULTS / time.strftime(f"{self.name}-%Y%m%d-%H%M%S")

    def write(self, data: dict, args: argparse.Namespace, folder: Path | None = None) -> Path:
        """The JSON (unless FOLDER already holds it), report and chart in the results folder; with --publish, the
        report and chart also in --publish-dir.  Returns the folder."""
        if folder is None:
            folder = self.folder(args)
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{self.name}.json"
            path.write_text(json.dumps(data, indent=1) + "\n")
            log(f"wrote {path}")
        chart = self._write_chart(data, folder)  # first: a report may say whether there is a chart
        written = [self._write_report(data, folder)]
        if args.publish:
            target = Path(args.publish_dir)
            target.mkdir(parents=True, exist_ok=True)
            written.append(shutil.copyfile(written[0], target / self.report))
            if chart is not None:
                written.append(shutil.copyfile(chart, target / self.chart))
        for path in written[1:]:
            log(f"wrote {path}")
        return folder

    def main(self, args: argparse.Namespace, benchmark: Callable[[argparse.Namespace], dict],
             summary: Callable[[dict], object], errors: tuple[type[Exception], ...], torn_down: str) -> int:
        """A benchmark's main() once ARGS are parsed: --render, or the run, its printed SUMMARY and its outputs.

        For benchmarks that tear down what they start in ``finally`` blocks: SIGTERM becomes SystemExit
        while it runs (the handler before is restored after, since main() may run in a test process), one of
        ERRORS ends it with one line and 1, ^C with TORN_DOWN and 130.
        """
        import signal

        if args.render:
            return self.render_only(args)
        previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
        try:
            data = benchmark(args)
        except errors as e:
            log(f"loadtest.{self.name}: error: {e}")
            return 1
        except KeyboardInterrupt:
            log(f"loadtest.{self.name}: interrupted; {torn_down}")
            return 130
        finally:
            signal.signal(signal.SIGTERM, previous)
        summary(data)
        self.write(data, args)
        return 0

    def render_only(self, args: argparse.Namespace) -> int:
        """--render JSON: rebuild the report and chart beside it (and publish them with --publish)."""
        src = Path(args.render)
        self.write(json.loads(src.read_text()), args, src.parent)
        return 0

    def _write_report(self, data: dict, folder: Path) -> Path:
        path = folder / self.report
        path.write_text(self.render(data))
        log(f"wrote {path}")
        return path

    def _write_chart(self, data: dict, folder: Path) -> Path | None:
        """The chart, or None (said once) where matplotlib, the ``bench`` extra, is not installed."""
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            log("no chart: matplotlib is not installed (pip install -e '.[bench]')")
            return None
        path = folder / self.chart
        self.draw(data, path)
        log(f"wrote {path}")
        return path


def python_command() -> str:
    """The interpreter as a user at the repository root would type it (`.venv/bin/python` when it is the venv)."""
    exe = Path(sys.executable)
    try:
        return str(exe.relative_to(ROOT))
    except ValueError:
        return str(exe)


def reproduce_command(module: str, settings: Sequence[str], publish: bool) -> str:
    """``python -m MODULE SETTINGS...`` with every setting spelled out, so the line reruns this exact benchmark
    even if defaults change; ``--publish`` when the run was published (--out and --publish-dir are left out).
    A binary of this checkout is spelled from its root, so a committed report names no local path."""
    return repo_relative(shlex.join([python_command(), "-m", module, *settings, *(["--publish"] if publish else [])]))


def _loads(values: Iterable[float]) -> str:
    return " ".join(f"{x:.2f}" for x in values)


def machine_section(m: dict, load_end: Iterable[float], versions: str, *, kernel_extra: str = "",
                    extra: Sequence[str] = ()) -> list[str]:
    """``## Machine``: CPU, kernel and Python, load average at start and end, VERSIONS (what was compared and
    prefork's commit), then EXTRA lines."""
    return ["## Machine", "",
            f"- CPU: {m['cpu_model']}, nproc {m['nproc']}",
            f"- kernel {m['kernel']}, Python {m['python']}{kernel_extra}",
            f"- load average at start {_loads(m.get('load_average', ()))}, at end {_loads(load_end)}",
            f"- {versions}, prefork commit {m.get('prefork_commit') or 'unknown'}",
            *(f"- {line}" for line in extra), ""]


def reproduce_section(command: str, ran: dict[str, str] | None = None, title: str = "Commands run:") -> list[str]:
    """``## Reproduce``: the command in a code block, then TITLE and each of RAN (name: command line) with this
    checkout's path cut out."""
    out = ["## Reproduce", "", "```", command, "```", ""]
    if ran:
        out += [title, ""] + [f"- {name}: `{repo_relative(cmd)}`" for name, cmd in ran.items()] + [""]
    return out


def table(header: Sequence[str], rows: Iterable[Sequence[object]], left: int = 1) -> list[str]:
    """A markdown table: the first LEFT columns left-aligned (names), the others right-aligned (numbers)."""
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * left + "---:|" * (len(header) - left)]
    return out + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def pyplot():
    """matplotlib.pyplot drawing to files only (no display needed); ImportError without the ``bench`` extra."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def finish_chart(fig, legend_ax, title: str, path: Path, bottom: float = 0.07, **legend: object) -> Path:
    """The charts' common end: LEGEND_AX's legend in one row under the panels, TITLE above, saved to PATH."""
    handles, names = legend_ax.get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=len(names), frameon=False, **legend)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, bottom, 1, 1))
    fig.savefig(path, dpi=100)
    pyplot().close(fig)
    return path
