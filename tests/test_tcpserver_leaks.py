"""prefork tcpserver: no descriptor, memory or zombie leaks over many connections (prefork only).

After a 500-connection warm-up (imports, lazy caches and allocator arenas settle) the master's and
each worker's fd count and RSS are sampled; after 5,000 more connections (three quarters allowed,
one quarter denied by rules) they must be flat:
- fds: at most 2 more.  Samples are taken when no connection is in flight; any per-connection
  leak would add thousands.
- RSS: at most 2 MiB more.  CPython's allocator takes memory in 1 MiB arenas, so one new arena
  plus noise is normal; a leak of ~420 bytes per connection or more exceeds it.
"""

from __future__ import annotations

import subprocess
import threading

import psutil
from tcpserver_harness import descendants, random_loopback, talk, wait_until, zombies_under

FD_SLACK = 2
RSS_SLACK = 2 << 20


def hammer(port: int, total: int, sources: list[str], threads: int = 8) -> list[str]:
    """TOTAL short connections from 8 threads, cycling through SOURCES; returns failures."""
    failures: list[str] = []
    lock = threading.Lock()

    def worker(n: int, offset: int) -> None:
        for i in range(n):
            source = sources[(offset + i) % len(sources)]
            try:
                reply, _ = talk(port, source=source, timeout=20)
                if reply not in (b"", b"hi\n"):
                    raise AssertionError(f"unexpected reply {reply!r}")
            except Exception as exc:  # noqa: BLE001 - collected and asserted by the caller
                with lock:
                    failures.append(f"{source}: {exc!r}")

    per = total // threads
    pool = [threading.Thread(target=worker, args=(per, k)) for k in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(300)
    return failures


def quiet(server) -> bool:
    """No program running and no zombie: every connection so far is finished."""
    workers = {w.pid for w in server.workers()}
    return len(workers) == 2 and all(p.pid in workers for p in descendants(server.pid))


def sample(server) -> dict[int, tuple[int, int]]:
    procs = [psutil.Process(server.pid), *server.workers()]
    return {p.pid: (p.num_fds(), p.memory_info().rss) for p in procs}


def test_no_leaks_over_5000_connections(prefork, tmp_path):
    denied = random_loopback()
    cdb = tmp_path / "rules.cdb"
    subprocess.run(["/usr/bin/tcprules", str(cdb), f"{cdb}.tmp"], input=f"{denied}:deny\n".encode(), check=True)
    server = prefork(["-H", "-R", "-l0", "-x", str(cdb)], ["/bin/echo", "hi"])
    sources = ["127.0.0.1", "127.0.0.1", "127.0.0.1", denied]
    assert wait_until(lambda: len(server.workers()) == 2, 10)

    assert hammer(server.port, 500, sources) == []
    assert wait_until(lambda: quiet(server), 10)
    warm = sample(server)

    failures = hammer(server.port, 5000, sources)
    assert failures == [], failures[:5]
    assert wait_until(lambda: quiet(server), 20)
    after = sample(server)

    assert set(after) == set(warm), "a worker was replaced during the run"
    for pid, (fds, rss) in after.items():
        fds0, rss0 = warm[pid]
        assert fds <= fds0 + FD_SLACK, f"pid {pid}: {fds0} fds after warm-up, {fds} after 5000 more"
        assert rss <= rss0 + RSS_SLACK, f"pid {pid}: RSS {rss0} after warm-up, {rss} after 5000 more"
    assert not zombies_under(server.pid)
    assert server.proc.poll() is None
