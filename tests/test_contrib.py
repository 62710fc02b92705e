"""contrib/: what an operator copies works as shipped.

Run scripts are executable and parse (``sh -n``); each service template's
tcpserver command line, captured by running the template with a recording
stand-in for ``tcpserver`` on PATH, parses with prefork's own tcpserver
parser and means what its comments say; the log scripts really log (as
nobody); the systemd unit has the stop semantics and the socket-activated
pair serves one IPv4 socket with tcpserver (``systemd-analyze verify``
where present); the Dockerfile's entrypoint exists and is executable; the
Kubernetes manifests parse and agree with each other (``kubectl kustomize``
where present); and the Kubernetes example tree runs under the container
entrypoint as PID 1 of a PID namespace (loopback ports instead of the
manifests' ones), serves its greeting and metrics, and stops cleanly.
"""

from __future__ import annotations

import configparser
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
from conftest import ROOT, VENV_BIN, ours, remove_shm_files_of

CONTRIB = ROOT / "contrib"
SERVICES = CONTRIB / "services"
KUBE = CONTRIB / "kubernetes"
CONTAINER = CONTRIB / "container"
UNIT = CONTRIB / "systemd" / "prefork-svscan.service"
ECHO_SOCKET = CONTRIB / "systemd" / "prefork-echo.socket"  # socket activation (prefork/activation.py)
ECHO_SERVICE = CONTRIB / "systemd" / "prefork-echo.service"
TEMPLATES = ("vsftpd", "rsync", "qmail-smtpd", "axfrdns")
OURS = ("prometheus", "grafana")  # contrib/ subdirectories written elsewhere


def _scripts() -> list[Path]:
    """Every file of contrib/ (ours) that is meant to be executed: run, log/run, programs, the entrypoint."""
    found = []
    for path in sorted(CONTRIB.rglob("*")):
        rel = path.relative_to(CONTRIB)
        if rel.parts[0] in OURS or not path.is_file():
            continue
        if path.name in ("run", "entrypoint", "greeter"):
            found.append(path)
    return found


@pytest.mark.parametrize("script", _scripts(), ids=lambda p: str(p.relative_to(CONTRIB)))
def test_script_is_executable_and_parses(script):
    assert os.access(script, os.X_OK), f"{script} is not executable"
    assert script.read_bytes().startswith(b"#!/bin/sh\n")
    proc = subprocess.run(["/bin/sh", "-n", str(script)], capture_output=True, timeout=30)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("name", TEMPLATES)
def test_every_template_has_run_and_log_run(name):
    for script in (SERVICES / name / "run", SERVICES / name / "log" / "run"):
        assert script.is_file() and os.access(script, os.X_OK), script
    assert name in (CONTRIB / "README.md").read_text(), "contrib/README.md says what to edit in each template"


# -- the templates' command lines, captured and parsed ----------------------------------------
STUB_RECORD = """#!/bin/sh
# Stand-in: records its name, arguments and environment (NUL-separated) instead of serving.
{ printf '%s\\0' "${0##*/}" "$@"; } > "$STUB_OUT/${0##*/}.argv"
env -0 > "$STUB_OUT/${0##*/}.env"
"""
STUB_ENVUIDGID = """#!/bin/sh
# Stand-in for envuidgid ACCOUNT CHILD: the account need not exist here.
{ printf '%s\\0' "${0##*/}" "$@"; } > "$STUB_OUT/${0##*/}.argv"
shift
exec env UID=4242 GID=4343 "$@"
"""


