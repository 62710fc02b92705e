"""Re-executing the tcpserver master as a lean Python process.

The command line front end needs more than the server does (the option
parser and its help text, typing, site and an editable install's import
finder).  A server that forks workers would carry all of that in every
process for its whole life, so once the command line is parsed and
checked, the front end execs a fresh interpreter (``-I -S``: no site, no
environment-driven behaviour, nothing from the current directory) that
imports only the server modules.  The settings travel in a small script held
in a memfd, run as ``/proc/self/fd/N``; it closes its own descriptor first.

The exec passes the environment exactly as this process received it
(``/proc/self/environ``), so the programs the server starts see no trace of
Python's locale coercion.  argv[0] stays the command's own path: ``ps`` shows
``tcpserver -I -S /proc/self/fd/N <the original arguments>`` and the master
names itself (PR_SET_NAME) after it.

If anything here is unavailable (no memfd, no /proc), the caller serves
in-process instead: same behaviour, more memory.

Either way :func:`fail_fast` is in force: an uncaught exception, in any
thread, prints one traceback and exits 111, so the supervisor restarts the
program.  Python's own printer would read each frame's source file, and the
bootstrap's is ``/proc/self/fd/N``: by then another file (a pipe, whose read
never returns), so the traceback is made without ever opening such a name.
"""

from __future__ import annotations

import os
import sys

import prefork
from prefork.environ import original_environ

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: the lean processes do not import typing
if TYPE_CHECKING:
    from collections.abc import Callable
    from threading import ExceptHookArgs
    from types import TracebackType

    # make_script(fd, paths): the bootstrap's bytes, given its memfd and the sys.path it must set up.
    MakeScript = Callable[[int, list[str]], bytes]


def script(settings: dict[str, object], fd: int, paths: list[str]) -> bytes:
    """The tcpserver bootstrap the lean interpreter runs: plain literals, no parser needed."""
    return bootstrap(
        fd, paths,
        f"from prefork.serverconfig import ServerConfig\n"
        f"from prefork.master import run\n"
        f"run(ServerConfig(**{settings!r}))\n",
    )


def bootstrap(fd: int, paths: list[str], body: str) -> bytes:
    """A script that closes its own memfd, puts PATHS first on sys.path, then runs BODY."""
    return (
        f"import os, sys\nos.close({fd})\nsys.path[:0] = {paths!r}\n"
        "from prefork.lean import fail_fast, name_process\nfail_fast(); name_process()\n" + body
    ).encode("utf-8", "surrogateescape")


def exec_server(settings: dict[str, object]) -> None:
    """Replace this process with a lean tcpserver; returns only if that is not possible here."""
    exec_lean("tcpserver-settings", lambda fd, paths: script(settings, fd, paths))


def exec_lean(name: str, make_script: MakeScript) -> None:
    """Replace this process with ``python -I -S`` running ``make_script(fd, paths)``; returns if not possible.

    Shared by tcpserver and svscan: both are long-lived and hold nothing the
    front end's imports (the option parser, site, an editable install's finder) are needed for.
    """
    fail_fast()  # for the in-process fallback: an exec replaces it with the bootstrap's own
    exec_script(name, make_script, sys.executable, sys.argv[0], sys.argv[1:], original_environ())


def exec_script(name: str, make_script: MakeScript, executable: str, argv0: str, args: list[str],
                env: dict[bytes, bytes]) -> None:
    """``execve(EXECUTABLE, [ARGV0, "-I", "-S", /proc/self/fd/N, *ARGS], ENV)`` running the script in memfd N.

    Also how a running tcpserver starts fresh code on HUP and USR2 (reload.py).  Returns if not possible.
    """
    root = os.path.dirname(os.path.dirname(os.path.abspath(prefork.__file__)))
    paths = [root] + [p for p in sys.path if p and p != root]
    hold_std_fds()  # the memfd must not become fd 0, 1 or 2 of the new interpreter
    try:
        fd = os.memfd_create(name, 0)
    except (AttributeError, OSError):
        return
    try:
        data = make_script(fd, paths)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.set_inheritable(fd, True)
        path = f"/proc/self/fd/{fd}"
        if not os.path.exists(path):
            os.close(fd)
            return
        argv = [argv0, "-I", "-S", path, *args]
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:  # None when Python started with that fd closed
                stream.flush()
        os.execve(executable, argv, env)
    except OSError:
        try:
            os.close(fd)
        except OSError:
            pass


