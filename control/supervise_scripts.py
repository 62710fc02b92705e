"""supervise-scripts 4.0 (Bruce Guenter's ``svc-*`` shell scripts) in one module.

The originals are small ``sh`` scripts around ``svc``, ``svok`` and ``svstat``;
people type them and other scripts parse their output, so the texts, the
exit codes and the ``/service`` + ``/var/service`` layout stay as they were.
Here the clients are called in-process (no fork per check), and the waits
poll a few times a second instead of once, which prints the same dots but
returns as soon as the service got there.

Where the originals had bugs this does what was meant: ``svc-remove`` really
stops both supervise processes and removes their files (the brace list was
never expanded under dash), ``svc-kill`` refuses an unknown signal name
instead of taking it for a service, and ``svc-kill -l`` lists the signals.

Each command is a thin entry function over library functions that take a
:class:`Settings` (directories, timeout, where the output goes).

The scripts run as root on service directories that may belong to the
service's owner.  Where they create, chmod or remove a file in one
(``down``, ``run``, the sticky bit, ``supervise/``), a symbolic link at the
last step of the path is followed only if root or this user made it, as
svc and supervise do for ``supervise``: the owner's link fails with ELOOP
("symbolic link loop") instead of making root touch ``/etc/nologin``,
``chmod -t /tmp`` or empty ``/etc``.
"""

from __future__ import annotations

import os
import stat
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import NoReturn, Protocol

from prefork.control.svc import control
from prefork.control.svok import open_trusted, running, trusted_link
from prefork.control.svstat import status_line
from prefork.djb import errstr, write_line
from prefork.options import UsageError, getopt

POLL = 0.05  # seconds between checks inside each one-second step of a wait

# svc-kill's table: signal name (with or without SIG) or number -> svc's command letter.
SIGNAL_NAMES = {"STOP": "p", "CONT": "c", "HUP": "h", "ALRM": "a", "INT": "i", "TERM": "t", "KILL": "k"}
SIGNAL_NUMBERS = {"1": "h", "14": "a", "2": "i", "15": "t", "9": "k"}
SIGNAL_LIST = (
    "svc-kill accepts the following signals:\nSIGALRM\nSIGCONT\nSIGHUP\nSIGINT\nSIGKILL\nSIGSTOP\nSIGTERM (default)\n"
)


class Exit(Exception):
    """End the command with ``code``, after printing ``message`` (a whole line) to stderr if there is one."""

    def __init__(self, code: int, message: str | None = None) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message


def fatal(prog: str, text: str) -> NoReturn:
    """The scripts' ``fatal``: ``PROG: Fatal error: TEXT`` on stderr, exit 1."""
    raise Exit(1, f"{prog}: Fatal error: {text}")


class Output(Protocol):
    """Where a script's messages and dots go: stdout's buffer, a test's BytesIO, or :class:`_Null`."""

    def write(self, data: bytes, /) -> int: ...

    def flush(self) -> None: ...


class _Null:
    """Where ``-q`` output goes when a script runs another one quietly (``svc-stop -q`` in svc-remove)."""

    def write(self, data: bytes) -> int:
        return len(data)

    def flush(self) -> None:
        pass


@dataclass
class Settings:
    """What the template takes from the environment, plus the output stream and the clock (tests swap them)."""

    scandir: str = "/service"  # SVSCANDIR: where the symlinks live and svscan scans
    lockdir: str = "/var/service"  # SVCLOCKDIR: where relative service directories are created
    timeout_text: str = "15"  # SVCTIMEOUT: seconds (one dot each) before a wait gives up
    prog: str = "svc"  # the command, for errors in the settings themselves
    out: Output = field(default_factory=lambda: sys.stdout.buffer)
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic

    @classmethod
    def from_environ(cls, prog: str, environ: dict[str, str] | None = None) -> Settings:
        """``${SVSCANDIR-/service}``, ``${SVCLOCKDIR-/var/service}``, ``${SVCTIMEOUT-15}`` (empty counts as unset)."""
        env = os.environ if environ is None else environ
        return cls(
            scandir=env.get("SVSCANDIR") or "/service",
            lockdir=env.get("SVCLOCKDIR") or "/var/service",
            timeout_text=env.get("SVCTIMEOUT") or "15",
            prog=prog,
        )

    @property
    def timeout(self) -> int:
        """SVCTIMEOUT as a number; anything else is an error (the scripts would have waited forever)."""
        text = self.timeout_text.strip()
        if not (text.isascii() and text.isdigit()):
            fatal(self.prog, f"SVCTIMEOUT is not a number: '{self.timeout_text}'")
        return int(text)

    def echon(self, text: str) -> None:
        """Print without a newline and flush at once, so dots show up live."""
        try:
            self.out.write(text.encode("utf-8", "surrogateescape"))
            self.out.flush()
        except BrokenPipeError:
            pass

    def echo(self, text: str) -> None:
        self.echon(text + "\n")

    def quiet(self) -> Settings:
        """The same settings with the output thrown away."""
        return replace(self, out=_Null())


