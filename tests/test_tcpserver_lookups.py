"""prefork's DNS lookups through the system resolver (-h, -p, no -l), answered from /etc/hosts only.

Debian's tcpserver asks its own DNS client for these names (never /etc/hosts), which here would
send queries off the machine, so these are prefork-only tests of the documented difference.
They run only where /etc/hosts maps 127.0.0.1 to localhost and nsswitch consults files first, so
that no query leaves the machine.
"""

from __future__ import annotations

import pytest
from tcpserver_harness import VIEW, parse_view, private_hosts_possible, random_loopback, talk, wait_until


def _local_hosts_answer() -> bool:
    try:
        hosts = open("/etc/hosts").read().split("\n")
        nss = open("/etc/nsswitch.conf").read().split("\n")
    except OSError:
        return False
    maps = any(line.split()[:2] == ["127.0.0.1", "localhost"] for line in hosts if line.strip())
    files_first = any(line.split()[:2] == ["hosts:", "files"] for line in nss)
    return maps and files_first


pytestmark = pytest.mark.skipif(not _local_hosts_answer(), reason="/etc/hosts must answer for 127.0.0.1")


@pytest.mark.parametrize("paranoid", [[], ["-p"]])
def test_remote_and_local_names_from_the_resolver(prefork, paranoid):
    server = prefork(["-h", *paranoid, "-R", "-Q", "--dns-timeout", "5"], [VIEW])
    view = parse_view(talk(server.port)[0])
    assert view["env"]["TCPREMOTEHOST"] == "localhost"
    assert view["env"]["TCPLOCALHOST"] == "localhost"
    assert "TCPREMOTEINFO" not in view["env"]


def test_verbose_ok_line_shows_the_names(prefork):
    server = prefork(["-h", "-R", "-v"], ["/bin/echo", "hi"])
    assert talk(server.port)[0] == b"hi\n"
    lines = server.wait_ends(1)
    ok = [line for line in lines if " ok " in line]
    assert len(ok) == 1 and ok[0].split()[3].startswith("localhost:127.0.0.1:")
    assert ok[0].split()[4].startswith("localhost:127.0.0.1::")



@pytest.mark.skipif(not private_hosts_possible(), reason="needs unshare --mount (root)")
@pytest.mark.parametrize("paranoid", [False, True])
def test_hostile_ptr_name(prefork, tmp_path, paranoid):
    """A PTR name with bytes no host name has (%, :, a backslash, a byte that is not UTF-8): the
    server runs in its own mount namespace with a private /etc/hosts that says so for the client's
    address.  TCPREMOTEHOST is djb's escaped form, the ok line shows it safely, and no worker dies;
    with -p the name cannot be confirmed and is unset."""
    address = random_loopback()
    hosts = tmp_path / "hosts"
    # the file says EX\\AMPLE (two backslashes): the resolver's text form of one backslash in a label
    hosts.write_bytes(b"127.0.0.1 localhost\n" + address.encode() + b" Bad%Na:me.EX\\\\AMPLE\xff.org\n")
    wrap = ["unshare", "--mount", "sh", "-c", 'mount --bind "$0" /etc/hosts && exec "$@"', str(hosts)]
    opts = ["-h", *(["-p"] if paranoid else []), "-R", "-v", "--dns-timeout", "5"]
    server = prefork(opts, [VIEW], wrap=wrap)
    assert wait_until(lambda: len(server.workers()) == 2, 10)
    workers = {w.pid for w in server.workers()}
    env = parse_view(talk(server.port, source=address)[0])["env"]
    escaped = "bad\\045na\\072me.ex\\134ample\\377.org"
    if paranoid:
        assert "TCPREMOTEHOST" not in env
    else:
        assert env["TCPREMOTEHOST"].replace("\\\\", "\\") == escaped
    assert env["TCPLOCALHOST"] == "localhost"
    ok = [line for line in server.wait_ends(1) if line.startswith("tcpserver: ok ")]
    assert ok[0].split()[4].startswith(("" if paranoid else escaped) + f":{address}::")
    assert "worker exiting" not in server.stderr()
    assert {w.pid for w in server.workers()} == workers