def hold_std_fds() -> None:
    """Put a close-on-exec /dev/null on any of fds 0-2 that is closed.

    Our own descriptors then never land there (a program must not get a
    control FIFO or a settings memfd as its stdout), while the programs we
    exec still see those fds closed: close-on-exec keeps them out of every exec.
    """
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)


def name_process() -> None:
    """Name this interpreter after the command that started it (``svscan``, not ``python``).

    ``ps -C svscan``, ``pgrep multilog`` and ``killall`` match the kernel's
    comm, which an exec of the interpreter set to ``python3``.  Writing
    /proc/self/comm is PR_SET_NAME without ctypes.
    """
    try:
        with open("/proc/self/cmdline", "rb") as f:
            name = os.path.basename(f.read().split(b"\0", 1)[0])
        if name:
            with open("/proc/self/comm", "wb") as f:
                f.write(name[:15])
    except OSError:
        pass


def go_lean(name: str, module: str) -> None:
    """Re-exec this command as ``python -I -S`` running ``MODULE.main()`` (no site, no editable-install finder).

    For the long-lived commands (svscan, supervise, multilog, prefork-exporter):
    every MB they carry is paid for as long as they live.  Returns, and the
    command runs in this process, when that is not possible or already done.
    """
    if sys.flags.no_site:
        fail_fast()
        return
    exec_lean(name, lambda fd, paths: bootstrap(fd, paths, f"from {module} import main\nmain()\n"))


EXIT_UNCAUGHT = 111  # djb's "temporary failure": the supervisor starts the program again


def fail_fast() -> None:
    """From now on an uncaught exception, in any thread, prints one traceback and exits 111 at once.

    A long-lived program that meets a bug must not linger half-alive (or hang
    printing, see the module's text): it dies, its supervisor restarts it.
    For threads the hook goes into ``_thread``, where ``threading`` takes its
    default from when it is imported, so this does not import ``threading``.
    """
    sys.excepthook = _uncaught
    import _thread

    _thread._excepthook = _uncaught_in_thread
    threading = sys.modules.get("threading")
    if threading is not None:
        threading.excepthook = _uncaught_in_thread  # type: ignore[attr-defined]  # sys.modules holds plain ModuleTypes


def _uncaught(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
    try:
        _print_traceback(kind, value, tb)
    finally:
        if issubclass(kind, KeyboardInterrupt):  # die of the SIGINT, as Python does
            try:
                import _signal

                _signal.signal(_signal.SIGINT, _signal.SIG_DFL)
                os.kill(os.getpid(), _signal.SIGINT)
            finally:
                os._exit(130)
        os._exit(EXIT_UNCAUGHT)


def _uncaught_in_thread(args: ExceptHookArgs) -> None:
    kind = args.exc_type
    if issubclass(kind, SystemExit):  # a thread's own way to end, quietly (threading's default too)
        return
    try:
        thread = args.thread
        name = thread.name if thread is not None else "unknown"
        _print_traceback(kind, args.exc_value, args.exc_traceback, f"Exception in thread {name}:\n")
    finally:
        os._exit(EXIT_UNCAUGHT)


def _print_traceback(kind: type[BaseException], value: BaseException | None, tb: TracebackType | None,
                     head: str = "") -> None:
    """The traceback on stderr in one write, without opening any ``/proc/self/fd/N`` to show a line."""
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except Exception:
            pass
    try:
        import linecache
        import traceback

        original = linecache.updatecache

        def updatecache(filename: str, module_globals: dict[str, object] | None = None) -> list[str]:
            if filename.startswith("/proc/"):  # a memfd script's name: another file by now, maybe a pipe
                return []
            return original(filename, module_globals)

        linecache.updatecache = updatecache  # what linecache reads a file not yet in its cache with
        text = "".join(traceback.format_exception(kind, value, tb))
    except BaseException:  # no memory, a broken import...: still one line saying what
        try:
            text = f"{kind.__name__}: {value}\n"
        except BaseException:
            text = "uncaught exception\n"
    data = (head + text).encode("utf-8", "backslashreplace")
    try:
        while data:
            data = data[os.write(2, data):]
    except OSError:
        pass