# -- the template: options, operand count, chdir ----------------------------------------------------------


@dataclass(frozen=True)
class Command:
    """One script's ``usage MIN MAX OPTS MSG`` line (``-q`` is always accepted)."""

    name: str
    minimum: int
    maximum: int
    opts: str
    msg: str
    cd: bool = True  # svc-build uses usage_nocd

    def usage_line(self, argv0: str) -> str:
        return f"{argv0}: usage: {self.name} [-q] {self.msg}"


def parse_options(cmd: Command, argv0: str, args: Sequence[str]) -> tuple[set[str], list[str]]:
    """getopts over ``q`` + cmd.opts: bundled letters, ``--`` ends them, the first operand ends them.

    An unknown letter prints ``NAME: illegal option -- X`` and the usage line, exit 1 (the scripts' code).
    """
    if list(args[:1]) == ["--help"]:
        sys.stdout.write(f"usage: {cmd.name} [-q] {cmd.msg}\n\nsupervise-scripts 4.0 (SVSCANDIR, SVCLOCKDIR, SVCTIMEOUT); "
                         "-q: nothing on stdout\n")
        sys.stdout.flush()
        raise Exit(0)
    try:
        found, operands = getopt(list(args), "q" + cmd.opts, {})  # {}: no long options, so --x is refused
    except UsageError as e:
        write_line(f"{cmd.name}: {e.text}")
        raise Exit(1, cmd.usage_line(argv0)) from None
    return {name[1:] for name, _ in found}, operands


def check_count(cmd: Command, argv0: str, operands: Sequence[str]) -> None:
    """``$0: usage: NAME [-q] MSG`` on stderr and exit 1 unless MIN <= operands <= MAX."""
    if not cmd.minimum <= len(operands) <= cmd.maximum:
        raise Exit(1, cmd.usage_line(argv0))


def silence_stdout() -> None:
    """``exec >/dev/null``: everything after ``-q`` prints nothing on stdout."""
    sys.stdout.flush()
    fd = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(fd, 1)
    finally:
        os.close(fd)


def enter(settings: Settings) -> None:
    """The template's ``cd "$SVSCANDIR"``: service names are relative to the scan directory."""
    try:
        os.chdir(settings.scandir)
    except OSError as err:
        fatal(settings.prog, f"unable to chdir to {settings.scandir}: {errstr(err)}")


def template(cmd: Command, argv: Sequence[str]) -> tuple[set[str], list[str], Settings]:
    """Options, ``-q``, operand count, settings and (unless usage_nocd) the chdir into SVSCANDIR."""
    argv0 = argv[0] if argv else cmd.name
    flags, operands = parse_options(cmd, argv0, argv[1:])
    if "q" in flags:
        silence_stdout()
    check_count(cmd, argv0, operands)
    settings = Settings.from_environ(cmd.name)
    if cmd.cd:
        enter(settings)
    return flags, operands, settings


def run(body: Callable[[], int]) -> NoReturn:
    """Run a command body and exit with its code; an :class:`Exit` prints its message first."""
    try:
        code = body()
    except KeyboardInterrupt:
        code = 128 + 2  # as the shell scripts die on ^C: quietly
    except Exit as end:
        code = end.code
        if end.message:
            try:
                sys.stdout.flush()
            except OSError:
                pass
            write_line(end.message)
    sys.exit(code)


# -- svok / svstat / svc, in-process -------------------------------------------------------------------------


