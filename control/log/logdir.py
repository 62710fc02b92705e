"""One multilog log directory, with daemontools 0.76's protocol exactly.

Files: ``lock`` (flock'ed for life), ``current`` (mode 0744 = closed cleanly,
0644 while written), ``state``/``newstate`` (the processor's fds 4 and 5),
``previous``/``processed`` while a full ``current`` is being processed, and
the old files ``@<tai64n>.s`` (rotated) or ``.u`` (recovered after a crash).

Rotation: a full ``current`` is fsync'ed, renamed to ``previous``, a new
``current`` is created, ``previous`` gets 0744 and is hard-linked to
``@<now>.s`` (or, with a processor, run through ``/bin/sh -c CMD`` into
``processed`` first); then the oldest ``@`` files are removed until n−1 are
left.  Writes are cut exactly by 0.76's rules, so a finished file is s−2000..s
bytes and ends at a line end unless one line is very long.  The only
difference is the chunk size: 0.76 writes at most 512 bytes at a time and so
rotates at the first line end past s−2000; here the chunks are as large as
the input read, so files tend to end at the last line end before s.

The opt-in extensions of control/log/logscript.py live here too: ``S`` (total size
of the old files) is one more pruning rule after the n−1 one, ``T`` (age) is
``due()``/``deadline()``, acted on by the engine before each read, and ``M``
(counters) is ``publish()`` plus a store or two per flush, rotation and pause
into the directory's block (control/log/logcounters.py); without ``M`` those
are one ``is None`` test each.

Every failure after start-up is a ``multilog: warning: unable to ..., pausing:
ERR``, a 5 s sleep and a retry of the same step: nothing is lost.  All the
system calls go through one :class:`Seam` so tests can make the disk fail, the
clock and the sleeps fake, and processors imaginary.

The directory often belongs to someone else than the user multilog runs as
(root, or the log user with the service's owner able to write there): no
name in it is ever opened through a symbolic link (``O_NOFOLLOW``), and the
files made anew, ``state`` and the processor's ``processed`` and
``newstate``, are unlinked and created with ``O_EXCL`` instead of truncated
(prefork/atomicfile.py), so a planted link can neither be written through
nor make root create the file it names.  The directory's own path is the
script's: it is followed like any path given on a command line.
"""

from __future__ import annotations

import errno
import os

from prefork.atomicfile import create
from prefork.djb import errstr

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: multilog does not import typing
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import ParamSpec, TypeVar

    from prefork.control.log.logcounters import LogCounters

    P = ParamSpec("P")
    R = TypeVar("R")

PROG = "multilog"
PAUSE = 5
FLUSH_AT = 256 * 1024  # buffered bytes that force a write before the next read

_RDONLY = os.O_RDONLY | os.O_NONBLOCK
_READ = _RDONLY | os.O_NOFOLLOW | os.O_NOCTTY  # a name in the directory, for reading
_APPEND = os.O_WRONLY | os.O_NONBLOCK | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NOCTTY  # open_append, 0600


def errtext(err: int | None) -> str:
    """djb's error_str, including its ``no error`` for 0 (what a stale errno of 0 prints)."""
    return "no error" if not err else errstr(err)


class Fatal(Exception):
    """A start-up failure: ``multilog: fatal: TEXT: ERR``, exit 111."""

    def __init__(self, text: str, err: int | None) -> None:
        super().__init__(text, err)
        self.text = text
        self.errno = err

    def message(self) -> str:
        return f"{PROG}: fatal: {self.text}: {errtext(self.errno)}"


