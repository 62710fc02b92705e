"""vsftpd end to end under prefork, and its faults (docs/SERVICES.md).

Each test builds its own tree (``e2e_harness.Tree``): Debian's vsftpd in inetd mode (``listen=NO``) behind
prefork's tcpserver with a rules cdb, ``log/run`` = prefork's ``setuidgid nobody multilog t ./main``, the
whole tree run by prefork's svscan.  Clients are Python's ftplib on loopback addresses; what the tests check
is what a client gets, what reached multilog's ``current``, svstat lines, processes and the metrics.

One thing the tests pin down about vsftpd itself: it writes its fatal errors (``500 OOPS: ...``) to fd 0,
which in inetd mode is the client's socket, not stderr.  So a configuration error under tcpserver reaches
the client, and the service does not flap (tcpserver is fine; each session fails).  A service that flaps on
a vsftpd configuration error is vsftpd run standalone (``listen=YES``) as the service itself, and its run
script must point fd 0 at the log (``0>&2``) for the log to say why.
"""

from __future__ import annotations

import calendar
import ftplib
import os
import re
import socket
import stat
import subprocess
import time

import psutil
import pytest
from e2e_harness import (
    BIN,
    VSFTPD,
    Service,
    Tree,
    alive,
    ftp_get,
    ftp_login,
    ftp_session,
    metrics_urls,
    need,
    refused,
    sample,
    scrape,
    script,
    tcpserver_run,
    vsftpd_conf,
)
from tcpserver_harness import wait_until

from prefork.atomicfile import replace

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

HELLO = b"hello over FTP\r\nsecond line\n"
BLOB = bytes(range(256)) * 800  # 200 KiB, every byte value: a binary transfer must keep them all
ALLOW_LOCAL = '127.0.0.1:allow,GREETING="hello from rules"\n:deny\n'
END = r"tcpserver: end \d+ status "
OOPS = "500 OOPS: unrecognised variable in config file: bogus_option"


@pytest.fixture
def tree():
    need(VSFTPD)
    with Tree() as t:
        yield t


def ftp_service(tree: Tree, name: str, ip: str = "127.0.0.1", port: int | str = 0, rules: str = ALLOW_LOCAL,
                files: dict[str, bytes] | None = None, extra: tuple[str, ...] = (), wrapper: str | None = None,
                linked: bool = True, options: str = "") -> Service:
    """An FTP service NAME on IP:PORT: sv/NAME with vsftpd.conf and rules.cdb, its files in NAME-root.

    WRAPPER: a shell body run as tcpserver's program instead of vsftpd; $VSFTPD and $CONF are set for it.
    OPTIONS: more tcpserver options (prefork's long ones), e.g. ``--metrics 127.0.0.1:0 ``.
    """
    root = tree.share(f"{name}-root", files=files if files is not None else {"hello.txt": HELLO, "blob.bin": BLOB})
    empty = tree.share(f"{name}-empty")
    d = tree.store / name
    d.mkdir()
    conf = d / "vsftpd.conf"
    conf.write_text(vsftpd_conf(root, empty, ip, extra))
    program = f"{VSFTPD} {conf}"
    if wrapper is not None:
        script(d / "program", f"VSFTPD={VSFTPD}\nCONF={conf}\n{wrapper}")
        program = str(d / "program")
    svc = tree.service(name, tcpserver_run(name, ip, port, program, options), linked=linked)
    svc.rules(rules)
    return svc


def session(svc: Service, port: int, ip: str = "127.0.0.1") -> int:
    """One whole FTP session (login, list, download, quit), then wait for its ``end`` line; the client's port."""
    ends = svc.count(END)
    ftp = ftp_login(ip, port)
    try:
        client_port = ftp.sock.getsockname()[1]
        assert sorted(ftp.nlst()) == ["blob.bin", "hello.txt"]
        assert ftp_get(ftp, "hello.txt") == HELLO
        ftp.quit()
    finally:
        ftp.close()
    svc.wait_count(END, ends + 1)
    return client_port