def svok(directory: str, seen: set[str] | None = None, dirfd: int | None = None) -> int:
    """svok's exit code: 0 supervise running, 100 not, 111 (after svok's message on stderr) on other errors.

    A wait passes ``seen`` so that a message repeated by its polling is printed once.  DIRFD:
    DIRECTORY already opened by the caller.
    """
    try:
        return 0 if running(directory, dirfd) else 100
    except OSError as err:
        text = f"svok: fatal: {_svok_text(directory, err)}"
        if seen is None or text not in seen:
            write_line(text)
            if seen is not None:
                seen.add(text)
        return 111


def _svok_text(directory: str, err: OSError) -> str:
    """svok's wording: ``running`` names the directory when it cannot be entered, else ``DIR/supervise/ok``."""
    if err.filename == directory:
        return f"unable to chdir to {directory}: {errstr(err)}"
    return f"unable to open {directory}/supervise/ok: {errstr(err)}"


def svstat(directory: str) -> str:
    """svstat's line for one directory, without the newline."""
    return f"{directory}: {status_line(directory)}"


def svc(directory: str, commands: str, dirfd: int | None = None) -> None:
    """``svc -COMMANDS DIR``: send the bytes; svc's warning goes to stderr and never fails the script."""
    problem = control(directory, commands.encode("ascii"), dirfd)
    if problem is not None:
        write_line(f"svc: warning: {problem}")


def _shows_up(directory: str) -> bool:
    """``svstat DIR | fgrep ' up '``."""
    return " up " in " " + status_line(directory)


def isup(directory: str, seen: set[str] | None = None) -> int:
    """svc-isup's exit code: svok's code if supervise is not running (100), else 0 up / 1 not up."""
    code = svok(directory, seen)
    if code:
        return code
    return 0 if _shows_up(directory) else 1


def isdown(directory: str) -> int:
    """svc-isdown's exit code: 0 when not up, which includes supervise not running."""
    return 1 if _shows_up(directory) else 0


# -- waits -----------------------------------------------------------------------------------------------------


def poll(settings: Settings, test: Callable[[], bool], *, dot_first: bool) -> bool:
    """Wait up to SVCTIMEOUT seconds for ``test()``, printing a dot for each second, the scripts' way.

    The caller has already checked once.  ``dot_first`` prints each dot at the start of its second
    (svc-start's supervise loop), otherwise at its end (svc-waitup/-waitdown).  The count of dots is
    the original's; only the return comes as soon as the test passes, not at the next whole second.
    """
    begin = settings.clock()
    for second in range(1, max(settings.timeout, 1) + 1):
        if dot_first:
            if test():
                return True
            settings.echon(".")
        deadline = begin + second
        while (left := deadline - settings.clock()) > 0:
            settings.sleep(min(POLL, left))
            if test():
                return True
        if not dot_first:
            settings.echon(".")
    return False


def waitup(settings: Settings, directory: str) -> bool:
    """svc-waitup: True at once if up, else after the wait (False = timed out).

    A service that declares readiness (its prefork supervisor gave its ./run a
    ``notification-fd``) is waited for until it is ready, not only up: the
    supervisor's service table says both (docs/reference/supervise-scripts.md).
    """
    seen: set[str] = set()
    if up_and_ready(directory, seen):
        return True
    return poll(settings, lambda: up_and_ready(directory, seen), dot_first=False)


def up_and_ready(directory: str, seen: set[str]) -> bool:
    """Up, and ready too if the running service notifies readiness (known only from a prefork supervisor's table,
    whose entry must be of the same run as the status file: the table is written just after it)."""
    code = svok(directory, seen)
    line = status_line(directory) if not code else ""
    if " up " not in " " + line:
        return False
    from prefork.control.servicetable_read import FLAG_NOTIFYING, entry_for

    entry = entry_for(directory)
    if entry is None or not entry.flags & FLAG_NOTIFYING:
        return True
    return entry.ready and f"(pid {entry.pid})" in line


def waitdown(settings: Settings, directory: str) -> bool:
    """svc-waitdown: True at once if down, else loop while svc-isup says up (False = timed out)."""
    if isdown(directory) == 0:
        return True
    seen: set[str] = set()
    return poll(settings, lambda: isup(directory, seen) != 0, dot_first=False)


# -- file helpers ----------------------------------------------------------------------------------------------


