"""The files of one service directory, opened and written exactly as daemontools' supervise does.

Start-up follows 0.76's supervise step by step (chdir, ``down``, ``mkdir supervise``,
the flock on ``supervise/lock``, the ``control`` FIFO, the first status, the
``ok`` FIFO) with supervise's own error texts, so ``supervise DIR`` can die
with them and svscan can print them for a service it cannot take on yet.

Everything is reached through a directory fd instead of chdir, because one
process holds hundreds of services; a renamed service directory keeps working.
``control`` is opened once read-write: on Linux that is both the reader that
makes ``svc`` succeed and the writer that keeps the reader from seeing EOF, in
one descriptor instead of 0.76's two.

A service directory belongs to the service's owner, who may not be the user
supervise runs as (root, most often): anything in it can be a link planted
to make root write elsewhere.  So ``supervise/`` is opened once, without
following a link (unless root or this user made the link: Debian's
``supervise -> /var/run/...``), and every file in it is reached through that
descriptor: the fixed names with ``O_NOFOLLOW``, the temporary ``*.new``
names made afresh with ``O_EXCL`` (prefork/atomicfile.py).
"""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import stat

from prefork.atomicfile import failed_step, replace, swap_pays
from prefork.control import statusfile
from prefork.djb import errstr

_NOFOLLOW = os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC  # for every fixed name in supervise/
SETTING_BYTES = 64  # read of an s6 setting file: its first line is all that counts, and it is short
# s6's files holding one number each (docs/CONTRACTS.md, s6 service directories), and what garbage in each means.
SETTINGS = {
    "notification-fd": "ignored",
    "timeout-kill": "ignored",
    "timeout-finish": "using 5000",
    "down-signal": "using SIGTERM",
    # prefork's restart policy (docs/CONTRACTS.md, Restart policy)
    "backoff-max": "ignored",
    "backoff-reset": "using 10000",
    "failure-deaths": "ignored",
    "failure-window": "using 60000",
}


class StartupError(Exception):
    """A start-up step failed; ``str()`` is supervise's message after ``supervise: fatal: ``."""


