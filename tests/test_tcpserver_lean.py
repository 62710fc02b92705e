"""The lean re-exec of the tcpserver master (prefork/lean.py): what an operator sees in ps, what
the server process carries, and the settings surviving the trip through the bootstrap script."""

from __future__ import annotations

import os

import psutil
from tcpserver_harness import QUIET, talk

from prefork import lean
from prefork.serverconfig import ServerConfig


def test_master_is_named_tcpserver_and_keeps_the_arguments(prefork):
    server = prefork([*QUIET, "-c", "7"], ["/bin/echo", "hi"])
    assert talk(server.port)[0] == b"hi\n"
    master = psutil.Process(server.pid)
    assert master.name() == "tcpserver"
    cmdline = master.cmdline()
    assert os.path.basename(cmdline[0]) == "tcpserver"
    assert cmdline[1:3] == ["-I", "-S"] and cmdline[3].startswith("/proc/self/fd/")
    rest = cmdline[4:]  # the arguments as given, after the interpreter's own
    assert rest[-4:] == ["127.0.0.1", "0", "/bin/echo", "hi"] and rest[rest.index("-c") + 1] == "7"
    for proc in [master, *master.children()]:
        assert proc.name() == "tcpserver"


def test_server_processes_do_not_carry_the_command_line_parser(prefork):
    """The settings memfd stays in the front end, and the server stays small."""
    server = prefork(QUIET, ["/bin/echo", "hi"])
    assert talk(server.port)[0] == b"hi\n"
    master = psutil.Process(server.pid)
    for proc in [master, *master.children()]:
        links = [os.readlink(f"/proc/{proc.pid}/fd/{fd}") for fd in os.listdir(f"/proc/{proc.pid}/fd")]
        assert not [x for x in links if x.startswith("/memfd:tcpserver-settings")], links  # the bootstrap's
    # the module list is not visible from outside; the parser's absence shows in the memory instead
    assert master.memory_info().rss < 15 * 2**20


def test_settings_round_trip_through_the_bootstrap_script():
    cfg = ServerConfig(
        host="0", ip="127.0.0.1", port=4321, argv=[b"/bin/echo", b"\xff\x00x"], banner=b"hi\r\n",
        localname=b"name\xe9", rules_path="/tmp/r\udcff.cdb", verbosity=2, dns_timeout=2.5,
    )
    text = lean.script(cfg.as_dict(), 9, ["/a", "/b'c"])
    body = text.decode("utf-8", "surrogateescape").split("\n")
    assert body[2] == "sys.path[:0] = ['/a', \"/b'c\"]"
    settings_line = body[7]
    assert settings_line.startswith("run(ServerConfig(**") and settings_line.endswith("))")
    restored = ServerConfig(**eval(settings_line[len("run(ServerConfig(**") : -2]))
    assert restored.as_dict() == cfg.as_dict()
    assert body[1] == "os.close(9)"