def ftp_metrics(tree: Tree, svc: Service) -> dict[str, float | None]:
    """The tcpserver and supervise samples of SVC from ``prefork-exporter --once`` (None: not there)."""
    return pick(tree, tree.metrics(svc), svc.name)


def served_metrics(tree: Tree, svc: Service, start: int | None) -> dict[str, float | None]:
    """The samples of SVC scraped from svscan's ``--metrics`` and (START-th start) tcpserver's ``--metrics``."""
    assert wait_until(lambda: metrics_urls(tree.svscan_output()), 10), tree.svscan_output()
    m = scrape(metrics_urls(tree.svscan_output())[0])
    if start is not None:
        svc.wait_lines(lambda ls: len(metrics_urls("\n".join(ls))) >= start, what="tcpserver's metrics URL")
        m.update(scrape(metrics_urls(svc.current())[start - 1]))
    return pick(tree, m, svc.name)


def pick(tree: Tree, m: dict, name: str) -> dict[str, float | None]:
    """The samples of service NAME in the scrape M, by short name."""
    out: dict[str, float | None] = {
        k: sample(m, k, service=name)
        for k in ("tcpserver_connections_accepted_total", "tcpserver_connections_denied_total",
                  "tcpserver_connections_active")
    }
    for exit_kind in ("zero", "nonzero", "signal"):
        out[f"exits_{exit_kind}"] = sample(m, "tcpserver_program_exits_total", service=name, exit=exit_kind)
    for k in ("supervise_up", "supervise_want_up", "supervise_starts_total", "supervise_restarts_total",
              "supervise_last_exit_status", "supervise_last_exit_signal"):
        out[k] = sample(m, k, service=name, directory=str(tree.scan))
        out[f"log_{k}"] = sample(m, k, service=f"{name}/log", directory=str(tree.scan))
    return out


def command(p: psutil.Process) -> str:
    """The command a process runs, as ``ps -o args`` names it (prefork's lean re-execs keep argv[0])."""
    return os.path.basename(p.cmdline()[0])


def end_status(line: str) -> int:
    return int(line.rsplit(" ", 1)[1])


# -- serving ------------------------------------------------------------------------------------
def test_anonymous_login_lists_and_downloads(tree):
    svc = ftp_service(tree, "ftp")
    tree.start()
    port = svc.wait_port()
    names, data = ftp_session("127.0.0.1", port, get="hello.txt")
    assert names == ["blob.bin", "hello.txt"]
    assert data == HELLO
    ftp = ftp_login("127.0.0.1", port)
    try:
        assert ftp.getwelcome().startswith("220 ")
        assert ftp.size("blob.bin") == len(BLOB)
        assert ftp_get(ftp, "blob.bin") == BLOB
        ftp.quit()
    finally:
        ftp.close()
    lines = svc.wait_count(END, 2)
    assert lines[:2] == [str(port), "tcpserver: status: 0/30"]
    oks = [line for line in lines if line.startswith("tcpserver: ok ")]
    assert len(oks) == 2
    assert all(re.fullmatch(rf"tcpserver: ok \d+ 0:127\.0\.0\.1:{port} :127\.0\.0\.1::\d+", x) for x in oks)
    # the log is nobody's, written by multilog running as nobody
    nobody = psutil.Process(svc.pid(log=True))
    assert nobody.uids().real == os.stat(svc.logdir).st_uid != 0
    assert command(nobody) == "multilog"