class Seam:
    """Every system call multilog makes on disks, clocks, children and stderr: the one thing tests replace.

    ``errno`` mimics C's global errno where 0.76 prints it although nothing
    just failed (``processor crashed in DIR, pausing: ERR`` shows whatever the
    last failed call left, 0 after a directory listing).
    """

    def __init__(self) -> None:
        self.errno = 0
        self._env: dict[bytes, bytes] | None = None

    def _call(self, fn: Callable[P, R], *args: P.args, **kw: P.kwargs) -> R:
        try:
            return fn(*args, **kw)
        except OSError as err:
            self.errno = err.errno or 0
            raise

    # -- files ------------------------------------------------------------------------------------
    def mkdir(self, path: str, mode: int) -> None:
        self._call(os.mkdir, path, mode)

    def open(self, path: str, flags: int, mode: int = 0o600, dir_fd: int | None = None) -> int:
        return self._call(os.open, path, flags | os.O_CLOEXEC, mode, dir_fd=dir_fd)

    def close(self, fd: int) -> None:
        try:
            os.close(fd)
        except OSError:
            pass

    def write(self, fd: int, data: bytes | memoryview) -> int:
        return self._call(os.write, fd, data)

    def seek0(self, fd: int) -> None:
        self._call(os.lseek, fd, 0, os.SEEK_SET)

    def fsync(self, fd: int) -> None:
        self._call(os.fsync, fd)

    def fchmod(self, fd: int, mode: int) -> None:
        self._call(os.fchmod, fd, mode)

    def create(self, name: str, mode: int, dir_fd: int) -> int:
        """A new empty NAME (what djb's open_trunc gives), made afresh: never through a link."""
        return self._call(create, name, mode, dir_fd)

    def chmod(self, name: str, mode: int, dir_fd: int) -> None:
        """chmod NAME, as fchmod of NAME opened without following a link (Linux has no lchmod)."""
        fd = self._call(os.open, name, _READ | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            self._call(os.fchmod, fd, mode)
        finally:
            os.close(fd)

    def rename(self, src: str, dst: str, dir_fd: int) -> None:
        self._call(os.rename, src, dst, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)

    def link(self, src: str, dst: str, dir_fd: int) -> None:
        self._call(os.link, src, dst, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)

    def unlink(self, name: str, dir_fd: int) -> None:
        self._call(os.unlink, name, dir_fd=dir_fd)

    def stat(self, name: str, dir_fd: int) -> os.stat_result:
        return self._call(os.stat, name, dir_fd=dir_fd)

    def listdir(self, dir_fd: int) -> list[str]:
        names = self._call(os.listdir, dir_fd)
        self.errno = 0  # readdir() ran to the end with errno cleared
        return names

    def searchable(self, dir_fd: int) -> None:
        """Fail as 0.76's fchdir() into the directory would (EACCES without search permission)."""
        if not os.access(".", os.X_OK, dir_fd=dir_fd, effective_ids=os.access in os.supports_effective_ids):
            self.errno = errno.EACCES
            raise PermissionError(errno.EACCES, "access denied")

    def flock(self, fd: int) -> None:
        import fcntl

        self._call(fcntl.flock, fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    # -- counters (the M extension) ---------------------------------------------------------------
    def counters_path(self, dir_fd: int) -> str:
        """Where the counter block of the directory open at DIR_FD lives (keyed by its device and inode)."""
        from prefork.control.log.logcounters import default_path

        st = self._call(os.fstat, dir_fd)
        return default_path(st.st_dev, st.st_ino)

    def counters(self, path: str, directory: str) -> LogCounters:
        """Create the counter block at PATH for DIRECTORY (an absolute path); raises OSError."""
        from prefork.control.log.logcounters import LogCounters

        return LogCounters.create(path, directory)

    # -- processors -------------------------------------------------------------------------------
    def spawn(self, command: str, dir_fd: int) -> int:
        """Fork ``/bin/sh -c COMMAND`` in the directory: stdin previous, stdout processed, fd 4 state, fd 5 newstate."""
        if self._env is None:
            from prefork.environ import original_environ

            self._env = original_environ()
        env = self._env
        pid = self._call(os.fork)
        if pid:
            return pid
        try:  # the child: only plain system calls until exec, as 0.76's startprocessor()
            import _signal

            for sig in (_signal.SIGPIPE, _signal.SIGXFSZ, _signal.SIGTERM, _signal.SIGALRM, _signal.SIGINT):
                _signal.signal(sig, _signal.SIG_DFL)
            _signal.pthread_sigmask(_signal.SIG_SETMASK, ())
            os.fchdir(dir_fd)
            _fd_move(0, os.open("previous", _READ))
            _fd_move(1, create("processed", 0o644))
            _fd_move(4, os.open("state", _READ))
            _fd_move(5, create("newstate", 0o644))
            os.execve("/bin/sh", ["sh", "-c", command], env)
        except OSError as err:
            text = f"{PROG}: fatal: unable to run {command}: {errtext(err.errno)}\n"
            try:
                os.write(2, text.encode("utf-8", "surrogateescape"))
            except OSError:
                pass
        finally:
            os._exit(111)

    def wait(self, pid: int) -> int:
        """The raw wait status of PID."""
        return self._call(os.waitpid, pid, 0)[1]

    # -- time and messages ------------------------------------------------------------------------
    def now(self) -> bytes:
        """The 12-byte TAI64N label of now (stamps and old-file names)."""
        from prefork import tai64n

        return tai64n.now()

    def monotonic(self) -> float:
        import time

        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        import time

        time.sleep(seconds)

    def stderr(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(2, view):]
            except OSError:
                return

    def warn(self, text: str) -> None:
        self.stderr(f"{PROG}: warning: {text}\n".encode("utf-8", "surrogateescape"))


def _fd_move(to: int, fd: int) -> None:
    if fd == to:
        os.set_inheritable(fd, True)
        return
    os.dup2(fd, to)
    os.close(fd)


class LogDir:
    """A log directory being written: open it (0.76's restart()), put bytes, flush, rotate, close.

    ``put`` only buffers; ``flush`` writes through 0.76's cutting rules
    (multilog calls it before every read, so a line is on disk before
    multilog waits for more input).
    """

    __slots__ = ("path", "size", "num", "processor", "total", "age", "metrics", "seam", "dirfd", "lockfd", "current",
                 "bytes", "started", "meter", "_buf", "_pending", "_lines")

    def __init__(self, path: str, size: int, num: int, processor: str | None, seam: Seam, total: int = 0,
                 age: int = 0, metrics: bool = False) -> None:
        self.path = path
        self.size = size
        self.num = num
        self.processor = processor
        self.total = total
        self.age = age
        self.metrics = metrics  # the script asked for counters (M)
        self.seam = seam
        self.dirfd = self.lockfd = self.current = -1
        self.bytes = 0  # size of current
        self.started = 0.0  # monotonic time of current's first byte (age rotation)
        self.meter: LogCounters | None = None  # the counter block, once published
        self._buf: list[bytes] = []
        self._pending = 0
        self._lines = 0  # newlines in _buf (counted by the engine, which knows them without scanning)

    # -- start-up ---------------------------------------------------------------------------------
    def open(self) -> None:
        """Lock the directory and recover it (0.76's restart()); raises Fatal."""
        seam, d = self.seam, self.path
        try:
            seam.mkdir(d, 0o700)
        except OSError:
            pass
        try:
            self.dirfd = seam.open(d, _RDONLY | os.O_DIRECTORY)
            seam.searchable(self.dirfd)
        except OSError as err:
            raise Fatal(f"unable to open directory {d}", err.errno) from None
        fd = self.dirfd
        try:
            self.lockfd = seam.open("lock", _APPEND, 0o600, dir_fd=fd)
            seam.flock(self.lockfd)
        except OSError as err:
            raise Fatal(f"unable to lock directory {d}", err.errno) from None
        try:
            st = seam.stat("current", fd)
        except OSError as err:
            if err.errno != errno.ENOENT:
                raise Fatal(f"unable to stat {d}/current", err.errno) from None
        else:
            if st.st_mode & 0o100:
                try:
                    self.current = seam.open("current", _APPEND, 0o600, dir_fd=fd)
                except OSError as err:
                    raise Fatal(f"unable to append to {d}/current", err.errno) from None
                try:
                    seam.fchmod(self.current, 0o644)
                except OSError as err:
                    raise Fatal(f"unable to set mode of {d}/current", err.errno) from None
                self.bytes = st.st_size
                self.started = seam.monotonic()
                return
        for name in ("state", "newstate"):
            try:
                seam.unlink(name, fd)
            except OSError:
                pass
        processed = False
        try:
            processed = bool(seam.stat("processed", fd).st_mode & 0o100)
        except OSError as err:
            if err.errno != errno.ENOENT:
                raise Fatal(f"unable to stat {d}/processed", err.errno) from None
        if processed:
            self._unlink_quietly("previous")
            self.finish("processed", "s")
        else:
            self._unlink_quietly("processed")
            self.finish("previous", "u")
        self.finish("current", "u")
        try:
            seam.close(seam.create("state", 0o644, fd))
        except OSError as err:
            raise Fatal(f"unable to write to {d}/state", err.errno) from None
        try:
            self.current = seam.open("current", _APPEND, 0o600, dir_fd=fd)
        except OSError as err:
            raise Fatal(f"unable to write to {d}/current", err.errno) from None
        try:
            seam.fchmod(self.current, 0o644)
        except OSError as err:
            raise Fatal(f"unable to set mode of {d}/current", err.errno) from None
        self.bytes = 0

    def _unlink_quietly(self, name: str) -> None:
        try:
            self.seam.unlink(name, self.dirfd)
        except OSError:
            pass

    def publish(self) -> None:
        """``M``: create the directory's counter block (after open(): the lock is ours, so is the block).

        Counters are never worth a lost line: if the block cannot be made,
        multilog warns once and logs on without it.
        """
        seam, d = self.seam, self.path
        try:
            path = seam.counters_path(self.dirfd)
        except OSError as err:
            seam.warn(f"unable to publish counters for {d}: {errtext(err.errno)}")
            return
        try:
            directory = os.path.abspath(d)
        except OSError:  # the working directory is gone: keep the name as given
            directory = d
        try:
            self.meter = seam.counters(path, directory)
        except OSError as err:
            seam.warn(f"unable to publish counters for {d} in {path}: {errtext(err.errno)}")

    # -- pausing ----------------------------------------------------------------------------------
    def _pause(self, text: str, err: int | None, crashed: bool = False) -> None:
        """A failure: count it (a processor crash, else a write error), warn, sleep 5 s."""
        meter = self.meter
        if meter is not None:
            if crashed:
                meter.crashed()
            else:
                meter.error()
        self.seam.warn(f"{text}, pausing: {errtext(err)}")
        self._sleep()

    def _sleep(self) -> None:
        meter = self.meter
        if meter is None:
            self.seam.sleep(PAUSE)
            return
        start = self.seam.monotonic()
        self.seam.sleep(PAUSE)
        meter.paused(int((self.seam.monotonic() - start) * 1e9))

    def _retry(self, text: str, fn: Callable[..., R], *args: object) -> R:
        while True:
            try:
                return fn(*args)
            except OSError as err:
                self._pause(text, err.errno)

    # -- writing ----------------------------------------------------------------------------------
    def put(self, data: bytes, lines: int) -> None:
        """Queue DATA, holding LINES newlines, for current (written by flush, or now if much is queued).

        LINES feeds the ``M`` counters only (the engine may pass 0 when no directory has ``M``).
        """
        self._buf.append(data)
        self._pending += len(data)
        self._lines += lines
        if self._pending >= FLUSH_AT:
            self.flush()

    def flush(self) -> None:
        """Write everything queued, rotating where 0.76 would."""
        if not self._pending:
            return
        buf = self._buf
        data = buf[0] if len(buf) == 1 else b"".join(buf)
        buf.clear()
        self._pending = 0
        self.write(data)
        if self.meter is not None:
            self.meter.wrote(len(data), self._lines)
        self._lines = 0

    def write(self, data: bytes) -> None:
        """0.76's c_write() rules over the whole of DATA (which must be bytes)."""
        seam, size, low = self.seam, self.size, self.size - 2000
        view = memoryview(data)
        off, end = 0, len(data)
        while off < end:
            if self.bytes >= size:
                self.rotate()
            n = end - off
            room = size - self.bytes
            if n >= room:
                n = room
            if self.bytes + n >= low:
                k = data.rfind(b"\n", off, off + n)
                if k >= 0:
                    n = k + 1 - off
            while True:
                try:
                    w = seam.write(self.current, view[off:off + n])
                except OSError as err:
                    self._pause(f"unable to write to {self.path}/current", err.errno)
                    continue
                if w > 0:
                    break
                self._pause(f"unable to write to {self.path}/current", seam.errno)
            if not self.bytes:
                self.started = seam.monotonic()
            off += w
            self.bytes += w
            if self.bytes >= low and data[off - 1] == 10:
                self.rotate()

    # -- rotation ---------------------------------------------------------------------------------
    def rotate(self) -> None:
        """0.76's fullcurrent(): current becomes an old file (through the processor, if any)."""
        seam, d, fd = self.seam, self.path, self.dirfd
        self._retry(f"unable to write {d}/current to disk", seam.fsync, self.current)
        seam.close(self.current)
        self._retry(f"unable to rename current to previous in directory {d}", seam.rename, "current", "previous", fd)
        self.current = self._retry(f"unable to create {d}/current", seam.open, "current", _APPEND, 0o600, fd)
        self.bytes = 0
        self._retry(f"unable to set mode of {d}/current", seam.fchmod, self.current, 0o644)
        self._retry(f"unable to set mode of {d}/previous", seam.chmod, "previous", 0o744, fd)
        if not self.processor:
            self.finish("previous", "s")
            if self.meter is not None:
                self.meter.rotated()
            return
        while True:
            try:
                pid = seam.spawn(self.processor, fd)
            except OSError as err:
                self._pause(f"unable to fork for processor in {d}", err.errno)
                continue
            try:
                status = seam.wait(pid)
            except OSError as err:
                self._pause(f"wait failed for processor in {d}", err.errno)
            else:
                if status & 127:
                    self._pause(f"processor crashed in {d}", seam.errno, crashed=True)
                elif not (status >> 8) & 255:
                    break
                elif self.meter is not None:
                    self.meter.failed()  # counted before the warning, as every failure
            seam.warn(f"processor failed in {d}, pausing")
            self._sleep()
        out = self._retry(f"unable to create {d}/processed", seam.open, "processed", _APPEND, 0o600, fd)
        self._retry(f"unable to write {d}/processed to disk", seam.fsync, out)
        self._retry(f"unable to set mode of {d}/processed", seam.fchmod, out, 0o744)
        seam.close(out)
        new = self._retry(f"unable to create {d}/newstate", seam.open, "newstate", _APPEND, 0o600, fd)
        self._retry(f"unable to write {d}/newstate to disk", seam.fsync, new)
        seam.close(new)
        self._retry(f"unable to remove {d}/previous", seam.unlink, "previous", fd)
        self._retry(f"unable to rename newstate to state in directory {d}", seam.rename, "newstate", "state", fd)
        self.finish("processed", "s")
        if self.meter is not None:
            self.meter.rotated()

    def finish(self, name: str, code: str) -> None:
        """Turn NAME into ``@<now>.CODE`` (unless it is already linked elsewhere), then drop the oldest files."""
        seam, d, fd = self.seam, self.path, self.dirfd
        while True:
            try:
                st = seam.stat(name, fd)
                break
            except OSError as err:
                if err.errno == errno.ENOENT:
                    return
                self._pause(f"unable to stat {d}/{name}", err.errno)
        if st.st_nlink == 1:
            while True:
                old = f"@{seam.now().hex()}.{code}"
                try:
                    seam.link(name, old, fd)
                    break
                except OSError as err:
                    self._pause(f"unable to link to {d}/{old}", err.errno)
        self._retry(f"unable to remove {d}/{name}", seam.unlink, name, fd)
        while True:
            try:
                names = seam.listdir(fd)
                break
            except OSError as err:
                self._pause(f"unable to read {d}", err.errno)
        self._prune(names)

    def _prune(self, names: list[str]) -> None:
        """Keep at most n−1 old files (0.76's filesfit()), then, with ``S``, at most that many bytes of them."""
        old = [name for name in names if name[:1] == "@" and len(name) >= 25]
        while len(old) >= self.num:
            if not self._drop(old):
                return
        if self.total and old:
            sizes = {}
            for name in old:
                try:
                    sizes[name] = self.seam.stat(name, self.dirfd).st_size
                except OSError:
                    sizes[name] = 0
            total = sum(sizes.values())
            while old and total > self.total:
                gone = self._drop(old)
                if not gone:
                    return
                total -= sizes.get(gone, 0)

    def _drop(self, old: list[str]) -> str | None:
        """Remove the oldest of OLD as 0.76 picks it (smallest first 25 bytes); None if that fails."""
        first = "@z"
        for name in old:
            if name < first:
                first = name[:25]
        for name in old:
            if name.startswith(first):
                try:
                    self.seam.unlink(name, self.dirfd)
                except OSError:
                    return None  # 0.76 would list and retry forever; stop pruning instead
                old.remove(name)
                return name
        return None

    # -- the end ----------------------------------------------------------------------------------
    def due(self, now: float) -> bool:
        """Whether ``T`` age rotation wants current rotated at monotonic time NOW."""
        return bool(self.age) and self.bytes > 0 and now - self.started >= self.age

    def deadline(self) -> float | None:
        """Monotonic time at which age rotation is next due (None: never, as things stand)."""
        if not self.age or not self.bytes:
            return None
        return self.started + self.age

    def close(self) -> None:
        """At the end of input: flush, fsync, mode 0744 (closed cleanly).  The lock goes with the process."""
        self.flush()
        d = self.path
        self._retry(f"unable to write {d}/current to disk", self.seam.fsync, self.current)
        self._retry(f"unable to set mode of {d}/current", self.seam.fchmod, self.current, 0o744)

    def release(self) -> None:
        """Close every descriptor and remove the counter block (the command's last act; tests, embedding)."""
        if self.meter is not None:
            self.meter.close(unlink=True)
            self.meter = None
        for fd in (self.current, self.lockfd, self.dirfd):
            if fd >= 0:
                self.seam.close(fd)
        self.current = self.lockfd = self.dirfd = -1
