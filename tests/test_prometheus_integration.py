"""Integration: a real Prometheus server scrapes prefork and stores exactly what happened.

Started per test, all on 127.0.0.1 in tmp_path: a prefork tcpserver (``-H -R -l0``, port 0) and a
prefork svscan tree of two ``sleep`` services, each serving its metrics with ``--metrics 127.0.0.1:0``
(the prefork-exporter child logs its port on the server's stderr), and Debian's
``/usr/bin/prometheus`` (skipped when absent) scraping them every second with contrib/prometheus's
rules loaded.  The test makes N connections and M restarts (``svc -k``), then asks Prometheus' HTTP
API for the counters it stored (instant queries of the counters, not rates).  A second tcpserver,
whose rules file does not exist, drops every connection: its dropped counter, the recording rule's
ratio and the PreforkConnectionsDropped alert (pending) are checked too.

Every wait is bounded by a deadline and a step count.  Every process is ended by pid in a finally
block: Prometheus and svscan with SIGTERM first (so that svscan removes its table from /dev/shm), the
services and exporter children by SIGKILL after; the tcpservers through the harness.

Marked ``integration`` (real servers, ~10-15 s): ``pytest -m "not integration"`` leaves it out.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import psutil
import pytest
from conftest import ours
from tcpserver_harness import QUIET, TAG_VAR, descendants, kill_procs, tagged, talk, wait_until

from prefork.control import servicetable_read, statusfile

pytestmark = pytest.mark.integration

PROMETHEUS = "/usr/bin/prometheus"
ROOT = Path(__file__).resolve().parent.parent
RULE_FILES = [ROOT / "contrib" / "prometheus" / "prefork.rules.yml", ROOT / "contrib" / "prometheus" / "prefork.alerts.yml"]
CONNECTIONS = 7
DROPPED = 4
RESTARTS = 3
LISTENING = re.compile(r"^prefork-exporter: listening on http://127\.0\.0\.1:(\d+)/metrics$", re.M)


def free_port() -> int:
    """A port free on 127.0.0.1 right now (Prometheus cannot be told to take port 0; a clash is retried)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def end(proc: subprocess.Popen | None, grace: float = 5.0) -> None:
    """SIGTERM PROC, SIGKILL it after GRACE seconds, reap it."""
    if proc is None:
        return
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)


# -- the svscan tree ---------------------------------------------------------------------------------
def make_service(root: Path, name: str) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "run").write_text("#!/bin/sh\nexec sleep 300\n")
    (d / "run").chmod(0o755)
    return d


def service_pid(d: Path) -> int:
    try:
        return statusfile.read(str(d / "supervise")).pid
    except (OSError, ValueError):
        return 0


def wait_running(d: Path, other_than: int = 0, timeout: float = 10.0) -> int:
    """The pid of D's ./run once it runs and is not OTHER_THAN (a service restarted has a new pid)."""

    def running() -> int:
        pid = service_pid(d)
        if pid in (0, other_than):
            return 0
        with contextlib.suppress(psutil.Error):
            if psutil.Process(pid).name() == "sleep":  # exec'd: a svc -k now kills the service itself
                return pid
        return 0

    pid = wait_until(running, timeout)
    assert pid, f"{d} not running a new sleep within {timeout} s (status pid {service_pid(d)})"
    return int(pid)


def metrics_port(read_stderr) -> int:
    """The port of the exporter a server started for --metrics 127.0.0.1:0 (it logs it on the server's stderr)."""
    found = wait_until(lambda: LISTENING.search(read_stderr()), 15)
    assert found, f"no exporter listening line in:\n{read_stderr()}"
    return int(found[1])