class ServiceDir:
    """Open descriptors of a service directory (all close-on-exec)."""

    __slots__ = ("display", "dirfd", "supfd", "lock_fd", "control_fd", "ok_fd", "event_fd", "codec", "last", "swap")

    def __init__(self, display: str, dirfd: int, codec: statusfile.Codec) -> None:
        self.display = display
        self.dirfd = dirfd
        self.supfd = -1  # supervise/, opened once: a later swap of the name reaches nothing of ours
        self.lock_fd = -1
        self.control_fd = -1
        self.ok_fd = -1
        self.event_fd = -1  # s6's event/ fifodir, -1 in the other formats (or when it cannot be had)
        self.codec = codec  # the status format (control/statusfile.py) of this supervisor's mode
        self.last: statusfile.Status | None = None  # the status last written (s6 derives its events from it)
        self.swap = False  # status files are swapped in, not renamed over (prefork/atomicfile.py, swap_pays)

    # -- start-up ------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str, display: str, *, base_fd: int | None = None,
             codec: statusfile.Codec = statusfile.DAEMONTOOLS) -> tuple[ServiceDir, bool]:
        """Steps 1-5 of supervise's start-up; returns the open dir and whether ``down`` exists.

        The caller writes the first status and then calls :meth:`open_ok`.  Besides 0.76's flock, the
        lock file gets a POSIX (fcntl) lock: that is what s6-svok asks about (F_GETLK), in every mode.
        """
        try:
            dirfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY, dir_fd=base_fd)
        except OSError as err:
            raise StartupError(f"unable to chdir to {display}: {errstr(err)}") from None
        sd = cls(display, dirfd, codec)
        try:
            try:
                os.stat("down", dir_fd=dirfd)
                down = True
            except FileNotFoundError:
                down = False
            except OSError as err:
                raise StartupError(f"unable to stat {display}/down: {errstr(err)}") from None
            sd.supfd = sd._open_supervise_dir()
            sd.swap = swap_pays(sd.supfd)
            try:
                sd.lock_fd = os.open("lock", os.O_WRONLY | os.O_NONBLOCK | os.O_APPEND | os.O_CREAT | _NOFOLLOW,
                                     0o600, dir_fd=sd.supfd)
                fcntl.flock(sd.lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.lockf(sd.lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                raise StartupError(f"unable to acquire {display}/supervise/lock: {errstr(err)}") from None
            _mkfifo("control", sd.supfd)
            sd.control_fd = _open_control(display, sd.supfd)
            if codec.event_dir:
                sd.event_fd = _open_event_dir(dirfd)
        except BaseException:
            sd.close()
            raise
        return sd, down

    def _open_supervise_dir(self) -> int:
        """``mkdir supervise``, then the directory open; a failure reads as 0.76's failure to open the lock in it.

        A link is followed only if root or this process's user made it: the
        service's owner could otherwise point it at any directory of root's.
        """
        try:
            os.mkdir("supervise", 0o700, dir_fd=self.dirfd)
        except OSError:
            pass
        where = f"{self.display}/supervise"
        try:
            node = os.open("supervise", os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.dirfd)
        except OSError as err:
            raise StartupError(f"unable to acquire {where}/lock: {errstr(err)}") from None
        try:
            st = os.fstat(node)
            if stat.S_ISDIR(st.st_mode):
                return os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=node)
            if not stat.S_ISLNK(st.st_mode):
                raise NotADirectoryError(errno.ENOTDIR, "not a directory")
            if st.st_uid not in (0, os.geteuid()):
                raise StartupError(
                    f"unable to acquire {where}/lock: {where} is a symbolic link of uid {st.st_uid}, not followed")
            target = os.readlink("", dir_fd=node)  # the link we checked, not whatever the name is by now
            try:
                os.mkdir(target, 0o700, dir_fd=self.dirfd)  # Debian's patch: a dangling link gets its target made
            except OSError:
                pass
            return os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=self.dirfd)
        except OSError as err:
            raise StartupError(f"unable to acquire {where}/lock: {errstr(err)}") from None
        finally:
            os.close(node)

    def open_ok(self) -> None:
        """Step 7: the ``ok`` FIFO, held open for reading for life (svok's sign that supervise runs)."""
        _mkfifo("ok", self.supfd)
        try:
            self.ok_fd = os.open("ok", os.O_RDONLY | os.O_NONBLOCK | _NOFOLLOW, dir_fd=self.supfd)
        except OSError as err:
            raise StartupError(f"unable to read {self.display}/supervise/ok: {errstr(err)}") from None

    def close(self) -> None:
        for name in ("ok_fd", "control_fd", "event_fd", "lock_fd", "supfd", "dirfd"):
            fd = getattr(self, name)
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
                setattr(self, name, -1)

    # -- s6's setting files ---------------------------------------------------------------
    def setting(self, name: str) -> tuple[int | None, str | None]:
        """(value, warning) of the s6 setting file NAME: (None, None) if it is absent.

        As s6-supervise reads them: the first line only, which must be the whole
        number (decimal; ``down-signal`` also a name, ``HUP`` or ``SIGHUP`` in
        any case).  Anything else is (None, the one-line warning).  The file is
        read every time it is needed, like s6's, so an edit takes effect at once.
        """
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC, dir_fd=self.dirfd)
        except FileNotFoundError:
            return None, None
        except OSError as err:
            return None, f"unable to read {self.display}/{name}: {errstr(err)}, {SETTINGS[name]}"
        try:
            data = os.read(fd, SETTING_BYTES)
        except OSError as err:
            return None, f"unable to read {self.display}/{name}: {errstr(err)}, {SETTINGS[name]}"
        finally:
            os.close(fd)
        value = parse_setting(name, data.split(b"\n", 1)[0])
        if value is None:
            return None, f"invalid {self.display}/{name}, {SETTINGS[name]}"
        return value, None

    # -- status ----------------------------------------------------------------------------
    def write_status(self, label: bytes, pid: int, paused: bool, want: bytes, term_sent: bool, *, wstat: int = 0,
                     finishing: bool = False, ready_label: bytes = b"", exiting: bool = False,
                     finish_pid: int = 0) -> str | None:
        """Write supervise/status (and runit's stat and pid) via NAME.new + rename, then tell s6's event
        listeners what changed; a warning text on failure.

        WANT is b"u", b"d" or b"o"; the bytes are control/statusfile.py's, in this directory's format.
        """
        codec = self.codec
        status = codec.record(label, pid, paused, want, term_sent, wstat=wstat, finishing=finishing,
                              ready_label=ready_label, previous=self.last, exiting=exiting, finish_pid=finish_pid)
        previous, self.last = self.last, status
        for name, data in codec.files(status):
            warning = self._replace(name, data)
            if warning is not None:
                return warning
        self.notify(codec.events(previous, status))
        return None

    def notify(self, letters: bytes) -> None:
        """Write LETTERS to every listener's FIFO in ``event/``, as s6-supervise does
        (docs/CONTRACTS.md, s6 status and events).

        A listener (s6-svwait, s6-svlisten1) makes ``ftrig1:@<TAI64N hex>:<6 chars>`` there and reads it.
        Only FIFOs of that name shape are written, never blocking: a FIFO with no reader (ENXIO) is a
        dead listener's and is removed, as s6 does; a full one loses the letters; anything else there
        (a regular file, a link, a device) is left alone -- s6-supervise would write into a regular file.

        The FIFOs are all opened first and then written one right after the other: each write wakes a
        listener, which wants the CPU this process is on (docs/ARCHITECTURE.md, "The readiness path").
        NOTIFY_BATCH of them at a time bound the descriptors held.
        """
        if not letters or self.event_fd < 0:
            return
        try:
            names = os.listdir(self.event_fd)
        except OSError:
            return
        fds: list[int] = []
        for name in names:
            if len(name) != _LISTENER_LEN or not name.startswith(_LISTENER_PREFIX):
                continue
            fd = self._listener(name)
            if fd >= 0:
                fds.append(fd)
                if len(fds) == NOTIFY_BATCH:
                    _write_all(fds, letters)
        _write_all(fds, letters)

    def _listener(self, name: str) -> int:
        """NAME in event/ opened for writing if it is a FIFO with a reader, else -1 (a readerless one removed)."""
        try:
            if not stat.S_ISFIFO(os.stat(name, dir_fd=self.event_fd, follow_symlinks=False).st_mode):
                return -1
            fd = os.open(name, os.O_WRONLY | os.O_NONBLOCK | _NOFOLLOW, dir_fd=self.event_fd)
        except OSError as err:
            if err.errno == errno.ENXIO:
                try:
                    os.unlink(name, dir_fd=self.event_fd)
                except OSError:
                    pass
            return -1
        try:
            if stat.S_ISFIFO(os.fstat(fd).st_mode):  # still the FIFO checked above
                return fd
        except OSError:
            pass
        os.close(fd)
        return -1

    def set_down(self, present: bool) -> str | None:
        """Create (PRESENT) or remove the service's ``down`` file, as s6-svc -D/-U/-Q ask; a warning text on failure."""
        try:
            if present:
                os.close(os.open("down", os.O_WRONLY | os.O_CREAT | os.O_NONBLOCK | _NOFOLLOW, 0o644,
                                 dir_fd=self.dirfd))
            else:
                os.unlink("down", dir_fd=self.dirfd)
        except FileNotFoundError:
            return None
        except OSError as err:
            return f"unable to {'create' if present else 'remove'} {self.display}/down: {errstr(err)}"
        return None

    # -- the restart state (control/restartfile.py) -------------------------------------------
    def read_private(self, name: str, limit: int) -> bytes | None:
        """The first LIMIT bytes of ``supervise/NAME`` if it is a regular file of our own user, else None
        (read_own)."""
        return read_own(self.supfd, name, limit)

    def write_private(self, name: str, data: bytes | None) -> str | None:
        """Put DATA, one line, at the start of ``supervise/NAME`` (mode 0600), or remove it (None); a warning
        text on failure.

        The file is rewritten in place when it is already a regular file of our own with one link: one
        pwrite (and a truncation when it shrinks) instead of a new inode and a rename, which on ext4 also
        forces the data out (about 130 µs of CPU, at every death of a service in back-off).  The one reader
        is the next supervisor, after this one has died: it reads the first line only, and a process killed
        with SIGKILL never leaves a small pwrite half done; after a crash the boot id differs and the file is
        ignored anyway (control/restartfile.py).  Anything else at NAME (a link, a FIFO, another user's file, a second
        hard link) is replaced through ``NAME.new`` and a rename, never written through.
        """
        if data is not None:
            try:
                fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_NONBLOCK | os.O_CLOEXEC | _NOFOLLOW, 0o600,
                             dir_fd=self.supfd)
            except OSError:
                fd = -1
            if fd >= 0:
                try:
                    st = os.fstat(fd)
                    if stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid() and st.st_nlink == 1:
                        if os.pwrite(fd, data, 0) == len(data):
                            if st.st_size > len(data):
                                os.ftruncate(fd, len(data))
                            return None
                except OSError:
                    pass
                finally:
                    os.close(fd)
            try:
                replace(name, data, f"{name}.new", 0o600, dir_fd=self.supfd, chmod=0o600)
            except OSError as err:
                return f"unable to write {self.display}/supervise/{name}: {errstr(err)}"
            return None
        try:
            os.unlink(name, dir_fd=self.supfd)
        except FileNotFoundError:
            pass
        except OSError as err:
            return f"unable to remove {self.display}/supervise/{name}: {errstr(err)}"
        return None

    def _replace(self, name: str, data: bytes) -> str | None:
        new = f"{name}.new"
        try:
            # never through a link (see the module's text); run state, swapped in where that pays
            replace(name, data, new, 0o644, dir_fd=self.supfd, swap=self.swap)
        except OSError as err:
            shown = f"{self.display}/supervise/{new}"
            what = {"create": "unable to open", "write": "unable to write"}.get(failed_step(err))
            return f"{what} {shown}: {errstr(err)}" if what else f"unable to rename {shown} to {name}: {errstr(err)}"
        return None


