"""daemontools' small tools (docs/CONTRACTS.md, Small tools): setuidgid envuidgid envdir softlimit setlock pgrphack fghack.

Most tests run one scenario with Debian's binary and with prefork's and compare exit code, stdout and
stderr byte for byte, the child reporting what it sees (environment, ids, limits, descriptors, signals).
"""

from __future__ import annotations

import fcntl
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from conftest import ours, real

from prefork.control.envdir import value_of
from prefork.control.pathexec import edit_env
from prefork.options import UsageError, getopt

IMPLS = ("debian", "prefork")
TOOLS = ("setuidgid", "envuidgid", "envdir", "softlimit", "setlock", "pgrphack", "fghack")
# No LANG/LC_*: Python would add LC_CTYPE=C.UTF-8 to os.environ (PEP 538); the child must not see it.
BASE_ENV = {b"PATH": b"/usr/bin:/bin", b"HOME": b"/nonexistent", b"UID": b"1234", b"ZZ": b"last one"}
SOFTLIMIT_USAGE = (
    b"softlimit: usage: softlimit [-a allbytes] [-c corebytes] [-d databytes] [-f filebytes] [-l lockbytes] "
    b"[-m membytes] [-o openfiles] [-p processes] [-r residentbytes] [-s stackbytes] [-t cpusecs] child\n"
)
SETLOCK_USAGE = b"setlock: usage: setlock [ -nNxX ] file program [ arg ... ]\n"


def command(impl: str, name: str) -> str:
    return real(name) if impl == "debian" else ours(name)