def _split(path: str) -> tuple[str, str]:
    """PATH's directory and last component (``a/b/`` -> ``a``, ``b``; ``b`` -> ``.``, ``b``)."""
    stripped = path.rstrip("/") or "/"
    parent, base = os.path.split(stripped)
    return parent or ".", base or "."


def open_dir(path: str, flags: int = os.O_RDONLY) -> int:
    """The directory PATH, its last component a link only if root or this user made it (else ELOOP)."""
    parent, base = _split(path)
    parent_fd = os.open(parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return open_trusted(parent_fd, base, flags | os.O_DIRECTORY)
    finally:
        os.close(parent_fd)


def _open_in(path: str, flags: int, mode: int = 0o777) -> int:
    """PATH opened with FLAGS, a link neither at its last component nor at its directory's followed unless trusted."""
    parent, base = _split(path)
    dirfd = open_dir(parent, os.O_PATH)
    try:
        return open_trusted(dirfd, base, flags, mode)
    finally:
        os.close(dirfd)


def touch(prog: str, path: str) -> None:
    """``touch PATH`` (create it or refresh its times); failing is fatal, as under ``set -e``."""
    try:
        fd = _open_in(path, os.O_WRONLY | os.O_CREAT | os.O_NONBLOCK | os.O_NOCTTY, 0o666)
        try:
            os.utime(fd)
        finally:
            os.close(fd)
    except OSError as err:
        fatal(prog, f"unable to touch '{path}': {errstr(err)}")


def remove(prog: str, path: str) -> None:
    """``rm -f PATH``: a missing file is fine, anything else is fatal."""
    parent, base = _split(path)
    try:
        dirfd = open_dir(parent, os.O_PATH)
        try:
            os.unlink(base, dir_fd=dirfd)
        finally:
            os.close(dirfd)
    except FileNotFoundError:
        pass
    except OSError as err:
        fatal(prog, f"unable to remove '{path}': {errstr(err)}")


def set_sticky(prog: str, path: str, on: bool) -> None:
    """``chmod +t`` / ``chmod -t`` (the sticky bit marked "has a log" for older svscans)."""
    try:
        fd = open_dir(path)
        try:
            mode = stat.S_IMODE(os.fstat(fd).st_mode)
            os.fchmod(fd, (mode | stat.S_ISVTX) if on else (mode & ~stat.S_ISVTX))
        finally:
            os.close(fd)
    except OSError as err:
        fatal(prog, f"unable to chmod '{path}': {errstr(err)}")


def under_lockdir(settings: Settings, directory: str) -> str:
    """A directory without a leading ``/`` lives in SVCLOCKDIR."""
    return directory if directory.startswith("/") else f"{settings.lockdir}/{directory}"


def basename(path: str) -> str:
    """The shell's ``basename``: trailing slashes do not count."""
    stripped = path.rstrip("/")
    return os.path.basename(stripped) if stripped else "/" if path else ""


# -- the scripts as library functions ------------------------------------------------------------------------


def add(settings: Settings, directory: str, name: str | None = None, down: bool = False) -> None:
    """svc-add: link DIR (relative ones under SVCLOCKDIR) into the scan directory as NAME."""
    prog = "svc-add"
    svcdir = under_lockdir(settings, directory)
    svcname = name if name else basename(svcdir)
    if os.path.lexists(svcname):
        fatal(prog, f"Service '{svcname}' is already set up.")
    if not os.path.isdir(svcdir):
        fatal(prog, f"'{svcdir}' is not a directory.")
    if down:
        touch(prog, f"{svcdir}/down")
    if os.path.isdir(f"{svcdir}/log"):
        set_sticky(prog, svcdir, True)
        if down:
            touch(prog, f"{svcdir}/log/down")
    else:
        set_sticky(prog, svcdir, False)
    try:
        os.symlink(svcdir, svcname)
    except OSError as err:
        fatal(prog, f"unable to link '{svcname}' to '{svcdir}': {errstr(err)}")
    if down:
        settings.echo(f"Type 'svc-start {svcname}' to start the service.")


def _start_one(settings: Settings, directory: str) -> None:
    prog = "svc-start"
    if not os.path.exists(f"{directory}/run"):
        fatal(prog, f"'{directory}/run' file does not exist!")
    remove(prog, f"{directory}/down")
    seen: set[str] = set()
    if svok(directory, seen) != 0:
        settings.echon("(supervise")
        if not poll(settings, lambda: svok(directory, seen) == 0, dot_first=True):
            settings.echon(") ")
            fatal(prog, f"supervise for '{directory}' did not start!  Is svscan running?")
        settings.echon(") ")
    svc(directory, "u")
    if not waitup(settings, directory):
        raise Exit(1)  # set -e on a failing svc-waitup: no message
    settings.echon(f"{directory} ")


def start(settings: Settings, services: Sequence[str]) -> None:
    """svc-start: remove ``down``, wait for supervise, ``svc -u``, wait until up; the log service first."""
    for name in services:
        if not os.path.exists(name):
            fatal("svc-start", f"Service '{name}' does not exist.")
        settings.echon(f"Starting {name}: ")
        if os.path.isdir(f"{name}/log"):
            _start_one(settings, f"{name}/log")
        _start_one(settings, name)
        settings.echo("done.")


def _stop_and_wait(settings: Settings, directory: str, command: str) -> bool:
    if isup(directory) != 0:
        settings.echon(f"{directory} (already down) ")
        return True
    svc(directory, command)
    if waitdown(settings, directory):
        settings.echon(f"{directory} ")
        return True
    return False


def _stop_one(settings: Settings, directory: str, kill: bool) -> None:
    touch("svc-stop", f"{directory}/down")
    if _stop_and_wait(settings, directory, "d"):
        return
    if kill:
        settings.echon(" Failed to stop, killing: ")
        if _stop_and_wait(settings, directory, "k"):
            return
    fatal("svc-stop", f"Failed to stop '{directory}'.")


def stop(settings: Settings, services: Sequence[str], kill: bool = False) -> None:
    """svc-stop: create ``down``, ``svc -d``, wait until down (``-k``: then ``svc -k``); the log service after."""
    for name in services:
        if not (os.path.isdir(name) or os.path.islink(name)):
            fatal("svc-stop", f"Service '{name}' does not exist.")
        settings.echon(f"Stopping {name}: ")
        _stop_one(settings, name, kill)
        if os.path.isdir(f"{name}/log"):
            _stop_one(settings, f"{name}/log", kill)
        settings.echo("done.")


def restart(settings: Settings, services: Sequence[str]) -> None:
    """svc-restart: svc-stop then svc-start, one service at a time."""
    for name in services:
        stop(settings, [name])
        start(settings, [name])


def status(settings: Settings, services: Sequence[str]) -> None:
    """svc-status: svstat lines for the service and its log, or ``Supervise not running on X``."""
    for name in services:
        if svok(name) == 0:
            settings.echo(svstat(name))
            if os.path.isdir(f"{name}/log"):
                settings.echo(svstat(f"{name}/log"))
        else:
            settings.echo(f"Supervise not running on {name}")


def _wait_exit(settings: Settings, directory: str, dirfd: int | None = None) -> None:
    """Until the supervise told to exit (``svc -dx``) has gone; the script slept one second."""
    deadline = settings.clock() + max(settings.timeout, 1)
    seen: set[str] = set()
    while svok(directory, seen, dirfd) == 0:
        if settings.clock() >= deadline:
            fatal("svc-remove", f"supervise for '{directory}' did not exit.")
        settings.sleep(POLL)


def _clear_supervise(settings: Settings, directory: str) -> None:
    """``svc -dx DIR``, wait for supervise to exit, remove ``down`` and ``supervise/``.

    DIR is opened once (a link there only if trusted) and everything after goes through that
    descriptor; a ``supervise`` link of somebody else's is removed, and nothing where it points.
    """
    prog = "svc-remove"
    try:
        dirfd = open_dir(directory)
    except OSError as err:
        fatal(prog, f"unable to chdir to {directory}: {errstr(err)}")
    try:
        svc(directory, "dx", dirfd)
        _wait_exit(settings, directory, dirfd)
        try:
            os.unlink("down", dir_fd=dirfd)
        except FileNotFoundError:
            pass
        except OSError as err:
            fatal(prog, f"unable to remove '{directory}/down': {errstr(err)}")
        _remove_state(prog, dirfd, f"{directory}/supervise")
    finally:
        os.close(dirfd)


def _remove_state(prog: str, dirfd: int, state: str) -> None:
    """Empty and remove ``supervise`` in DIRFD (STATE names it in messages); of a link, only the link goes."""
    try:
        st = os.stat("supervise", dir_fd=dirfd, follow_symlinks=False)
    except FileNotFoundError:
        return
    except OSError as err:
        fatal(prog, f"unable to read '{state}': {errstr(err)}")
    if not stat.S_ISLNK(st.st_mode) or trusted_link(st):  # Debian's supervise -> /run/... is root's
        try:
            supfd = open_trusted(dirfd, "supervise", os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            supfd = -1  # a dangling link: only the link to remove
        except OSError as err:
            fatal(prog, f"unable to read '{state}': {errstr(err)}")
        if supfd >= 0:
            try:
                _remove_files(prog, supfd, state)
            finally:
                os.close(supfd)
    try:
        if stat.S_ISLNK(st.st_mode):
            os.unlink("supervise", dir_fd=dirfd)  # its target stays
        else:
            os.rmdir("supervise", dir_fd=dirfd)
    except FileNotFoundError:
        pass
    except OSError as err:
        fatal(prog, f"unable to remove '{state}': {errstr(err)}")


def _remove_files(prog: str, dirfd: int, shown: str) -> None:
    """Remove every entry of DIRFD that is not a directory (links included, never followed)."""
    try:
        entries = sorted(os.listdir(dirfd))
    except OSError as err:
        fatal(prog, f"unable to read '{shown}': {errstr(err)}")
    for entry in entries:
        try:
            if not stat.S_ISDIR(os.stat(entry, dir_fd=dirfd, follow_symlinks=False).st_mode):
                os.unlink(entry, dir_fd=dirfd)
        except FileNotFoundError:
            pass
        except OSError as err:
            fatal(prog, f"unable to remove '{shown}/{entry}': {errstr(err)}")


def remove_service(settings: Settings, name: str) -> None:
    """svc-remove: stop it quietly, remove the link, then stop both supervise processes and remove their files."""
    prog = "svc-remove"
    stop(settings.quiet(), [name])
    if not os.path.islink(name):
        fatal(prog, f"Service '{name}' is not symlinked into /service and can't be removed.")
    # Remove the symlink without losing track of where it points to.
    try:
        dirfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as err:
        fatal(prog, f"unable to chdir to {name}: {errstr(err)}")
    try:
        try:
            os.unlink(name)
        except OSError as err:
            fatal(prog, f"unable to remove '{name}': {errstr(err)}")
        os.fchdir(dirfd)
    finally:
        os.close(dirfd)
    if os.path.isdir("log"):
        _clear_supervise(settings, "log")  # a link of the owner's to another service's directory is refused
    _clear_supervise(settings, ".")


def build(settings: Settings, directory: str, run_file: str, log_run_file: str | None = None) -> None:
    """svc-build: make DIR (relative ones under SVCLOCKDIR) with ``run`` (and ``log/run``) installed mode 0755."""
    prog = "svc-build"
    target = under_lockdir(settings, directory)
    _install(prog, run_file, target, "run")
    if log_run_file:
        _install(prog, log_run_file, f"{target}/log", "run")
        set_sticky(prog, target, True)


def _install(prog: str, source: str, directory: str, name: str) -> None:
    """``mkdir -p DIR; install -m 755 SOURCE DIR/NAME``."""
    from prefork import atomicfile

    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as err:
        fatal(prog, f"unable to create directory '{directory}': {errstr(err)}")
    try:
        with open(source, "rb") as f:
            data = f.read()
    except OSError as err:
        fatal(prog, f"unable to read '{source}': {errstr(err)}")
    path = f"{directory}/{name}"
    tmp = f"{name}.new"
    try:
        dirfd = open_dir(directory, os.O_PATH)  # no link of the owner's at DIR (``log -> /etc``)
    except OSError as err:
        fatal(prog, f"unable to install '{path}': {errstr(err)}")
    try:
        # install -m 755: exactly, and on this file, never on what the name is by then
        atomicfile.replace(name, data, tmp, 0o700, dir_fd=dirfd, chmod=0o755)
    except OSError as err:
        fatal(prog, f"unable to install '{path}': {errstr(err)}")
    finally:
        os.close(dirfd)


def signal_letter(word: str) -> str | None:
    """svc-kill's table: ``HUP``/``SIGHUP``/``1`` -> ``h`` etc.; None if WORD is no signal it knows."""
    if word in SIGNAL_NUMBERS:
        return SIGNAL_NUMBERS[word]
    return SIGNAL_NAMES.get(word[3:] if word.startswith("SIG") else word)


def kill(settings: Settings, operands: Sequence[str], argv0: str = "svc-kill") -> int:
    """svc-kill: ``svc -LETTER`` on each service (TERM unless a signal comes first); the exit code."""
    letter = signal_letter(operands[0])
    services = list(operands)
    if letter is not None:
        services = services[1:]
    elif len(services) > 1 and not os.path.lexists(services[0]):
        # The script took an unknown name for a service and TERMed the rest.
        fatal("svc-kill", f"unknown signal '{services[0]}'")
    if not services:
        settings.echo(f"{argv0}: No services named to kill")
        return 1
    for name in services:
        svc(name, letter or "t")
    return 0


# -- entry points (console scripts) ---------------------------------------------------------------------------

ADD = Command("svc-add", 1, 2, "d", "[-d] svc-directory [svc-name]")
REMOVE = Command("svc-remove", 1, 1, "", "service")
START = Command("svc-start", 1, 9999, "", "service [service ...]")
STOP = Command("svc-stop", 1, 9999, "k", "[-k] service [service ...]")
RESTART = Command("svc-restart", 1, 9999, "", "service [service ...]")
STATUS = Command("svc-status", 1, 9999, "", "service [service ...]")
ISUP = Command("svc-isup", 1, 1, "", "service")
ISDOWN = Command("svc-isdown", 1, 1, "", "service")
WAITUP = Command("svc-waitup", 1, 1, "", "service")
WAITDOWN = Command("svc-waitdown", 1, 1, "", "service")
KILL = Command("svc-kill", 1, 9999, "l", "[-l] [SIGNAL] service [service ...]")
BUILD = Command("svc-build", 2, 3, "", "directory run-file [log-run-file]", cd=False)


def _simple(cmd: Command, body: Callable[[set[str], list[str], Settings], int | None]) -> NoReturn:
    def main() -> int:
        flags, operands, settings = template(cmd, sys.argv)
        code = body(flags, operands, settings)
        return 0 if code is None else code

    run(main)


def svc_add() -> NoReturn:
    _simple(ADD, lambda f, ops, s: add(s, ops[0], ops[1] if len(ops) > 1 else None, down="d" in f))


def svc_remove() -> NoReturn:
    _simple(REMOVE, lambda f, ops, s: remove_service(s, ops[0]))


def svc_start() -> NoReturn:
    _simple(START, lambda f, ops, s: start(s, ops))


def svc_stop() -> NoReturn:
    _simple(STOP, lambda f, ops, s: stop(s, ops, kill="k" in f))


def svc_restart() -> NoReturn:
    _simple(RESTART, lambda f, ops, s: restart(s, ops))


def svc_status() -> NoReturn:
    _simple(STATUS, lambda f, ops, s: status(s, ops))


def svc_isup() -> NoReturn:
    _simple(ISUP, lambda f, ops, s: isup(ops[0]))


def svc_isdown() -> NoReturn:
    _simple(ISDOWN, lambda f, ops, s: isdown(ops[0]))


def svc_waitup() -> NoReturn:
    _simple(WAITUP, lambda f, ops, s: 0 if waitup(s, ops[0]) else 1)


def svc_waitdown() -> NoReturn:
    _simple(WAITDOWN, lambda f, ops, s: 0 if waitdown(s, ops[0]) else 1)


def svc_kill() -> NoReturn:
    def main() -> int:
        argv0 = sys.argv[0] if sys.argv else KILL.name
        flags, operands = parse_options(KILL, argv0, sys.argv[1:])
        if "q" in flags:
            silence_stdout()
        if "l" in flags:
            sys.stdout.write(SIGNAL_LIST)
            sys.stdout.flush()
            return 0
        check_count(KILL, argv0, operands)
        settings = Settings.from_environ(KILL.name)
        enter(settings)
        return kill(settings, operands, argv0)

    run(main)


def svc_build() -> NoReturn:
    _simple(BUILD, lambda f, ops, s: build(s, ops[0], ops[1], ops[2] if len(ops) > 2 else None))