def _write_all(fds: list[int], letters: bytes) -> None:
    """LETTERS to each FIFO in FDS (full or gone: lost, as with s6), then close them all and empty FDS."""
    for fd in fds:
        try:
            os.write(fd, letters)
        except OSError:
            pass
    for fd in fds:
        os.close(fd)
    fds.clear()


def read_own(dir_fd: int, name: str, limit: int) -> bytes | None:
    """The first LIMIT bytes of NAME in DIR_FD if it is a regular file of our own user, else None: only the
    supervisor writes its files in ``supervise/``, so a link, a FIFO or somebody else's file there is not read."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | _NOFOLLOW, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            return None
        return os.read(fd, limit)
    except OSError:
        return None
    finally:
        os.close(fd)


def parse_setting(name: str, line: bytes) -> int | None:
    """The value of LINE, the first line of the setting file NAME; None if s6 would call it invalid."""
    if line.isdigit() and line.isascii():
        value = int(line)
        if name == "down-signal":
            return value if 0 < value < signal.NSIG else None
        return value if value < 1 << 32 else None  # s6 reads an unsigned int
    if name != "down-signal" or not line.isascii() or not line.isalnum():
        return None
    text = line.decode().upper()
    sig = signal.Signals.__members__.get(text if text.startswith("SIG") else "SIG" + text)
    return None if sig is None else int(sig)


def _open_control(display: str, supfd: int) -> int:
    """supervise/control opened read-write; on failure, 0.76's message for whichever of its two opens fails.

    0.76 opens it for reading, then for writing: a directory passes the first
    and fails the second ("unable to write ...: is a directory").  A control
    that is no FIFO is refused: 0.76 would poll a regular file as always
    readable and spin; epoll cannot watch one at all.  Nor is a link: it
    could lead to somebody else's FIFO, or a device.
    """
    try:
        fd = os.open("control", os.O_RDWR | os.O_NONBLOCK | _NOFOLLOW, dir_fd=supfd)
    except OSError as err:
        try:
            os.close(os.open("control", os.O_RDONLY | os.O_NONBLOCK | _NOFOLLOW, dir_fd=supfd))
        except OSError as read_err:
            raise StartupError(f"unable to read {display}/supervise/control: {errstr(read_err)}") from None
        raise StartupError(f"unable to write {display}/supervise/control: {errstr(err)}") from None
    if not stat.S_ISFIFO(os.fstat(fd).st_mode):
        os.close(fd)
        raise StartupError(f"{display}/supervise/control exists but is not a fifo")
    return fd


NOTIFY_BATCH = 64  # listener FIFOs held open at once by notify()
_LISTENER_PREFIX = "ftrig1:@"  # s6's listener FIFOs: ftrig1:@ + 24 hex digits of TAI64N + ":" + 6 characters
_LISTENER_LEN = len(_LISTENER_PREFIX) + 24 + 1 + 6


def _open_event_dir(dirfd: int) -> int:
    """s6's ``event/`` in the service directory: made as s6-supervise makes it (mode 3730: the supervisor's
    group may add listener FIFOs, nobody may remove another's), opened without following a link; -1
    when that cannot be had (then there are no events, the service is supervised all the same)."""
    try:
        os.mkdir("event", 0o700, dir_fd=dirfd)
        made = True
    except OSError:
        made = False
    try:
        fd = os.open("event", os.O_RDONLY | os.O_DIRECTORY | _NOFOLLOW, dir_fd=dirfd)
    except OSError:
        return -1
    if made:
        try:
            os.fchown(fd, -1, os.getegid())
            os.fchmod(fd, 0o3730)
        except OSError:
            pass
    return fd


def _mkfifo(path: str, dirfd: int) -> None:
    try:
        os.mkfifo(path, 0o600, dir_fd=dirfd)
    except OSError:
        pass  # EEXIST is the normal case; anything else the open that follows reports, as in 0.76


def is_dir(path: str, dir_fd: int | None = None) -> bool:
    """stat() following symlinks says directory."""
    try:
        return stat.S_ISDIR(os.stat(path, dir_fd=dir_fd).st_mode)
    except OSError:
        return False