def _capture(service: Path, tmp_path: Path, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run SERVICE's run script (cwd = the directory, as supervise does) with stand-ins for tcpserver/envuidgid."""
    stubs = tmp_path / "stubs"
    stubs.mkdir(exist_ok=True)
    for name, text in (("tcpserver", STUB_RECORD), ("envuidgid", STUB_ENVUIDGID)):
        (stubs / name).write_text(text)
        (stubs / name).chmod(0o755)
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    env = {"PATH": f"{stubs}:{VENV_BIN}:/usr/bin:/bin", "STUB_OUT": str(out), **(env_extra or {})}
    return subprocess.run(["./run"], cwd=service, env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=60)


def _recorded(tmp_path: Path, name: str) -> list[str]:
    path = tmp_path / "out" / f"{name}.argv"
    assert path.exists(), f"{name} was not run"
    return path.read_bytes().decode().split("\0")[:-1]


def _recorded_env(tmp_path: Path, name: str) -> dict[str, str]:
    items = (tmp_path / "out" / f"{name}.env").read_bytes().decode().split("\0")[:-1]
    return dict(item.split("=", 1) for item in items)


def _parse_tcpserver(argv: list[str]) -> dict:
    """ARGV (without the program name) through prefork's tcpserver parser, as tcpserver would read it."""
    from prefork.addr import parse_port, resolve_server_host
    from prefork.tcpserver_cli import parse_command_line

    values, operands = parse_command_line(list(argv))
    params: dict = dict(values)
    assert len(operands) >= 3, operands
    params["ip"] = resolve_server_host(operands[0])
    params["port"] = parse_port(operands[1])
    params["program"] = operands[2:]
    return params


def _copy_template(name: str, tmp_path: Path) -> Path:
    service = tmp_path / name
    shutil.copytree(SERVICES / name, service, symlinks=True)
    return service


def test_vsftpd_template_command_line(tmp_path):
    service = _copy_template("vsftpd", tmp_path)
    proc = _capture(service, tmp_path)
    assert proc.returncode == 0, proc.stdout
    argv = _recorded(tmp_path, "tcpserver")
    p = _parse_tcpserver(argv[1:])
    assert (p["ip"], p["port"]) == ("0.0.0.0", 21)
    assert p["program"] == ["/usr/sbin/vsftpd", "/etc/vsftpd.conf"]
    assert (p["limit"], p["rules"], p["rules_missing_ok"], p["localname"]) == (30, "/etc/tcprules.d/vsftpd.cdb", True, "localhost")
    assert (p["verbosity"], p["remote_host_lookup"], p["ident"]) == (2, False, False)


def test_rsync_template_command_line(tmp_path):
    service = _copy_template("rsync", tmp_path)
    proc = _capture(service, tmp_path)
    assert proc.returncode == 0, proc.stdout
    p = _parse_tcpserver(_recorded(tmp_path, "tcpserver")[1:])
    assert (p["ip"], p["port"]) == ("0.0.0.0", 873)
    assert p["program"] == ["/usr/bin/rsync", "--daemon", "--config=/etc/rsyncd.conf"]
    assert (p["limit"], p["rules"], p["verbosity"]) == (20, "/etc/tcprules.d/rsync.cdb", 2)


def _qmail_home(tmp_path: Path, rcpthosts: bool = True) -> Path:
    home = tmp_path / "qmail"
    (home / "control").mkdir(parents=True)
    if rcpthosts:
        (home / "control" / "rcpthosts").write_text("example.org\n")
    return home


def test_qmail_smtpd_template_command_line(tmp_path):
    service = _copy_template("qmail-smtpd", tmp_path)
    home = _qmail_home(tmp_path)
    (service / "env" / "QMAIL").write_text(f"{home}\n")  # what an operator edits: the settings in ./env
    (service / "env" / "QMAILDUID").write_text("4242\n")
    (service / "env" / "NOFILESGID").write_text("4343\n")
    proc = _capture(service, tmp_path)
    assert proc.returncode == 0, proc.stdout
    p = _parse_tcpserver(_recorded(tmp_path, "tcpserver")[1:])
    assert (p["ip"], p["port"]) == ("0.0.0.0", 25)
    assert (p["limit"], p["uid"], p["gid"], p["localname"]) == (20, 4242, 4343, "mail.example.org")
    assert (p["rules"], p["verbosity"], p["ident"], p["remote_host_lookup"]) == ("/etc/tcp.smtp.cdb", 2, False, True)
    # softlimit limits each session's qmail-smtpd, not prefork's server processes.
    assert p["program"] == ["softlimit", "-m", "20000000", f"{home}/bin/qmail-smtpd"]
    ok = subprocess.run([ours("softlimit"), *p["program"][1:3], "/bin/true"], capture_output=True, timeout=30)
    assert ok.returncode == 0, ok.stderr


def test_qmail_smtpd_template_refuses_unset_settings(tmp_path):
    try:
        pwd.getpwnam("qmaild")
        pytest.skip("a qmaild account exists here: its ids would be found")
    except KeyError:
        pass
    service = _copy_template("qmail-smtpd", tmp_path)
    (service / "env" / "QMAIL").write_text(f"{_qmail_home(tmp_path)}\n")
    proc = _capture(service, tmp_path)
    assert proc.returncode == 1
    assert b"qmail-smtpd: set LOCAL, MAXSMTPD, QMAILDUID and NOFILESGID in " in proc.stdout
    assert not (tmp_path / "out" / "tcpserver.argv").exists()


def test_qmail_smtpd_template_refuses_to_be_an_open_relay(tmp_path):
    service = _copy_template("qmail-smtpd", tmp_path)
    home = _qmail_home(tmp_path, rcpthosts=False)
    (service / "env" / "QMAIL").write_text(f"{home}\n")
    (service / "env" / "QMAILDUID").write_text("4242\n")
    (service / "env" / "NOFILESGID").write_text("4343\n")
    proc = _capture(service, tmp_path)
    assert proc.returncode == 1
    assert proc.stdout == f"qmail-smtpd: no {home}/control/rcpthosts: refusing to start an open relay\n".encode()
    assert not (tmp_path / "out" / "tcpserver.argv").exists()


def test_axfrdns_template_command_line(tmp_path):
    service = _copy_template("axfrdns", tmp_path)
    proc = _capture(service, tmp_path)
    assert proc.returncode == 0, proc.stdout
    assert _recorded(tmp_path, "envuidgid")[1:3] == ["axfrdns", "tcpserver"]
    p = _parse_tcpserver(_recorded(tmp_path, "tcpserver")[1:])
    assert (p["ip"], p["port"]) == ("127.0.0.1", 53)
    assert (p["verbosity"], p["nodelay"], p["ident"], p["remote_host_lookup"], p["localname"]) == (2, True, False, False, "0")
    assert p["rules"] == "tcp.cdb"
    assert p["program"] == ["softlimit", "-d300000", "axfrdns"]
    env = _recorded_env(tmp_path, "tcpserver")  # envdir ./env and envuidgid: what axfrdns reads
    assert (env["IP"], env["ROOT"], env["UID"], env["GID"]) == ("127.0.0.1", "/etc/tinydns/root", "4242", "4343")
    ok = subprocess.run([ours("softlimit"), "-d300000", "/bin/true"], capture_output=True, timeout=30)
    assert ok.returncode == 0, ok.stderr


def test_axfrdns_rules_compile_with_make(tmp_path):
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    service = _copy_template("axfrdns", tmp_path)
    env = {"PATH": f"{VENV_BIN}:/usr/bin:/bin"}
    proc = subprocess.run(["make", "-s"], cwd=service, env=env, capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    check = subprocess.run([ours("tcprulescheck"), "tcp.cdb"], cwd=service, capture_output=True, timeout=30,
                           env={**env, "TCPREMOTEIP": "192.0.2.53"})
    assert check.stdout == b'rule 192.0.2.53:\nset environment variable AXFR=example.org/2.0.192.in-addr.arpa\nallow connection\n'
    check = subprocess.run([ours("tcprulescheck"), "tcp.cdb"], cwd=service, capture_output=True, timeout=30,
                           env={**env, "TCPREMOTEIP": "192.0.2.54"})
    assert check.stdout == b"rule :\ndeny connection\n"


@pytest.fixture
def nobody_dir():
    """A directory nobody can reach (pytest's tmp dirs are 0700), removed afterwards."""
    if os.geteuid() != 0:
        pytest.skip("setuidgid nobody needs root")
    try:
        pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no nobody account")
    path = Path(tempfile.mkdtemp(prefix="prefork-contrib."))
    try:
        path.chmod(0o755)
        yield path
    finally:
        remove_shm_files_of(path)
        shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize("name", TEMPLATES)
def test_template_log_run_logs_as_nobody(name, nobody_dir):
    log = nobody_dir / name / "log"
    shutil.copytree(SERVICES / name / "log", log)
    nobody = pwd.getpwnam("nobody")  # copied as is: log/run makes ./main and gives it to nobody itself
    proc = subprocess.run(["./run"], cwd=log, input=b"tcpserver: status: 1/30\n", capture_output=True, timeout=60,
                          env={"PATH": f"{VENV_BIN}:/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    current = log / "main" / "current"
    assert re.fullmatch(rb"@[0-9a-f]{24} tcpserver: status: 1/30\n", current.read_bytes())
    assert current.stat().st_uid == nobody.pw_uid


# -- systemd ---------------------------------------------------------------------------------
def _unit(path: Path = UNIT) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True, comment_prefixes=("#", ";"))
    parser.optionxform = str  # keys are case-sensitive in systemd
    parser.read(path)
    return parser


def test_systemd_unit_runs_svscan_with_stop_semantics():
    unit = _unit()
    service = unit["Service"]
    start = service["ExecStart"].split()
    assert start[0].endswith("/svscan") and start[-1] == "/service"
    assert "--stop-services" in start
    grace = float(start[start.index("--grace") + 1])
    assert service["KillMode"] == "mixed"  # SIGTERM to svscan only: it stops the services itself
    assert service.get("KillSignal", "SIGTERM") == "SIGTERM"
    assert float(service["TimeoutStopSec"]) > grace
    assert service["Restart"] == "always"
    assert "-HUP" in service["ExecReload"]
    assert service["Environment"].startswith("PATH=" + str(Path(start[0]).parent) + ":")
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_socket_activated_pair_serves_one_ipv4_socket_with_tcpserver():
    from prefork.tcpserver_cli import parse_command_line

    sock = _unit(ECHO_SOCKET)
    listen = sock["Socket"]["ListenStream"]
    assert "\n" not in listen.strip()  # one socket: tcpserver refuses more
    host, _, port = listen.rpartition(":")
    socket.inet_aton(host)  # an IPv4 address: a bare port would be an IPv6 socket, refused
    assert 0 < int(port) < 65536
    assert sock["Socket"].get("Accept", "no") == "no"  # tcpserver's workers accept
    assert sock["Unit"]["PartOf"] == ECHO_SERVICE.name
    assert sock["Install"]["WantedBy"] == "sockets.target"
    service = _unit(ECHO_SERVICE)
    assert service["Unit"]["Requires"] == ECHO_SOCKET.name and ECHO_SOCKET.name in service["Unit"]["After"].split()
    start = service["Service"]["ExecStart"].split()
    assert start[0] == "/opt/prefork/bin/tcpserver"
    values, operands = parse_command_line(start[1:])
    assert operands[:2] == ["0", "0"]  # whatever systemd passes: no mismatch warning
    assert os.access(operands[2], os.X_OK)
    assert not values["remote_host_lookup"] and not values["ident"] and values["localname"] == "0"


@pytest.mark.parametrize("names", [[UNIT.name], [ECHO_SOCKET.name, ECHO_SERVICE.name]], ids=["svscan", "echo"])
def test_systemd_analyze_verify(tmp_path, names):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    units = []
    for name in names:
        text = (UNIT.parent / name).read_text().replace("/opt/prefork/bin/", f"{VENV_BIN}/")  # ExecStart must exist
        units.append(tmp_path / name)
        units[-1].write_text(text)
    proc = subprocess.run([analyze, "verify", *map(str, units)], capture_output=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for name in names:  # warnings (an unknown key, an unsafe setting) name the file
        assert name.encode() not in proc.stderr, proc.stderr


# -- container -------------------------------------------------------------------------------
def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of contrib/container/Dockerfile, continuation lines joined."""
    text = (CONTAINER / "Dockerfile").read_text()
    lines = [line for line in text.replace("\\\n", " ").splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip()) for line in lines]


def test_dockerfile_entrypoint_exists_and_is_executable():
    steps = _dockerfile()
    froms = [args for op, args in steps if op == "FROM"]
    assert froms and all(f.split()[0] == "debian:12-slim" for f in froms)
    entry = json.loads(dict(steps)["ENTRYPOINT"])
    assert len(entry) == 1
    copies = [args.split() for op, args in steps if op == "COPY" and not args.startswith("--from")]
    sources = {dst: src for src, dst in (c for c in copies if len(c) == 2)}
    assert entry[0] in sources, "the entrypoint is copied into the image"
    source = ROOT / sources[entry[0]]
    assert source == CONTAINER / "entrypoint"
    assert os.access(source, os.X_OK)
    for src, _dst in (c for c in copies if len(c) == 2):
        assert (ROOT / src).exists(), src  # COPY sources are relative to the top of the source tree
    ignore = (CONTAINER / "Dockerfile.dockerignore").read_text().split()
    assert "!contrib/container/entrypoint" in ignore and "!pyproject.toml" in ignore
    assert dict(steps)["STOPSIGNAL"] == "SIGTERM"
    assert "/opt/prefork/bin" in dict(steps)["ENV"].split("=", 1)[1].split(":")[0]


def test_entrypoint_runs_a_command_instead_of_svscan(tmp_path):
    proc = subprocess.run([str(CONTAINER / "entrypoint"), "echo", "hello"], capture_output=True, timeout=30,
                          env={"PATH": "/usr/bin:/bin", "SVSCANDIR": str(tmp_path / "never")})
    assert (proc.returncode, proc.stdout) == (0, b"hello\n")
    assert not (tmp_path / "never").exists()


def _tools_without_svscan(tmp_path: Path) -> str:
    """A PATH with what the entrypoint needs besides svscan."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("mkdir", "cp", "chmod"):
        (bin_dir / tool).symlink_to(shutil.which(tool, path="/usr/bin:/bin"))
    return str(bin_dir)


def test_entrypoint_without_svscan_exits_127(tmp_path):
    """Bad setup: svscan not on PATH is an error exit (the container stops), not a container that idles."""
    proc = subprocess.run([str(CONTAINER / "entrypoint")], capture_output=True, timeout=30,
                          env={"PATH": _tools_without_svscan(tmp_path), "SVSCANDIR": str(tmp_path / "tree"),
                               "PREFORK_SERVICES": str(tmp_path / "none")})
    assert proc.returncode == 127, proc
    assert b"svscan: not found" in proc.stderr


def test_entrypoint_with_an_unusable_svscandir_fails(tmp_path):
    (tmp_path / "file").write_text("")
    proc = subprocess.run([str(CONTAINER / "entrypoint")], capture_output=True, timeout=30,
                          env={"PATH": _tools_without_svscan(tmp_path), "SVSCANDIR": str(tmp_path / "file" / "tree")})
    assert proc.returncode == 1, proc
    assert b"mkdir" in proc.stderr and b"Not a directory" in proc.stderr


def test_entrypoint_copies_read_only_services_into_the_tree(tmp_path):
    templates = tmp_path / "templates"
    (templates / "one" / "log").mkdir(parents=True)
    (templates / "one" / "run").write_text("#!/bin/sh\nexec sleep 1000\n")
    (templates / "one" / "log" / "run").write_text("#!/bin/sh\nexec multilog t ./main\n")
    (templates / "one" / "run").chmod(0o444)
    (templates / "..data").mkdir()  # a ConfigMap volume's own entries are skipped
    (templates / "stray-file").write_text("")
    tree = tmp_path / "tree"
    (tree / "two").mkdir(parents=True)  # already in the tree (baked into the image): left alone
    env = {"PATH": _tools_without_svscan(tmp_path), "SVSCANDIR": str(tree), "PREFORK_SERVICES": str(templates)}
    subprocess.run([str(CONTAINER / "entrypoint")], capture_output=True, timeout=30, env=env)
    assert sorted(p.name for p in tree.iterdir()) == ["one", "two"]
    assert (tree / "one" / "run").read_text() == "#!/bin/sh\nexec sleep 1000\n"
    assert os.access(tree / "one" / "run", os.X_OK) and os.access(tree / "one" / "log" / "run", os.X_OK)


# -- kubernetes ------------------------------------------------------------------------------
def _load_yaml(path: Path) -> list:
    """Every document of a YAML file: PyYAML in-process, else a Python that has it, else skip."""
    try:
        import yaml
    except ImportError:
        for python in ("/usr/bin/python3", shutil.which("python3")):
            if python and python != sys.executable:
                proc = subprocess.run(
                    [python, "-c", "import json, sys, yaml; json.dump(list(yaml.safe_load_all(open(sys.argv[1]))), sys.stdout)",
                     str(path)], capture_output=True, timeout=30)
                if proc.returncode == 0:
                    return json.loads(proc.stdout)
        pytest.skip("no PyYAML to parse the manifests with")
    with open(path) as f:
        return list(yaml.safe_load_all(f))


def _manifests() -> dict[str, dict]:
    docs = {}
    for name in ("deployment.yaml", "service.yaml", "servicemonitor.yaml", "kustomization.yaml"):
        loaded = [d for d in _load_yaml(KUBE / name) if d]
        assert len(loaded) == 1, name
        docs[loaded[0]["kind"]] = loaded[0]
    return docs


def test_kubernetes_manifests_parse_and_agree():
    docs = _manifests()
    deploy, svc, monitor, kust = docs["Deployment"], docs["Service"], docs["ServiceMonitor"], docs["Kustomization"]
    pod = deploy["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert deploy["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert svc["spec"]["selector"].items() <= labels.items()
    container = pod["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    notes = pod["metadata"]["annotations"]
    assert notes["prometheus.io/scrape"] == "true"
    assert int(notes["prometheus.io/port"]) == ports["metrics"]
    svc_ports = {p["name"]: p for p in svc["spec"]["ports"]}
    assert svc_ports["metrics"]["targetPort"] == "metrics"
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]
    grace = float({e["name"]: e["value"] for e in container["env"]}["PREFORK_GRACE"])
    assert pod["spec"]["terminationGracePeriodSeconds"] > grace
    # The ConfigMap's keys are the files of service/, mounted back at their paths as the entrypoint expects.
    generated = {}
    for entry in kust["configMapGenerator"][0]["files"]:
        key, _, path = entry.partition("=")
        assert (KUBE / path).is_file(), path
        generated[key] = path
    volume = next(v for v in pod["spec"]["volumes"] if "configMap" in v)
    assert volume["configMap"]["name"] == kust["configMapGenerator"][0]["name"]
    items = {i["key"]: i["path"] for i in volume["configMap"]["items"]}
    assert items.keys() == generated.keys()
    for key, path in items.items():
        assert generated[key] == f"service/{path}", key
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts[volume["name"]] == "/etc/prefork/service"
    assert mounts["tree"] == "/service"
    assert set(kust["resources"]) <= {p.name for p in KUBE.iterdir()}


def test_kubectl_kustomize_renders(tmp_path):
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    proc = subprocess.run([kubectl, "kustomize", str(KUBE)], capture_output=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    kinds = re.findall(rb"^kind: (\w+)$", proc.stdout, re.M)
    assert sorted(kinds) == [b"ConfigMap", b"Deployment", b"Service"]


# -- the Kubernetes example tree under the entrypoint, as PID 1 --------------------------------
def _unshare() -> list[str]:
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("unshare is not installed")
    cmd = [unshare, "--pid", "--fork", "--mount-proc"]
    if subprocess.run([*cmd, "/bin/true"], capture_output=True, timeout=20).returncode != 0:
        pytest.skip("unshare --pid is not permitted here")
    return cmd


def _wait_for(predicate, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    for _ in range(int(seconds * 20) + 1):
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _logged(current: Path, pattern: bytes) -> re.Match | None:
    try:
        return re.search(pattern, current.read_bytes(), re.M)
    except FileNotFoundError:
        return None


def _added_capabilities() -> list[str]:
    """The capabilities deployment.yaml keeps (it drops ALL, then adds these)."""
    text = (KUBE / "deployment.yaml").read_text()
    assert re.search(r'^ +drop: \["ALL"\]$', text, re.M)
    return json.loads(re.search(r"^ +add: (\[.*\])$", text, re.M)[1])


def test_kubernetes_tree_under_entrypoint_as_pid1(nobody_dir):
    unshare = _unshare()
    templates = nobody_dir / "etc-prefork-service"
    shutil.copytree(KUBE / "service", templates)
    board = nobody_dir / "greeting.scoreboard"
    # Loopback and ports chosen by the kernel instead of the manifests' 0 7000 and 0.0.0.0:9100.
    run = templates / "greeting" / "run"
    run.write_text(run.read_text().replace("tcpserver -v ", "tcpserver -1v ").replace(" 0 7000 ", " 127.0.0.1 0 ")
                   .replace("/dev/shm/prefork-greeting", str(board)))
    metrics = templates / "metrics" / "run"
    metrics.write_text(metrics.read_text().replace("0.0.0.0:9100", "127.0.0.1:0").replace("/service", str(nobody_dir / "tree"))
                       .replace("/dev/shm/prefork-greeting", str(board)))
    tree = nobody_dir / "tree"
    env = {"PATH": f"{VENV_BIN}:/usr/bin:/bin", "SVSCANDIR": str(tree), "PREFORK_SERVICES": str(templates),
           "PREFORK_GRACE": "5"}
    # The manifest's securityContext: every capability dropped but those it adds, no new privileges.
    setpriv = shutil.which("setpriv")
    caps = [setpriv, "--bounding-set", "-all," + ",".join(f"+{c.lower()}" for c in _added_capabilities()),
            "--no-new-privs"] if setpriv else []
    init = subprocess.Popen([*unshare, *caps, str(CONTAINER / "entrypoint")], env=env, stdin=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    pid1 = 0
    try:
        pid1 = _wait_for(lambda: next((c.pid for c in psutil.Process(init.pid).children()), 0), 20, "PID 1")
        port = int(_wait_for(lambda: _logged(tree / "greeting" / "log" / "main" / "current", rb"^@\w+ (\d+)$"),
                             30, "the greeting's port")[1])
        url = _wait_for(lambda: _logged(tree / "metrics" / "log" / "main" / "current", rb"listening on (http://\S+)"),
                        30, "the metrics URL")[1].decode()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.settimeout(10)
            reply = b""
            while not reply.endswith(b"\n"):
                chunk = s.recv(4096)
                if not chunk:
                    break
                reply += chunk
        assert reply.startswith(b"hello from prefork, 127.0.0.1: this is "), reply

        def scraped() -> str | None:
            with urllib.request.urlopen(url, timeout=10) as r:
                body = r.read().decode()
            return body if re.search(r'^tcpserver_connections_accepted_total\{service="greeting"\} 1\.0$', body, re.M) else None

        body = _wait_for(scraped, 20, "the connection in the metrics")
        assert re.search(r'^supervise_up\{directory="[^"]*",service="greeting"\} 1\.0$', body, re.M), body
        assert re.search(r'^supervise_up\{directory="[^"]*",service="metrics/log"\} 1\.0$', body, re.M), body
        services = [tree / n for n in ("greeting", "greeting/log", "metrics", "metrics/log")]
        assert all(int.from_bytes((s / "supervise" / "status").read_bytes()[12:16], "little") for s in services)
        os.kill(pid1, signal.SIGTERM)
        assert init.wait(timeout=30) == 0
        for s in services:
            assert int.from_bytes((s / "supervise" / "status").read_bytes()[12:16], "little") == 0, s
        assert (tree / "greeting" / "log" / "main" / "current").stat().st_mode & 0o777 == 0o744
    finally:
        for pid in (pid1, init.pid):
            if pid:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        try:
            init.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