def run(impl: str, name: str, *args, env=None, cwd=None, timeout: float = 30, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([command(impl, name), *args], env=BASE_ENV if env is None else env, cwd=cwd,
                          capture_output=True, timeout=timeout, **kw)


def both(tmp_path, name: str, *args, setup=None, **kw) -> dict[str, subprocess.CompletedProcess]:
    """Run the scenario once per implementation, each in its own copy of the directory SETUP builds."""
    results = {}
    for impl in IMPLS:
        where = tmp_path / impl
        where.mkdir(parents=True)
        if setup is not None:
            setup(where)
        results[impl] = run(impl, name, *args, cwd=where, **kw)
    return results


def same(results: dict[str, subprocess.CompletedProcess], norm=lambda b: b) -> subprocess.CompletedProcess:
    """Assert both implementations gave the same exit code, stdout and stderr; return prefork's result."""
    d, p = results["debian"], results["prefork"]
    assert (p.returncode, norm(p.stdout), norm(p.stderr)) == (d.returncode, norm(d.stdout), norm(d.stderr))
    return p


def env_bytes(env: dict[bytes, bytes]) -> bytes:
    return b"".join(k + b"=" + v + b"\0" for k, v in env.items())


def prefix(name: str, where) -> list[str]:
    """The leading arguments that put tool NAME in front of a CHILD (creating what they name in WHERE)."""
    if name in ("setuidgid", "envuidgid"):
        return ["nobody"]
    if name == "envdir":
        (where / "env").mkdir(exist_ok=True)
        return ["env"]
    if name == "setlock":
        return ["lockfile"]
    if name == "softlimit":
        return ["-o", "64"]
    return []


def with_child(impl: str, name: str, where, *child, setup=None, **kw) -> subprocess.CompletedProcess:
    if setup is not None:
        setup(where)
    return run(impl, name, *prefix(name, where), *child, cwd=where, **kw)


def both_with_child(tmp_path, name: str, *child, setup=None, **kw) -> dict[str, subprocess.CompletedProcess]:
    results = {}
    for impl in IMPLS:
        where = tmp_path / impl
        where.mkdir()
        results[impl] = with_child(impl, name, where, *child, setup=setup, **kw)
    return results


# -- --help ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", TOOLS)
def test_help_prints_usage_on_stdout(name):
    proc = subprocess.run([ours(name), "--help"], capture_output=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(b"usage: " + name.encode())
    assert proc.stderr == b""


@pytest.mark.differential
def test_help_after_the_first_argument_belongs_to_the_child(tmp_path):
    echo = ["sh", "-c", 'echo "$0"', "--help"]
    assert same(both(tmp_path / "1", "pgrphack", *echo)).stdout == b"--help\n"
    assert same(both(tmp_path / "2", "setuidgid", "nobody", *echo)).stdout == b"--help\n"


@pytest.mark.differential
def test_help_after_options_is_djb_end_of_options(tmp_path):
    p = same(both(tmp_path, "softlimit", "-o", "5", "--help"))
    assert (p.returncode, p.stderr) == (100, SOFTLIMIT_USAGE)


@pytest.mark.differential
def test_any_double_dash_word_ends_options(tmp_path):
    p = same(both(tmp_path, "setlock", "--x", "lk", "echo", "hi"))
    assert (p.returncode, p.stdout) == (0, b"hi\n")


# -- usage errors ----------------------------------------------------------------------------------------------
USAGE_CASES = {
    "setuidgid-none": ("setuidgid", [], 100),
    "setuidgid-account-only": ("setuidgid", ["nobody"], 100),
    "envuidgid-none": ("envuidgid", [], 100),
    "envuidgid-account-only": ("envuidgid", ["nobody"], 100),
    "envdir-none": ("envdir", [], 111),
    "envdir-dir-only": ("envdir", ["."], 111),
    "softlimit-none": ("softlimit", [], 100),
    "softlimit-options-only": ("softlimit", ["-o", "5"], 100),
    "setlock-none": ("setlock", [], 100),
    "setlock-file-only": ("setlock", ["lk"], 100),
    "setlock-options-and-file-only": ("setlock", ["-nx", "lk"], 100),
    "pgrphack-none": ("pgrphack", [], 100),
    "fghack-none": ("fghack", [], 100),
}


@pytest.mark.differential
@pytest.mark.parametrize("case", USAGE_CASES)
def test_missing_arguments_give_the_usage_line(tmp_path, case):
    name, args, code = USAGE_CASES[case]
    p = same(both(tmp_path, name, *args))
    assert p.returncode == code
    assert p.stdout == b""
    assert p.stderr.startswith(name.encode() + b": usage: " + name.encode())
    if name == "setlock":
        assert not (tmp_path / "prefork" / "lk").exists()  # nothing is opened before the usage check


OPTION_CASES = {
    "softlimit-unknown-option": ("softlimit", ["-z", "true"], b"softlimit: illegal option -- z\n" + SOFTLIMIT_USAGE),
    "softlimit-missing-value": ("softlimit", ["-o"], b"softlimit: option requires an argument -- o\n" + SOFTLIMIT_USAGE),
    "softlimit-letters": ("softlimit", ["-o", "abc", "true"], SOFTLIMIT_USAGE),
    "softlimit-trailing-garbage": ("softlimit", ["-o", "12x", "true"], SOFTLIMIT_USAGE),
    "softlimit-negative": ("softlimit", ["-o", "-5", "true"], SOFTLIMIT_USAGE),
    "softlimit-plus-sign": ("softlimit", ["-d", "+5", "true"], SOFTLIMIT_USAGE),
    "softlimit-leading-space": ("softlimit", ["-t", " 5", "true"], SOFTLIMIT_USAGE),
    "softlimit-bad-value-before-bad-option": ("softlimit", ["-o", "x", "-z", "true"], SOFTLIMIT_USAGE),
    "softlimit-value-takes-rest-of-word": ("softlimit", ["-o5", "-cz", "true"], SOFTLIMIT_USAGE),
    "setlock-unknown-option": ("setlock", ["-z", "lk", "true"], b"setlock: illegal option -- z\n" + SETLOCK_USAGE),
    "setlock-unknown-option-in-bundle": ("setlock", ["-nq", "lk", "true"],
                                         b"setlock: illegal option -- q\n" + SETLOCK_USAGE),
}


@pytest.mark.differential
@pytest.mark.parametrize("case", OPTION_CASES)
def test_bad_options(tmp_path, case):
    name, args, stderr = OPTION_CASES[case]
    p = same(both(tmp_path, name, *args))
    assert (p.returncode, p.stdout, p.stderr) == (100, b"", stderr)


def test_softlimit_refuses_an_empty_value(tmp_path):
    """Deliberate difference: the real softlimit reads an empty value as 0 (and then sets 0 open files)."""
    p = run("prefork", "softlimit", "-o", "", "true", cwd=tmp_path)
    assert (p.returncode, p.stderr) == (100, SOFTLIMIT_USAGE)


@pytest.mark.differential
@pytest.mark.parametrize("name", ["setuidgid", "envuidgid"])
def test_unknown_account(tmp_path, name):
    p = same(both(tmp_path, name, "no-such-account-h1", "true"))
    assert (p.returncode, p.stderr) == (111, f"{name}: fatal: unknown account no-such-account-h1\n".encode())


# -- children that cannot be run -------------------------------------------------------------------------------
def _bad_children(where):
    (where / "plain").write_bytes(b"echo not executable\n")
    (where / "garbage").write_bytes(b"\x7fELF garbage")
    (where / "garbage").chmod(0o755)
    (where / "dir").mkdir()
    bin_ = where / "bin"
    bin_.mkdir()
    (bin_ / "plain").write_bytes(b"#!/bin/sh\necho found later on PATH\n")
    (bin_ / "plain").chmod(0o755)


CHILD_CASES = {
    "missing": ["no-such-program-h1"],
    "missing-path": ["./no-such-program-h1"],
    "not-executable": ["./plain"],
    "directory": ["./dir"],
    "exec-format": ["./garbage"],
    "empty-name": [""],
}


@pytest.mark.differential
@pytest.mark.parametrize("case", CHILD_CASES)
@pytest.mark.parametrize("name", TOOLS)
def test_child_that_cannot_run(tmp_path, name, case):
    env = dict(BASE_ENV)
    results = both_with_child(tmp_path, name, *CHILD_CASES[case], setup=_bad_children, env=env)
    p = same(results)
    assert p.returncode == 111
    assert p.stderr.startswith(f"{name}: fatal: unable to run ".encode())


PATH_CASES = {
    # PATH, program: djb keeps looking after EACCES, stops at other errors, reports the last error remembered
    "not-executable-then-found": ("{w}:{w}/bin", "plain"),
    "not-executable-only": ("{w}", "plain"),
    "directory-on-path": ("{w}:/usr/bin", "dir"),
    "exec-format-stops": ("{w}:/usr/bin", "garbage"),
    "file-as-path-entry": ("{w}/plain:/usr/bin", "true"),
    "empty-entry-is-cwd": (":/nonexistent", "garbage"),
    "missing-everywhere": ("/nonexistent:{w}/bin", "no-such-program-h1"),
}


@pytest.mark.differential
@pytest.mark.parametrize("case", PATH_CASES)
def test_path_search_follows_djb(tmp_path, case):
    path, program = PATH_CASES[case]
    results = {}
    for impl in IMPLS:
        where = tmp_path / impl
        where.mkdir()
        _bad_children(where)
        env = dict(BASE_ENV, PATH=path.format(w=where).encode())
        results[impl] = run(impl, "pgrphack", program, env=env, cwd=where)
    same(results, norm=lambda b: b.replace(str(tmp_path).encode(), b"TMP").replace(b"/debian", b"/prefork"))


@pytest.mark.differential
def test_unset_path_means_bin_and_usr_bin(tmp_path):
    env = {k: v for k, v in BASE_ENV.items() if k != b"PATH"}
    p = same(both(tmp_path, "softlimit", "ls", "-d", "/", env=env))
    assert p.stdout == b"/\n"


# -- the child's environment -----------------------------------------------------------------------------------
@pytest.mark.differential
@pytest.mark.parametrize("name", ["setuidgid", "softlimit", "setlock", "pgrphack", "fghack"])
def test_environment_passes_unchanged(tmp_path, name):
    p = same(both_with_child(tmp_path, name, "env", "-0"))
    assert p.stdout == env_bytes(BASE_ENV)  # same order, and no LC_CTYPE from PEP 538


@pytest.mark.parametrize("name", TOOLS)
def test_no_lc_ctype_from_python(tmp_path, name):
    p = with_child("prefork", name, tmp_path, "env")
    assert p.returncode == 0, p.stderr
    assert b"LC_CTYPE" not in p.stdout and b"LC_ALL" not in p.stdout and b"LANG" not in p.stdout


@pytest.mark.differential
def test_envuidgid_appends_gid_then_uid(tmp_path):
    import pwd

    nobody = pwd.getpwnam("nobody")
    p = same(both(tmp_path, "envuidgid", "nobody", "env", "-0"))  # also the order: UID's slot goes to GID
    expected = {**BASE_ENV, b"GID": b"%d" % nobody.pw_gid, b"UID": b"%d" % nobody.pw_uid}
    assert p.stdout.endswith(b"UID=%d\0" % nobody.pw_uid)
    assert sorted(p.stdout.split(b"\0")) == sorted(env_bytes(expected).split(b"\0"))


@pytest.mark.differential
def test_envuidgid_keeps_ids(tmp_path):
    p = same(both(tmp_path, "envuidgid", "nobody", "id", "-u"))
    assert p.stdout == b"0\n"


def _envdir_files(where):
    d = where / "env"
    d.mkdir()
    files = {
        "A=B": b"",  # an "unset" whose name holds = still sets A to B
        "C=D": b"c\n",
        "E=": b"",
        "F=": b"v",
        "NUL_THEN_BLANK": b"a\0 \n",
        "BLANK_THEN_NUL": b"a \0\n",
        "KEEPS": b" x\r\t \nsecond line",
        "NEWLINE_ONLY": b"\n",
        "NUL_ONLY": b"\0",
        "HOME": b"",  # unsets an inherited one
        "ZZ": b"replaced",
        "NEW": b"value with trailing blanks \t \t",
        "LONG": b"x" * 5000 + b"\nrest",
    }
    for name, text in files.items():
        (d / name).write_bytes(text)
    (d / ".hidden").write_bytes(b"ignored")


@pytest.mark.differential
def test_envdir_values_and_order(tmp_path):
    env = dict(BASE_ENV, A=b"old")
    p = same(both(tmp_path, "envdir", "env", "env", "-0", setup=_envdir_files, env=env))
    got = dict(entry.split(b"=", 1) for entry in p.stdout.split(b"\0") if entry)
    assert got[b"A"] == b"B" and got[b"C"] == b"D=c" and got[b"E"] == b"" and got[b"F"] == b"=v"
    assert got[b"NUL_THEN_BLANK"] == b"a\n" and got[b"BLANK_THEN_NUL"] == b"a \n"
    assert got[b"KEEPS"] == b" x\r" and got[b"NEWLINE_ONLY"] == b"" and got[b"NUL_ONLY"] == b"\n"
    assert b"HOME" not in got and got[b"ZZ"] == b"replaced" and got[b"NEW"] == b"value with trailing blanks"
    assert got[b"LONG"] == b"x" * 5000 and b".hidden" not in got


@pytest.mark.differential
def test_envdir_path_file_changes_the_env_but_not_the_search(tmp_path):
    def setup(where):
        (where / "bin").mkdir()
        (where / "bin" / "only-here").write_bytes(b"#!/bin/sh\necho ran\n")
        (where / "bin" / "only-here").chmod(0o755)
        (where / "env").mkdir()
        (where / "env" / "PATH").write_text(f"{where}/bin\n")

    norm = lambda b: b.replace(b"/debian/", b"/prefork/")  # noqa: E731
    p = same(both(tmp_path, "envdir", "env", "only-here", setup=setup), norm=norm)
    assert (p.returncode, p.stderr) == (111, b"envdir: fatal: unable to run only-here: file does not exist\n")
    p = same(both(tmp_path / "second", "envdir", "env", "sh", "-c", "echo $PATH", setup=setup), norm=norm)
    assert p.stdout.endswith(b"/bin\n") and b"/usr/bin" not in p.stdout


@pytest.mark.differential
def test_envdir_child_runs_in_the_starting_directory(tmp_path):
    p = same(both(tmp_path, "envdir", "env", "pwd", setup=lambda w: (w / "env").mkdir()),
             norm=lambda b: b.replace(b"/debian", b"/prefork"))
    assert p.stdout.endswith(b"/prefork\n")


@pytest.mark.differential
def test_envdir_dangling_symlink_first_unsets(tmp_path):
    def setup(where):
        (where / "env").mkdir()
        (where / "env" / "ZZ").symlink_to(where / "nowhere")

    p = same(both(tmp_path, "envdir", "env", "env", "-0", setup=setup))
    assert b"ZZ=" not in p.stdout


def test_envdir_dangling_symlink_does_not_reuse_previous_text(tmp_path):
    """Deliberate difference: the real envdir gives a missing file the previous file's text."""
    d = tmp_path / "env"
    d.mkdir()
    for i in range(20):  # some before and some after the link in readdir order
        (d / f"V{i}").write_bytes(b"text")
    (d / "GONE").symlink_to(tmp_path / "nowhere")
    p = run("prefork", "envdir", str(d), "env", "-0", env=dict(BASE_ENV, GONE=b"inherited"))
    assert p.returncode == 0, p.stderr
    assert b"GONE=" not in p.stdout
    assert p.stdout.count(b"=text\0") == 20


ENVDIR_ERRORS = {
    "missing-dir": (None, b"envdir: fatal: unable to switch to directory env: file does not exist\n"),
    "file-as-dir": ("file", b"envdir: fatal: unable to switch to directory env: not a directory\n"),
    "subdirectory": ("subdir", b"envdir: fatal: unable to read env/SUB: is a directory\n"),
}


@pytest.mark.differential
@pytest.mark.parametrize("case", ENVDIR_ERRORS)
def test_envdir_errors(tmp_path, case):
    kind, stderr = ENVDIR_ERRORS[case]

    def setup(where):
        if kind == "file":
            (where / "env").write_bytes(b"x")
        elif kind == "subdir":
            (where / "env").mkdir()
            (where / "env" / "SUB").mkdir()

    p = same(both(tmp_path, "envdir", "env", "true", setup=setup))
    assert (p.returncode, p.stdout, p.stderr) == (111, b"", stderr)


@pytest.fixture
def shared_dir():
    """A fresh directory nobody can reach (pytest's tmp_path lives under a 0700 directory of root's)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to become nobody")
    with tempfile.TemporaryDirectory(prefix="small-tools-") as name:
        os.chmod(name, 0o755)
        yield Path(name)


def _as_nobody(impl: str, *args, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([real("setuidgid"), "nobody", command(impl, "envdir"), *args], env=BASE_ENV, cwd=cwd,
                          capture_output=True, timeout=30)


NOBODY_ENVDIR_CASES = {
    "unreadable-entry": ("env", b"envdir: fatal: unable to read env/S: access denied\n"),
    "unlistable-dir": ("noread", b"envdir: fatal: unable to read directory noread: access denied\n"),
    "untraversable-dir": ("nox", b"envdir: fatal: unable to switch to directory nox: access denied\n"),
}


@pytest.mark.differential
@pytest.mark.parametrize("case", NOBODY_ENVDIR_CASES)
def test_envdir_permission_errors(shared_dir, case):
    directory, stderr = NOBODY_ENVDIR_CASES[case]
    (shared_dir / "env").mkdir(mode=0o755)
    (shared_dir / "env" / "S").write_bytes(b"secret")
    (shared_dir / "env" / "S").chmod(0o600)
    (shared_dir / "noread").mkdir()
    (shared_dir / "noread").chmod(0o711)
    (shared_dir / "nox").mkdir()
    (shared_dir / "nox" / "V").write_bytes(b"v")
    (shared_dir / "nox").chmod(0o744)
    p = same({impl: _as_nobody(impl, directory, "true", cwd=shared_dir) for impl in IMPLS})
    assert (p.returncode, p.stderr) == (111, stderr)


@pytest.mark.differential
def test_envdir_unreadable_starting_directory(shared_dir):
    (shared_dir / "env").mkdir(mode=0o755)
    private = shared_dir / "private"
    private.mkdir(mode=0o700)
    p = same({impl: _as_nobody(impl, str(shared_dir / "env"), "true", cwd=private) for impl in IMPLS})
    assert (p.returncode, p.stderr) == (111, b"envdir: fatal: unable to switch to current directory: access denied\n")


# -- ids, limits, descriptors, signals -------------------------------------------------------------------------
@pytest.mark.differential
def test_setuidgid_sets_uid_gid_and_only_the_primary_group(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root")
    p = same(both(tmp_path, "setuidgid", "nobody", "grep", "-E", "^(Uid|Gid|Groups):", "/proc/self/status"))
    import pwd

    nobody = pwd.getpwnam("nobody")
    uid, gid = nobody.pw_uid, nobody.pw_gid
    assert p.stdout.split(b"\n")[:3] == [f"Uid:\t{uid}\t{uid}\t{uid}\t{uid}".encode(),
                                         f"Gid:\t{gid}\t{gid}\t{gid}\t{gid}".encode(), f"Groups:\t{gid} ".encode()]


@pytest.mark.differential
def test_setuidgid_when_not_root(tmp_path):
    """Debian's setuidgid drops to nobody first; then our setuidgid cannot change ids."""
    if os.geteuid() != 0:
        pytest.skip("needs root to become nobody")
    results = {}
    for impl in IMPLS:
        results[impl] = subprocess.run([real("setuidgid"), "nobody", command(impl, "setuidgid"), "nobody", "id"],
                                       env=BASE_ENV, cwd="/", capture_output=True, timeout=30)
    p = same(results)
    assert (p.returncode, p.stdout, p.stderr) == (111, b"", b"setuidgid: fatal: unable to setgid: permission denied\n")


SOFTLIMIT_CASES = {
    "open-files": ["-o", "50"],
    "attached": ["-o50"],
    "equals-hard": ["-o", "="],
    "above-hard-is-clamped": ["-o", "999999999"],
    "locked-memory-clamped": ["-l", "99999999999"],
    "mem-is-four-limits": ["-m", "400000000"],
    "later-wins": ["-m", "400000000", "-d", "300000000"],
    "earlier-overridden": ["-d", "300000000", "-m", "400000000"],
    "all-letters": ["-a", "900000000", "-c", "0", "-f", "1000000", "-l", "4096", "-p", "500", "-r", "100000000",
                    "-s", "4000000", "-t", "100", "-o", "60"],
    "bundle-then-dashdash": ["-c0", "--", ],
}


@pytest.mark.differential
@pytest.mark.parametrize("case", SOFTLIMIT_CASES)
def test_softlimit_sets_soft_limits(tmp_path, case):
    p = same(both(tmp_path, "softlimit", *SOFTLIMIT_CASES[case], "cat", "/proc/self/limits"))
    assert p.returncode == 0 and b"Max open files" in p.stdout


def test_softlimit_too_big_for_rlim_t_means_the_hard_limit(tmp_path):
    """Deliberate difference: the real softlimit wraps numbers above 2**64 around (to 1 here)."""
    p = run("prefork", "softlimit", "-o", "18446744073709551617", "sh", "-c", "ulimit -Sn; ulimit -Hn", cwd=tmp_path)
    soft, hard = p.stdout.split()
    assert p.returncode == 0 and soft == hard


@pytest.mark.differential
def test_softlimit_file_size_signal_is_default(tmp_path):
    """Python ignores SIGXFSZ; the child must be killed by it like a child of the C softlimit."""
    script = "head -c 100000 /dev/zero > big; echo $?"
    p = same(both(tmp_path, "softlimit", "-f", "1000", "sh", "-c", script))
    assert p.stdout == b"153\n"  # 128 + SIGXFSZ


@pytest.mark.differential
@pytest.mark.parametrize("name", TOOLS)
def test_child_signal_dispositions_and_mask(tmp_path, name):
    p = same(both_with_child(tmp_path, name, "grep", "-E", "^Sig(Blk|Ign)", "/proc/self/status"))
    assert p.returncode == 0


@pytest.mark.differential
@pytest.mark.parametrize("name", TOOLS)
def test_child_descriptors(tmp_path, name):
    same(both_with_child(tmp_path, name, "ls", "/proc/self/fd"))


@pytest.mark.differential
def test_pgrphack_makes_a_session(tmp_path):
    p = same(both(tmp_path, "pgrphack", "cut", "-d", " ", "-f", "1,5,6", "/proc/self/stat"),
             norm=lambda b: re.sub(rb"\d+", b"N", b))
    pid, pgid, sid = p.stdout.split()
    assert pid == pgid == sid


@pytest.mark.differential
def test_pgrphack_as_group_leader_ignores_setsid_failure(tmp_path):
    results = {}
    for impl in IMPLS:
        results[impl] = subprocess.run([command(impl, "pgrphack"), "cut", "-d", " ", "-f", "1,5,6", "/proc/self/stat"],
                                       env=BASE_ENV, capture_output=True, timeout=30, process_group=0)
    p = same(results, norm=lambda b: re.sub(rb"\d+", b"N", b))
    pid, pgid, sid = p.stdout.split()
    assert p.returncode == 0 and pid == pgid != sid


# -- setlock -----------------------------------------------------------------------------------------------------
@pytest.mark.differential
def test_setlock_gives_the_child_the_locked_descriptor(tmp_path):
    def setup(where):
        (where / "lk").write_bytes(b"keep me")
        (where / "lk").chmod(0o644)

    norm = lambda b: re.sub(rb"(mnt_id|ino):\t\d+|WRITE \d+ \S+ ", b"X", b)  # noqa: E731
    p = same(both(tmp_path, "setlock", "lk", "cat", "/proc/self/fdinfo/3", setup=setup), norm=norm)
    assert b"FLOCK  ADVISORY  WRITE" in p.stdout
    assert re.search(rb"flags:\t0*106001\n", p.stdout)  # O_WRONLY|O_APPEND|O_NONBLOCK|O_LARGEFILE, no cloexec
    for impl in IMPLS:
        assert (tmp_path / impl / "lk").read_bytes() == b"keep me"


@pytest.mark.differential
def test_setlock_creates_the_file_0600(tmp_path):
    p = same(both(tmp_path, "setlock", "new", "true"))
    assert p.returncode == 0
    for impl in IMPLS:
        st = (tmp_path / impl / "new").stat()
        assert (st.st_mode & 0o777, st.st_size) == (0o600 & ~_umask(), 0)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.differential
def test_setlock_lock_lasts_while_the_child_runs(tmp_path):
    p = same(both(tmp_path, "setlock", "lk", command("prefork", "setlock"), "-n", "lk", "true"))
    assert (p.returncode, p.stderr) == (111, b"setlock: fatal: unable to lock lk: temporary failure\n")


def _holding(path):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


HELD_CASES = {
    "n": (["-n"], 111, b"setlock: fatal: unable to lock lk: temporary failure\n"),
    "nx": (["-nx"], 0, b""),
    "n-x-separate": (["-n", "-x"], 0, b""),
    "nxX": (["-nxX"], 111, b"setlock: fatal: unable to lock lk: temporary failure\n"),
}


@pytest.mark.differential
@pytest.mark.parametrize("case", HELD_CASES)
def test_setlock_on_a_held_lock_without_waiting(tmp_path, case):
    opts, code, stderr = HELD_CASES[case]
    results = {}
    for impl in IMPLS:
        where = tmp_path / impl
        where.mkdir()
        fd = _holding(where / "lk")
        try:
            results[impl] = run(impl, "setlock", *opts, "lk", "touch", "ran", cwd=where)
        finally:
            os.close(fd)
        assert not (where / "ran").exists()
    p = same(results)
    assert (p.returncode, p.stdout, p.stderr) == (code, b"", stderr)


@pytest.mark.differential
@pytest.mark.parametrize("opts", [[], ["-x"], ["-nN"]], ids=["default", "x", "nN"])
def test_setlock_on_a_held_lock_waits(tmp_path, opts):
    for impl in IMPLS:
        where = tmp_path / impl
        where.mkdir()
        fd = _holding(where / "lk")
        proc = subprocess.Popen([command(impl, "setlock"), *opts, "lk", "touch", "ran"], env=BASE_ENV, cwd=where,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            time.sleep(0.5)
            assert proc.poll() is None, (impl, proc.stderr.read())
            assert not (where / "ran").exists()
            os.close(fd)
            fd = -1
            out, err = proc.communicate(timeout=30)
            assert (proc.returncode, out, err) == (0, b"", b""), impl
            assert (where / "ran").exists()
        finally:
            if fd >= 0:
                os.close(fd)
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


SETLOCK_OPEN_CASES = {
    "missing-dir": (["nodir/lk"], 111, b"setlock: fatal: unable to open nodir/lk: file does not exist\n"),
    "directory": (["."], 111, b"setlock: fatal: unable to open .: is a directory\n"),
    "missing-dir-x": (["-x", "nodir/lk"], 0, b""),
    "directory-x": (["-x", "."], 0, b""),
}


@pytest.mark.differential
@pytest.mark.parametrize("case", SETLOCK_OPEN_CASES)
def test_setlock_cannot_open(tmp_path, case):
    args, code, stderr = SETLOCK_OPEN_CASES[case]
    p = same(both(tmp_path, "setlock", *args, "echo", "ran"))
    assert (p.returncode, p.stdout, p.stderr) == (code, b"", stderr)


# -- fghack ------------------------------------------------------------------------------------------------------
@pytest.mark.differential
def test_fghack_exit_code(tmp_path):
    p = same(both(tmp_path, "fghack", "sh", "-c", "echo out; exit 7"))
    assert (p.returncode, p.stdout) == (7, b"out\n")


@pytest.mark.differential
def test_fghack_child_crashed(tmp_path):
    p = same(both(tmp_path, "fghack", "sh", "-c", "kill -9 $$"))
    assert (p.returncode, p.stderr) == (111, b"fghack: fatal: child crashed\n")


@pytest.mark.differential
def test_fghack_waits_for_the_background_daemon(tmp_path):
    script = "(sleep 1; touch done) </dev/null >/dev/null 2>&1 & exit 3"
    for impl in IMPLS:
        where = tmp_path / impl
        where.mkdir()
        p = run(impl, "fghack", "sh", "-c", script, cwd=where)
        assert p.returncode == 3, (impl, p.stderr)
        assert (where / "done").exists(), impl


# -- library functions -------------------------------------------------------------------------------------------
def test_edit_env_orders_like_djb():
    base = {b"A": b"1", b"B": b"2", b"C": b"3"}
    assert list(edit_env(base, [(b"A", None)]).items()) == [(b"C", b"3"), (b"B", b"2")]
    assert list(edit_env(base, [(b"B", b"x")]).items()) == [(b"A", b"1"), (b"C", b"3"), (b"B", b"x")]
    assert edit_env(base, [(b"B=y", None)]) == {b"A": b"1", b"C": b"3", b"B": b"y"}
    assert edit_env(base, [(b"D", b"e=f")]) == {**base, b"D": b"e=f"}
    assert edit_env(base, [(b"=x", b"1")]) == base  # an empty name cannot be passed on


@pytest.mark.parametrize(("text", "value"), [
    (b"", None), (b"\n", b""), (b"a\0 \n", b"a\n"), (b"a \0", b"a \n"), (b" a\r\t \nb", b" a\r"), (b"\0", b"\n"),
])
def test_envdir_value_rules(text, value):
    assert value_of(text) == value


def test_getopt_djb_rules():
    found, rest = getopt([b"-o5", b"-c", b"7", b"-nm", b"1", b"-", b"x"], "o:c:m:n")
    assert found == [(b"-o", b"5"), (b"-c", b"7"), (b"-n", None), (b"-m", b"1")]
    assert rest == [b"-", b"x"]
    assert getopt([b"-n", b"--anything", b"-n"], "n") == ([(b"-n", None)], [b"-n"])
    with pytest.raises(UsageError) as caught:
        getopt([b"-n", b"-o"], "o:n")
    assert (caught.value.text, caught.value.found) == ("option requires an argument -- o", [(b"-n", None)])