# -- Prometheus' HTTP API ----------------------------------------------------------------------------
class Prometheus:
    """A Prometheus server of the test: its process, port and log."""

    def __init__(self, tmp_path: Path, targets: list[str]) -> None:
        self.dir = tmp_path / "prometheus"
        self.dir.mkdir()
        self.config = self.dir / "prometheus.yml"
        rules = "".join(f"  - {p}\n" for p in RULE_FILES)
        self.config.write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
            f"rule_files:\n{rules}"
            "scrape_configs:\n  - job_name: prefork\n    static_configs:\n"
            f"      - targets: [{', '.join(json.dumps(t) for t in targets)}]\n"
        )
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.log = self.dir / "prometheus.log"

    def start(self, attempts: int = 3) -> None:
        """Start the server and wait until it is ready; another port if the chosen one was taken meanwhile."""
        for attempt in range(attempts):
            self.port = free_port()
            argv = [PROMETHEUS, f"--config.file={self.config}", f"--storage.tsdb.path={self.dir / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=info"]
            with open(self.log, "ab") as log:
                self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=self.dir,
                                             env={"PATH": "/usr/bin:/bin", "HOME": str(self.dir)})
            if wait_until(lambda: self.proc.poll() is not None or self.ready(), 20, 0.05) and self.ready():
                return
            end(self.proc)
            if "address already in use" not in self.log.read_text() or attempt == attempts - 1:
                break
        raise AssertionError(f"prometheus did not become ready; log:\n{self.log.read_text()[-4000:]}")

    def get(self, path: str, **params: str) -> dict:
        url = f"http://127.0.0.1:{self.port}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=5) as resp:
            return json.loads(resp.read())

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    def query(self, expr: str) -> dict[frozenset, float]:
        """An instant query: {frozenset of label pairs: value}."""
        data = self.get("/api/v1/query", query=expr)
        assert data["status"] == "success", data
        return {frozenset(r["metric"].items()): float(r["value"][1]) for r in data["data"]["result"]}

    def value(self, expr: str) -> float | None:
        """The value of an instant query that yields at most one series."""
        result = self.query(expr)
        assert len(result) <= 1, result
        return next(iter(result.values()), None)

    def wait_value(self, expr: str, expected: float, timeout: float) -> float | None:
        """Poll EXPR until it equals EXPECTED (bounded); the last value seen."""
        seen: list[float | None] = [None]

        def check() -> bool:
            seen[0] = self.value(expr)
            return seen[0] == expected

        wait_until(check, timeout, 0.25)
        return seen[0]