def test_client_from_a_denied_address_is_refused(tree):
    svc = ftp_service(tree, "ftp")
    tree.start()
    port = svc.wait_port()
    err = refused("127.0.0.1", port, source="127.0.0.2")
    assert isinstance(err, (EOFError, ConnectionError)), f"a denied client got {err!r}"
    line = svc.wait_count(r"tcpserver: deny ", 1)
    deny = [x for x in line if x.startswith("tcpserver: deny ")][0]
    m = re.fullmatch(rf"tcpserver: deny (\d+) 0:127\.0\.0\.1:{port} :127\.0\.0\.2::\d+", deny)
    assert m, deny
    assert int(m.group(1)) >= 4194304  # no program was started for it (docs/reference/tcpserver.md: denied ids)
    assert f"tcpserver: pid {m.group(1)} from 127.0.0.2" in line
    svc.wait_count(END, 1)
    # the allowed address is still served, and the metrics tell the two apart
    session(svc, port)
    got = ftp_metrics(tree, svc)
    assert (got["tcpserver_connections_accepted_total"], got["tcpserver_connections_denied_total"]) == (2, 1)


def test_rule_variable_reaches_the_program(tree):
    svc = ftp_service(tree, "ftp", wrapper='echo "greeting=$GREETING remote=$TCPREMOTEIP" >&2\nexec $VSFTPD $CONF')
    tree.start()
    port = svc.wait_port()
    ftp = ftp_login("127.0.0.1", port)
    try:
        lines = svc.wait_count(r"tcpserver: ok ", 1)
        pid = int(re.search(r"tcpserver: ok (\d+) ", "\n".join(lines)).group(1))
        # the wrapper's stderr is tcpserver's (2>&1 into the log pipe)
        svc.wait_count(r"greeting=hello from rules remote=127\.0\.0\.1$", 1)
        # and vsftpd, which the wrapper exec'd in the same process, holds the variable
        with open(f"/proc/{pid}/environ", "rb") as f:
            environ = f.read().split(b"\0")
        assert b"GREETING=hello from rules" in environ
        assert b"TCPREMOTEIP=127.0.0.1" in environ
        assert psutil.Process(pid).exe() == VSFTPD
        assert sorted(ftp.nlst()) == ["blob.bin", "hello.txt"]
        ftp.quit()
    finally:
        ftp.close()


def test_two_instances_on_two_addresses_same_port(tree):
    """Virtual hosting: 127.0.0.2 and 127.0.0.3, one port, each its own config, rules and files."""
    two = ftp_service(tree, "ftp2", ip="127.0.0.2", rules=':allow,VHOST="two"\n',
                      files={"site.txt": b"this is two\n"}, extra=("ftpd_banner=Welcome to two",))
    tree.start()
    port = two.wait_port()
    three = ftp_service(tree, "ftp3", ip="127.0.0.3", port=port, rules='127.0.0.9:deny\n:allow,VHOST="three"\n',
                        files={"site.txt": b"and this is three\n", "only3.txt": b"3\n"},
                        extra=("ftpd_banner=Welcome to three",))
    tree.rescan()
    assert three.wait_port() == port
    for ip, banner, names, text in (
        ("127.0.0.2", "220 Welcome to two", ["site.txt"], b"this is two\n"),
        ("127.0.0.3", "220 Welcome to three", ["only3.txt", "site.txt"], b"and this is three\n"),
    ):
        ftp = ftp_login(ip, port)
        try:
            assert ftp.getwelcome() == banner
            assert sorted(ftp.nlst()) == names
            assert ftp_get(ftp, "site.txt") == text
            ftp.quit()
        finally:
            ftp.close()
    # each listens on its own address only
    for svc, ip in ((two, "127.0.0.2"), (three, "127.0.0.3")):
        listening = {c.laddr for c in psutil.Process(svc.pid()).net_connections("tcp") if c.status == "LISTEN"}
        assert listening == {(ip, port)}
    # each applies its own rules: 127.0.0.9 is welcome on two, refused by three
    ftp = ftp_login("127.0.0.2", port, source="127.0.0.9")
    try:
        assert ftp.getwelcome() == "220 Welcome to two"
        assert ftp_get(ftp, "site.txt") == b"this is two\n"
        ftp.quit()
    finally:
        ftp.close()
    assert isinstance(refused("127.0.0.3", port, source="127.0.0.9"), (EOFError, ConnectionError))
    assert re.fullmatch(rf"tcpserver: deny \d+ 0:127\.0\.0\.3:{port} :127\.0\.0\.9::\d+",
                        [x for x in three.wait_count(r"tcpserver: deny ", 1) if "deny" in x][0])
    assert two.count(r"tcpserver: deny ") == 0
    assert two.count(rf"tcpserver: ok \d+ 0:127\.0\.0\.2:{port} :127\.0\.0\.9::") == 1