# == the test ========================================================================================
@pytest.mark.timeout(120)
def test_prometheus_stores_the_connections_and_restarts_prefork_counted(tmp_path, prefork):
    if not os.access(PROMETHEUS, os.X_OK):
        pytest.skip("Debian's prometheus is not installed (apt-get install prometheus)")
    root = tmp_path / "service"
    root.mkdir()
    app = make_service(root, "app")
    idle = make_service(root, "idle")
    tag = f"prom-{uuid.uuid4().hex}"
    svscan = None
    prom: Prometheus | None = None
    services: list[psutil.Process] = []
    try:
        metrics = ["--metrics", "127.0.0.1:0"]
        server = prefork([*QUIET, *metrics, "--name", "web"], ["/bin/echo", "hello"])
        # A server whose rules file cannot be read: tcpserver drops every connection (PreforkConnectionsDropped).
        broken = prefork([*QUIET, *metrics, "--name", "rules", "-x", str(tmp_path / "gone.cdb")], ["/bin/echo", "hello"])
        svscan_err = tmp_path / "svscan.err"
        with open(svscan_err, "wb") as err:
            svscan = subprocess.Popen([ours("svscan"), *metrics, str(root)], stdin=subprocess.DEVNULL, stdout=err,
                                      stderr=err, env={"PATH": "/usr/bin:/bin", TAG_VAR: tag}, start_new_session=True)
        first = {d: wait_running(d) for d in (app, idle)}
        assert wait_until(lambda: any(os.path.exists(p) for p in servicetable_read.paths(str(root))), 10)
        ports = {name: metrics_port(read) for name, read in
                 (("web", server.stderr), ("rules", broken.stderr), ("svscan", svscan_err.read_text))}
        targets = {name: f"127.0.0.1:{port}" for name, port in ports.items()}

        prom = Prometheus(tmp_path, list(targets.values()))
        prom.start()

        # Prometheus' first scrape comes a few seconds after it starts (target discovery is batched every 5 s);
        # the traffic comes after it, so that the rates of the rules see it.
        up = 'count(up{job="prefork"} == 1)'
        assert prom.wait_value(up, len(targets), 15) == len(targets), prom.log.read_text()[-3000:]
        for _ in range(CONNECTIONS):
            assert talk(server.port)[0] == b"hello\n"
        for _ in range(DROPPED):
            assert talk(broken.port)[0] == b""
        pid = first[app]
        for _ in range(RESTARTS):
            subprocess.run([ours("svc"), "-k", str(app)], check=True, timeout=10, env={"PATH": "/usr/bin:/bin"})
            pid = wait_running(app, other_than=pid)
        assert service_pid(idle) == first[idle]
        services = [psutil.Process(service_pid(d)) for d in (app, idle)]

        accepted = 'tcpserver_connections_accepted_total{job="prefork",service="web"}'
        app_restarts = f'supervise_restarts_total{{job="prefork",directory="{root}",service="app"}}'
        assert prom.wait_value(accepted, CONNECTIONS, 25) == CONNECTIONS, prom.query("{job='prefork'}")
        assert prom.wait_value(app_restarts, RESTARTS, 15) == RESTARTS

        # What Prometheus stored, instant queries of the counters.
        assert prom.value(accepted) == CONNECTIONS
        assert prom.value('tcpserver_program_exits_total{service="web",exit="zero"}') == CONNECTIONS
        assert prom.value('tcpserver_connection_duration_seconds_count{service="web"}') == CONNECTIONS
        assert prom.value('tcpserver_connections_denied_total{service="web"}') == 0
        assert prom.value('tcpserver_connections_dropped_total{service="web"}') == 0
        assert prom.value(app_restarts) == RESTARTS
        assert prom.value(f'supervise_starts_total{{directory="{root}",service="app"}}') == RESTARTS + 1
        assert prom.value(f'supervise_restarts_total{{directory="{root}",service="idle"}}') == 0
        assert prom.value(f'supervise_last_exit_signal{{directory="{root}",service="app"}}') == signal.SIGKILL
        assert prom.query(f'supervise_up{{directory="{root}"}}') == {
            frozenset({"__name__": "supervise_up", "job": "prefork", "instance": targets["svscan"],
                       "directory": str(root), "service": name}.items()): 1.0
            for name in ("app", "idle")
        }
        assert prom.value(up) == len(targets)
        assert prom.value(f'tcpserver_connections_accepted_total{{instance="{targets["web"]}"}}') == CONNECTIONS
        # Counters never went backwards between scrapes (Prometheus would have taken that for a reset).
        assert prom.query('resets(tcpserver_connections_accepted_total[5m]) > 0') == {}
        assert prom.query('resets(supervise_restarts_total[5m]) > 0') == {}
        assert prom.query("prefork_exporter_source_up != 1") == {}

        # contrib/prometheus's rules load and evaluate in a real server.
        groups = prom.get("/api/v1/rules")["data"]["groups"]
        assert {g["name"] for g in groups} == {"prefork.rules", "prefork.alerts"}
        assert all(r["health"] == "ok" for g in groups for r in g["rules"]), groups
        assert prom.wait_value(f'directory:supervise_services_up:sum{{directory="{root}"}}', 2, 10) == 2
        assert prom.value(f'directory:supervise_services_down:sum{{directory="{root}"}}') == 0
        assert prom.value('service:tcpserver_connections_active:ratio_limit{service="web"}') == 0
        # The unreadable rules file trips PreforkConnectionsDropped (pending for its minute); nothing else fires
        # (3 restarts are not "more than 3"; a service down for a second can only be pending).
        dropped = 'tcpserver_connections_dropped_total{job="prefork",service="rules"}'
        assert prom.wait_value(dropped, DROPPED, 10) == DROPPED
        assert prom.value('tcpserver_connections_accepted_total{service="rules"}') == DROPPED
        assert prom.wait_value('service:tcpserver_connections_dropped:ratio_rate5m{service="rules"}', 1, 10) == 1
        assert prom.value('service:tcpserver_connections_dropped:ratio_rate5m{service="web"}') == 0

        def alerts() -> list[tuple[str, str, str]]:
            return sorted((a["labels"]["alertname"], a["labels"].get("service", ""), a["state"])
                          for a in prom.get("/api/v1/alerts")["data"]["alerts"])

        tripped = {("PreforkConnectionsDropped", "rules", "pending"), ("PreforkConnectionsDropped", "rules", "firing")}
        assert wait_until(lambda: tripped & set(alerts()), 10), alerts()
        assert not [a for a in alerts() if a[2] == "firing" and a not in tripped], alerts()
    finally:
        end(prom.proc if prom is not None else None)
        if svscan is not None:
            services += [p for p in descendants(svscan.pid) if p not in services]
            end(svscan)
            kill_procs(services + tagged(tag))
            for path in servicetable_read.paths(str(root)):  # left behind only if svscan had to be SIGKILLed
                with contextlib.suppress(OSError, servicetable_read.ServiceTableError):
                    if servicetable_read.read(path).owner_pid == svscan.pid:
                        os.unlink(path)