# -- the management cycle -------------------------------------------------------------------------
def expected_log(starts: list[tuple[int, list[int]]]) -> str:
    """The regular expression of the whole log: per start its port (with --metrics, -1's ``metrics PORT`` line
    too) and status line, per session its five lines."""
    parts, n = [], 0
    for port, clients in starts:
        parts += [rf"{port}(?:\nmetrics \d+)?", r"tcpserver: status: 0/30"]
        for client in clients:
            n += 1
            parts += [
                r"tcpserver: status: 1/30",
                rf"tcpserver: pid (?P<p{n}>\d+) from 127\.0\.0\.1",
                rf"tcpserver: ok (?P=p{n}) 0:127\.0\.0\.1:{port} :127\.0\.0\.1::{client}",
                rf"tcpserver: end (?P=p{n}) status \d+",
                r"tcpserver: status: 0/30",
            ]
    return "\n".join(parts) + "\n"


def test_management_cycle_with_supervise_scripts(tree):
    svc = ftp_service(tree, "ftp", linked=False, options="--metrics 127.0.0.1:0 ")
    tree.start("--metrics", "127.0.0.1:0")
    tree.wait_scanned()
    began = time.time()

    r = tree.cmd("svc-add", "-d", "ftp")
    assert (r.returncode, r.stdout, r.stderr) == (0, "Type 'svc-start ftp' to start the service.\n", "")
    assert os.readlink(tree.scan / "ftp") == str(svc.dir)
    assert (svc.dir / "down").exists() and (svc.dir / "log" / "down").exists()
    assert tree.svstat("ftp", "ftp/log") == ["ftp: unable to open supervise/ok: file does not exist",
                                             "ftp/log: unable to open supervise/ok: file does not exist"]
    tree.rescan()  # instead of waiting up to 5 s for the next scan
    assert wait_until(lambda: "unable to open" not in " ".join(tree.svstat("ftp", "ftp/log")), 15)
    assert all(re.fullmatch(r"ftp(/log)?: down \d+ seconds", x) for x in tree.svstat("ftp", "ftp/log"))
    assert tree.cmd("svc-isup", "ftp").returncode == 1
    got = served_metrics(tree, svc, None)
    assert (got["supervise_up"], got["supervise_want_up"], got["supervise_starts_total"]) == (0, 0, 0)

    r = tree.cmd("svc-start", "ftp")
    assert (r.returncode, r.stdout, r.stderr) == (0, "Starting ftp: ftp/log ftp done.\n", "")
    assert tree.cmd("svc-isup", "ftp").returncode == 0
    pid1 = svc.pid()
    main, log = tree.svstat("ftp", "ftp/log")
    assert re.fullmatch(rf"ftp: up \(pid {pid1}\) \d+ seconds", main)
    assert re.fullmatch(rf"ftp/log: up \(pid {svc.pid(log=True)}\) \d+ seconds", log)
    starts: list[tuple[int, list[int]]] = [(svc.wait_port(1), [])]
    for _ in range(3):
        starts[-1][1].append(session(svc, starts[-1][0]))
    got = served_metrics(tree, svc, 1)
    assert got["tcpserver_connections_accepted_total"] == 3
    assert got["exits_zero"] + got["exits_nonzero"] + got["exits_signal"] == 3
    assert (got["supervise_up"], got["supervise_starts_total"], got["supervise_restarts_total"]) == (1, 1, 0)
    assert (got["log_supervise_up"], got["log_supervise_starts_total"]) == (1, 1)

    r = tree.cmd("svc-stop", "ftp")
    assert (r.returncode, r.stdout, r.stderr) == (0, "Stopping ftp: ftp ftp/log done.\n", "")
    assert tree.cmd("svc-isup", "ftp").returncode == 1
    assert all(re.fullmatch(r"ftp(/log)?: down \d+ seconds", x) for x in tree.svstat("ftp", "ftp/log"))
    got = served_metrics(tree, svc, None)
    assert (got["supervise_up"], got["supervise_want_up"], got["log_supervise_up"]) == (0, 0, 0)
    assert got["supervise_last_exit_status"] == 0  # tcpserver exits 0 on TERM
    assert wait_until(lambda: not_serving(metrics_urls(svc.current())[0]), 10)  # its exporter went with it

    r = tree.cmd("svc-restart", "ftp")
    assert (r.returncode, r.stderr) == (0, "")
    assert r.stdout == ("Stopping ftp: ftp (already down) ftp/log (already down) done.\n"
                        "Starting ftp: ftp/log ftp done.\n")
    pid2 = svc.wait_up(other_than=pid1)
    assert re.fullmatch(rf"ftp: up \(pid {pid2}\) \d+ seconds", tree.svstat("ftp")[0])
    starts.append((svc.wait_port(2), []))
    starts[-1][1].append(session(svc, starts[-1][0]))
    got = served_metrics(tree, svc, 2)
    assert got["tcpserver_connections_accepted_total"] == 1  # a new server, a new scoreboard
    assert (got["supervise_starts_total"], got["supervise_restarts_total"]) == (2, 0)

    # an exit behind supervise's back (TERM): supervise starts it again, and that counts as a restart
    r = tree.cmd("svc-kill", "ftp")
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    pid3 = svc.wait_up(other_than=pid2)
    starts.append((svc.wait_port(3), []))
    for _ in range(2):
        starts[-1][1].append(session(svc, starts[-1][0]))
    got = served_metrics(tree, svc, 3)
    assert got["tcpserver_connections_accepted_total"] == 2
    assert (got["supervise_starts_total"], got["supervise_restarts_total"]) == (3, 1)
    assert (got["supervise_last_exit_status"], got["supervise_last_exit_signal"]) == (0, 0)
    assert (got["log_supervise_starts_total"], got["log_supervise_restarts_total"]) == (2, 0)
    assert re.fullmatch(rf"ftp: up \(pid {pid3}\) \d+ seconds", tree.svstat("ftp")[0])

    r = tree.cmd("svc-remove", "ftp")
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    assert not os.path.lexists(tree.scan / "ftp")
    assert tree.svstat("ftp") == ["ftp: unable to chdir: file does not exist"]
    assert not (svc.dir / "supervise").exists() and not (svc.dir / "log" / "supervise").exists()
    assert wait_until(lambda: not tree.service_processes(), 10), [p.cmdline() for p in tree.service_processes()]
    got = served_metrics(tree, svc, None)
    assert got["supervise_up"] is None and got["log_supervise_up"] is None
    assert tree.svscan.poll() is None

    # the log: every -v line, in order (the exporter's address lines aside); closed cleanly; tai64nlocal reads it
    lines = svc.lines()
    assert len(metrics_urls("\n".join(lines))) == 3
    text = "".join(x + "\n" for x in lines if not x.startswith("prefork-exporter: "))
    assert re.fullmatch(expected_log(starts), text), text
    assert stat.S_IMODE(os.stat(svc.logdir / "current").st_mode) == 0o744
    raw = (svc.logdir / "current").read_bytes()
    local = subprocess.run([str(BIN / "tai64nlocal")], input=raw, capture_output=True, env={"TZ": "UTC"},
                           timeout=30, check=True).stdout.decode()
    stamps = []
    for line, plain in zip(local.splitlines(), lines, strict=True):
        m = re.fullmatch(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\.(\d{9}) (.*)", line)
        assert m and m.group(3) == plain, line
        stamps.append(calendar.timegm(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")) + int(m.group(2)) / 1e9)
    assert stamps == sorted(stamps)
    assert began - 2 <= stamps[0] and stamps[-1] <= time.time() + 2


def not_serving(url: str) -> bool:
    try:
        scrape(url, timeout=2)
    except OSError:
        return True
    return False


# -- faults ---------------------------------------------------------------------------------------
def test_config_error_in_inetd_mode_reaches_each_client_and_does_not_flap(tree):
    svc = ftp_service(tree, "ftp", extra=("bogus_option=YES",))
    tree.start()
    port = svc.wait_port()
    server = svc.pid()
    for n in range(1, 4):
        ftp = ftplib.FTP(timeout=10)
        try:
            with pytest.raises(ftplib.error_perm) as err:
                ftp.connect("127.0.0.1", port)
            assert str(err.value).strip() == OOPS
        finally:
            ftp.close()
        svc.wait_count(END, n)
    lines = svc.lines()
    assert [end_status(x) for x in lines if re.match(END, x)] == [2 << 8] * 3  # vsftpd exits 2
    assert not any("OOPS" in x for x in lines)  # vsftpd writes it to fd 0, the client's socket
    got = ftp_metrics(tree, svc)
    assert (got["exits_nonzero"], got["exits_zero"]) == (3, 0)
    assert (got["supervise_starts_total"], got["supervise_restarts_total"], got["supervise_up"]) == (1, 0, 1)
    assert svc.pid() == server
    # fixed: the next connection reads the new config, nothing is restarted
    conf = svc.dir / "vsftpd.conf"
    replace(str(conf), conf.read_bytes().replace(b"bogus_option=YES\n", b""))
    session(svc, port)
    assert svc.pid() == server


def test_config_error_standalone_flaps_throttled_and_the_log_says_why(tree):
    root = tree.share("ftpd-root", files={"hello.txt": HELLO})
    empty = tree.share("ftpd-empty")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf = tree.store / "vsftpd-standalone.conf"
    good = vsftpd_conf(root, empty, "127.0.0.1", ("background=NO", "listen_address=127.0.0.1",
                                                    f"listen_port={port}")).replace("listen=NO", "listen=YES")
    conf.write_text(good + "bogus_option=YES\n")
    # vsftpd prints "500 OOPS" on fd 0: point it at the log too
    svc = tree.service("ftpd", f"exec 2>&1\nexec {VSFTPD} {conf} 0>&2")
    tree.start()
    svc.wait_count(re.escape(OOPS), 2, timeout=20)
    # throttled: at most one start a second, and it keeps trying
    t0, first = time.monotonic(), ftp_metrics(tree, svc)
    time.sleep(3)
    t1, got = time.monotonic(), ftp_metrics(tree, svc)
    made = got["supervise_restarts_total"] - first["supervise_restarts_total"]
    assert 1 <= made <= (t1 - t0) + 1, (made, t1 - t0)
    assert got["supervise_starts_total"] == got["supervise_restarts_total"] + 1
    assert (got["supervise_last_exit_status"], got["supervise_last_exit_signal"], got["supervise_want_up"]) == (2, 0, 1)
    assert re.fullmatch(r"ftpd: (up \(pid \d+\)|down) \d+ seconds(, normally up, want up)?", tree.svstat("ftpd")[0])
    # fixed: the next start stays up and serves
    replace(str(conf), good.encode())  # whole or not at all: a start must never read half a file

    def steady() -> int:
        pid = svc.pid()
        if not pid:
            return 0
        time.sleep(1.2)  # a failing start is gone well within a second
        return pid if svc.pid() == pid else 0

    pid = wait_until(steady, 15, 0.05)
    assert pid, svc.lines()
    assert command(psutil.Process(pid)) == "vsftpd"

    def serves() -> bool:
        try:
            return ftp_session("127.0.0.1", port, get="hello.txt") == (["hello.txt"], HELLO)
        except (OSError, EOFError, ftplib.Error):
            return False

    assert wait_until(serves, 10, 0.2)
    settled = ftp_metrics(tree, svc)
    time.sleep(1.5)
    assert ftp_metrics(tree, svc)["supervise_restarts_total"] == settled["supervise_restarts_total"]
    assert svc.pid() == pid
    assert re.fullmatch(rf"ftpd: up \(pid {pid}\) \d+ seconds", tree.svstat("ftpd")[0])
    # the log says why, once for every failed start
    failed = int(settled["supervise_starts_total"]) - 1
    lines = svc.wait_count(re.escape(OOPS), failed)
    assert [x.rstrip("\r") for x in lines] == [OOPS] * failed


def test_rules_replaced_while_sessions_run(tree):
    svc = ftp_service(tree, "ftp", rules="127.0.0.1:allow\n:deny\n")
    tree.start()
    port = svc.wait_port()
    sessions = [ftp_login("127.0.0.1", port) for _ in range(2)]
    try:
        for ftp in sessions:
            assert sorted(ftp.nlst()) == ["blob.bin", "hello.txt"]
        assert isinstance(refused("127.0.0.1", port, source="127.0.0.2"), (EOFError, ConnectionError))
        svc.rules("127.0.0.1:deny\n:allow\n")
        # new connections follow the new rules at once
        assert isinstance(refused("127.0.0.1", port), (EOFError, ConnectionError))
        newcomer = ftp_login("127.0.0.1", port, source="127.0.0.2")
        try:
            assert ftp_get(newcomer, "hello.txt") == HELLO
            newcomer.quit()
        finally:
            newcomer.close()
        # the running sessions are untouched
        for ftp in sessions:
            assert sorted(ftp.nlst()) == ["blob.bin", "hello.txt"]
            assert ftp_get(ftp, "blob.bin") == BLOB
            ftp.quit()
    finally:
        for ftp in sessions:
            ftp.close()
    lines = svc.wait_count(END, 5)
    verdicts = [re.match(r"tcpserver: (ok|deny) \d+ \S+ :(127\.0\.0\.\d)::", x).groups() for x in lines
                if re.match(r"tcpserver: (ok|deny) ", x)]
    # (two workers write these lines: one verdict may be logged after a later connection's)
    assert sorted(verdicts) == [("deny", "127.0.0.1"), ("deny", "127.0.0.2"), ("ok", "127.0.0.1"),
                                ("ok", "127.0.0.1"), ("ok", "127.0.0.2")]
    got = ftp_metrics(tree, svc)
    assert (got["tcpserver_connections_accepted_total"], got["tcpserver_connections_denied_total"]) == (5, 2)


def test_log_service_down_loses_no_line(tree):
    svc = ftp_service(tree, "ftp", wrapper='echo "session for $TCPREMOTEIP:$TCPREMOTEPORT" >&2\nexec $VSFTPD $CONF')
    tree.start()
    port = svc.wait_port()
    first = session(svc, port)
    server, logger = svc.pid(), svc.pid(log=True)
    r = tree.cmd("svc", "-d", "ftp/log")
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    svc.wait_down(log=True)
    assert not psutil.pid_exists(logger) or not alive(psutil.Process(logger))
    assert re.fullmatch(r"ftp/log: down \d+ seconds, normally up", tree.svstat("ftp/log")[0])
    before = svc.lines()
    clients = []
    for _ in range(20):  # about 6 KiB of lines: well within the pipe's 64 KiB
        ftp = ftp_login("127.0.0.1", port)
        try:
            clients.append(ftp.sock.getsockname()[1])
            assert ftp_get(ftp, "hello.txt") == HELLO
            ftp.quit()
        finally:
            ftp.close()
    assert wait_until(lambda: ftp_metrics(tree, svc)["tcpserver_connections_active"] == 0, 10)
    assert svc.lines() == before  # nobody reads the pipe: nothing more reached the log
    assert svc.pid() == server  # and the server did not block on its log
    r = tree.cmd("svc", "-u", "ftp/log")
    assert r.returncode == 0
    svc.wait_up(log=True, other_than=logger)
    lines = svc.wait_count(END, 21)
    assert lines[:len(before)] == before
    for client in [first, *clients]:
        mine = [x for x in lines if x.endswith(f"::{client}") or x.endswith(f"127.0.0.1:{client}")]
        assert len(mine) == 2, mine  # its ok line and its wrapper's line
        pid = re.search(r"tcpserver: ok (\d+) ", "\n".join(mine)).group(1)
        seq = [x.split()[1] for x in lines if re.match(rf"tcpserver: (pid|ok|end) {pid} ", x)]
        assert seq == ["pid", "ok", "end"], seq
    assert sum(1 for x in lines if x.startswith("session for 127.0.0.1:")) == 21
    others = [x for x in lines if not x.startswith("tcpserver: status: ")]
    assert len(others) == len(set(others))  # and none twice


def test_svc_remove_of_a_running_service_leaves_no_process(tree):
    svc = ftp_service(tree, "ftp", linked=False)
    tree.start()
    tree.wait_scanned()
    assert tree.cmd("svc-add", "ftp").returncode == 0
    tree.rescan()
    port = svc.wait_port()
    session(svc, port)
    running = tree.processes()
    names = sorted(command(p) for p in running)
    assert names == ["multilog", "tcpserver", "tcpserver", "tcpserver"], names  # master, 2 workers, the log
    # one session in progress when the service is removed
    ftp = ftp_login("127.0.0.1", port)
    try:
        assert sorted(ftp.nlst()) == ["blob.bin", "hello.txt"]
        oks = [x for x in svc.wait_count(r"tcpserver: ok ", 2) if x.startswith("tcpserver: ok ")]
        session_pid = int(oks[-1].split()[2])
        r = tree.cmd("svc-remove", "ftp")
        assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
        assert not os.path.lexists(tree.scan / "ftp")
        assert all(not alive(p) for p in running)
        # what is left is the session in progress (tcpserver leaves running programs alone, as 0.88 does) ...
        left = tree.processes()
        assert {p.pid for p in left} <= {session_pid} | {c.pid for c in psutil.Process(session_pid).children(True)}
        assert all(command(p) == "vsftpd" for p in left)
        assert ftp_get(ftp, "hello.txt") == HELLO  # ... and it still serves its client
        ftp.quit()
    finally:
        ftp.close()
    # ... until it ends: then nothing of the service is left
    assert wait_until(lambda: not tree.processes(), 10), [p.cmdline() for p in tree.processes()]
    assert tree.svscan.poll() is None
    assert psutil.Process(tree.svscan.pid).children() == []
    assert tree.svstat("ftp") == ["ftp: unable to chdir: file does not exist"]


# -- what an operator sees --------------------------------------------------------------------------
def test_processes_are_named_for_ps_and_pgrep(tree):
    svc = ftp_service(tree, "ftp")
    tree.start()
    svc.wait_port()
    server, logger = svc.pid(), svc.wait_up(log=True)
    assert wait_until(lambda: command(psutil.Process(logger)) == "multilog", 10)

    def comm(pid: int) -> str:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()

    assert comm(server) == "tcpserver"
    # The port answers once the master listens; its second worker may still be on its way.
    assert wait_until(lambda: len(psutil.Process(server).children()) == 2, 10)
    assert [comm(p.pid) for p in psutil.Process(server).children()] == ["tcpserver", "tcpserver"]
    assert (comm(tree.svscan.pid), comm(logger)) == ("svscan", "multilog")
