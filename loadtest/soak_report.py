"""SOAK.md and soak.png from the soak run's figures (loadtest/soak.py)."""

from __future__ import annotations

from pathlib import Path

LOST = """\
- **Connections.** Every attempt a client makes ends in one kind: *ok* (the reply is the number it sent),
  *refused* (connect() refused: never accepted), *reset* or *closed* (the server ended the connection
  without a reply), *timeout*, *wrong reply*, *other*.  A worker SIGKILLed between its accept() and the
  start of the program takes the connection it holds with it: such a drop (reset or closed) within
  {window:g} s after a worker kill is counted as *dropped by a worker kill*.  **Failed** = timeouts + wrong
  replies + other errors + drops with no worker kill before them; the target is 0.  Connections waiting
  in the listen queue are the master's: a worker's death does not touch them.
- **Log lines.** Every line is one write(2) of fewer than PIPE_BUF bytes into the pipe svscan holds, so
  a producer SIGKILLed at any moment loses nothing it wrote, and a multilog SIGKILLed leaves what is in
  the pipe for the next one.  What a multilog had read but not yet written when it was killed is gone
  with it (any multilog, daemontools' too): a gap is put down to that only when a multilog kill of that
  service falls between the stamps of the lines on either side (±{margin:g} s); every other gap, any
  repeated line, any step back within a run and any run that shows up again after a later one are
  failures.  A run whose `runs/RUN` file exists but which left no line is fine when a kill of that
  service followed within 2 s of its start (it was killed before its first write)."""


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f}"


def render_markdown(data: dict) -> str:
    from loadtest.soak_conns import KILL_WINDOW
    from loadtest.soak_tree import GAP_MARGIN

    m = data["machine"]
    cfg = data["config"]
    out = ["# Soak run: prefork's tcpserver and svscan under SIGKILL", "",
           f"Run finished {data['when']}: {data['elapsed']:.0f} s with " + " and ".join(
               {"conns": "connections while tcpserver workers are SIGKILLed",
                "tree": "a supervised, logged service tree while services, multilogs and svscan are SIGKILLed"}[p]
               for p in cfg["phases"]) + f", side by side; seed {cfg['seed']}. "
           + ("**Every check passed.**" if data["ok"] else "**Some checks failed** (below)."), ""]
    load = m.get("load_average") or [0.0]
    end = data.get("load_average_end") or [0.0]
    if max(load[0], end[0]) > 0.5 * m["nproc"]:
        out += [f"> **Busy machine:** 1-minute load average {load[0]:.2f} at the start, {end[0]:.2f} at the end, on "
                f"{m['nproc']} CPUs: other work ran at the same time.", ""]
    if data.get("note"):
        out += [f"> {data['note']}", ""]
    code = data.get("code") or {}
    if code.get("snapshot"):
        out += ["> The run used a copy of prefork/, control/ and metrics/ taken at its start (`--snapshot`)"
                + (f"; {len(code['changed_during_run'])} files changed in the checkout meanwhile and did not reach "
                   "it." if code.get("changed_during_run") else "."), ""]
    elif code.get("changed_during_run"):
        out += [f"> **The code under test changed during the run** ({', '.join(code['changed_during_run'])}): "
                "processes started after the change (restarted svscans, new workers, multilogs) ran other code "
                "than those started before it; figures that compare early and late samples are not comparable.", ""]
    out += ["## Checks", "", "| check | result | measured |", "|---|:---:|---|"]
    for ch in data["checks"]:
        out.append(f"| {ch['check']} | {'pass' if ch['ok'] else '**FAIL**'} | {ch['measured']} |")
    out.append("")
    c = data.get("connections")
    if c:
        lg = c["log"]
        k = c["by_kind"]
        out += ["## Connections", "",
                f"`{_short(c['command'])}` (`echo-seq` reads one line and writes it back); {c['clients']} client "
                f"processes on 127.0.0.1, each with one connection in flight: connect, wait {c['hold_ms']:g} ms, send "
                f"`CLIENT SEQ`, read to EOF, compare.  A worker (a child of the master with the master's command "
                f"line, found through /proc) chosen at random gets SIGKILL every {cfg['kill_every']:g} s.  Running "
                f"programs (children of the workers, and the master's children that are not workers) are counted "
                f"every 50 ms.", "",
                "| figure | value |", "|---|---:|",
                f"| connections made | {c['made']:,} ({c['conn_per_s']:,.0f}/s) |",
                f"| ok | {c['ok']:,} |",
                f"| refused | {k['refused']:,} |",
                f"| reset / closed without a reply | {k['reset']:,} / {k['closed']:,} |",
                f"| of which dropped by a worker kill | {c['dropped_at_kills']:,} |",
                f"| timeout / wrong reply / other | {k['timeout']:,} / {k['wrong_reply']:,} / {k['other']:,} |",
                f"| **failed** | **{c['failed']:,}** |",
                f"| worker kills | {c['worker_kills']} |",
                f"| most programs running at a sample / `-c` | {c['max_programs']} / {c['limit']} |",
                f"| samples above `-c` | {c['over_limit_samples']} of {c['program_samples']:,} |",
                f"| most connections in a `status:` line | {lg['status_max']} |",
                f"| `pid` / `ok` / `end` lines | {lg['pid_lines']:,} / {lg['ok_lines']:,} / {lg['end_lines']:,} |",
                f"| `end PID` without a `pid PID` before it | {lg['end_without_pid']} |",
                f"| `pid PID` never ended | {lg['pid_without_end']} |",
                f"| warnings in the log | {lg['warnings']} |", ""]
        if lg["end_without_pid"]:
            out += ["An `end PID` without its `pid PID`: the program started (its end was logged, by the master "
                    "that reaped it once its worker was gone) but its `pid`/`ok` lines were never written: the worker "
                    "was killed between posix_spawn() returning and its write of those lines.", ""]
        if lg["pid_without_end"]:
            out += ["A `pid PID` never ended: the program ran and was reaped, but no `end` line was written for it: "
                    "its worker was killed after its waitpid() had reaped the program and before it wrote the `end` "
                    "line (that write waits for the `-c` limit lock, so the window grows when workers contend for "
                    "it). The master never sees such a program: it was no longer anyone's child.", ""]
        for what in ("end_without_pid", "pid_without_end", "warnings"):
            lines = lg["samples"].get(what) or []
            if lines:
                out += [f"First `{what.replace('_', ' ')}` lines:", "", "```", *lines, "```", ""]
        if c.get("master_died"):
            d = c["master_died"]
            out += [f"**The tcpserver master exited on its own** at {d['t']:.0f} s (status {d['status']}); its log "
                    f"ends: `{d['said'][-200:]}`", ""]
        if c["failed_samples"]:
            out += ["First failed connections (seconds into the run): " + ", ".join(
                f"{s['kind']} at {s['t']:.2f} s" for s in c["failed_samples"]) + ".", ""]
    t = data.get("tree")
    if t:
        kills = t["kills"]
        out += ["## Supervised tree", "",
                f"`{_short(t['command'])}` over {t['services']} services.  Each runs a Python producer writing "
                f"`svcN RUN N` every {t['line_interval']:g} s (one write(2) per line) and `svcN RUN end N` on "
                f"SIGTERM; RUN numbers its starts (an O_EXCL file per start).  Each `log` runs `{t['log_script']}`.  "
                f"About every {cfg['fault_every']:g} s (0.5-1.5 x) one fault: SIGKILL a producer, a multilog, or "
                "svscan (a new svscan is started 0.2-1 s later and takes the services over).  At the end svscan "
                "gets SIGTERM (`--stop-services`) and every log file (`current`, `@*.s`, `@*.u`) is read back.", "",
                "| figure | value |", "|---|---:|",
                f"| log lines read back | {t['lines']:,} in {t['runs']} runs, {t['files']} files |",
                f"| kills: producers / multilogs / svscan | {kills['service']} / {kills['multilog']} / "
                f"{kills['svscan']} |",
                f"| after an svscan kill: services taken over / started again | {t['adopted']} / "
                f"{t['restarted_after_svscan_kill']} |",
                f"| gaps at a multilog kill (lines lost in the killed multilog) | {t['gaps_at_multilog_kills']} "
                f"({t['lines_lost_at_multilog_kills']}) |",
                f"| **gaps anywhere else (lines)** | **{t['gaps_unexplained']} ({t['lines_lost_unexplained']})** |",
                f"| **repeated lines** | **{t['duplicates']}** |",
                f"| lines out of order / runs interleaved | {t['out_of_order']} / {t['interleaved_runs']} |",
                f"| foreign lines / torn lines | {t['foreign_lines']} / {t['torn_lines']} |",
                f"| runs that left no line (not right after a kill) | {t['runs_without_lines']} "
                f"({t['runs_without_lines_unexplained']}) |",
                f"| most producers / multilogs of one service at once | "
                f"{max(t['max_producers'].values(), default=0)} / {max(t['max_multilogs'].values(), default=0)} |",
                f"| svscan exits nobody asked for | {len(t.get('svscan_deaths', []))} |",
                f"| svscan exit status after SIGTERM, seconds to stop | {t['exit_status']}, {t['stop_seconds']:g} |",
                "", "| service | lines | runs | files | gaps at multilog kills (lines) | other gaps | repeats |",
                "|---|---:|---:|---:|---:|---:|---:|"]
        for name, p in t["per_service"].items():
            out.append(f"| {name} | {p['lines']:,} | {p['runs']} | {p['files']} | {p['gaps_at_multilog_kills']} "
                       f"({p['lines_lost_at_multilog_kills']}) | {p['gaps_unexplained']} | {p['duplicates']} |")
        out.append("")
        if t["svscan_restarts"]:
            out += ["svscan restarts (pause before the new svscan, seconds until every service was supervised "
                    "again, services taken over / started again): " + "; ".join(
                        f"{r['pause_s']:.2f} s, {r['up_s']:.2f} s, {r['adopted']}/{r['restarted']}"
                        for r in t["svscan_restarts"][:30]) + ".", ""]
        if t["svscan_output"]:
            out += [f"svscan and its services said ({t['svscan_output_lines']} lines; first ones):", "", "```",
                    *t["svscan_output"][:10], "```", ""]
    out += ["## What counts as lost", "", LOST.format(window=KILL_WINDOW, margin=GAP_MARGIN), ""]
    r = data.get("resources") or {}
    if r.get("groups"):
        b = r["bounds"]
        out += ["## Resources", "",
                "Sampled once a second: open fds (`/proc/PID/fd`, pidfds apart: svscan holds one per service it "
                "took over, until that service exits) and RSS (`/proc/PID/statm`), per process, averaged over the "
                f"group.  Flat: the last quarter's mean within {b['fd_slack']:g} fds of the first quarter's (and no "
                f"sample more than {2 * b['fd_slack']:g} above the first quarter's largest); RSS within "
                f"x {b['rss_ratio']:g} + {_mib(b['rss_slack'])} MiB.  Workers, multilogs and svscan are replaced "
                "as they are killed: these are the figures of whichever processes were running.", "",
                "| group | samples | processes | fds first / last quarter | fds max | pidfds max | RSS MiB first / last "
                "quarter | RSS max MiB | flat |", "|---|---:|---:|---:|---:|---:|---:|---:|:---:|"]
        for name, g in r["groups"].items():
            flat = "yes" if g["fds_flat"] and g["rss_flat"] else (
                "**no** (" + ", ".join(x for x, ok in (("fds", g["fds_flat"]), ("RSS", g["rss_flat"])) if not ok) + ")")
            out.append(f"| {name} | {g['samples']} | {g['processes_mean']:.1f} | {g['fds_first']:g} / {g['fds_last']:g} "
                       f"| {g['fds_max']} | {g['pidfds_max']} | {_mib(g['rss_first'])} / {_mib(g['rss_last'])} | "
                       f"{_mib(g['rss_max'])} | {flat} |")
        z = r["zombies"]
        by = "; ".join(f"{kind}: at most {v['max']}, mean {v['mean']:g}" for kind, v in z.get("by_parent", {}).items())
        out += ["", f"Zombies (children of the master, the workers, svscan, and of the soak itself, which is the "
                f"subreaper of a killed svscan's services) at a sample: at most {z['max']}, mean {z['first_quarter_mean']:g} "
                f"in the first quarter and {z['last_quarter_mean']:g} in the last ("
                f"{'flat' if z.get('flat') else '**growing**'}); {z['stuck_count']} left unreaped for 3 s or more."
                + (" " + ", ".join(z["stuck"]) + "." if z["stuck"] else "") + (f" By parent: {by}." if by else ""), ""]
        fds_flat = all(g["fds_flat"] for g in r["groups"].values())
        changes = [c for c in r.get("fd_changes", []) if c["group"] != "tcpserver workers"]
        if changes and not fds_flat:
            out += ["Processes whose fds differed from the first one sampled in their group (workers left out: "
                    "a connection between accept() and its program's start is an fd): " + "; ".join(
                        f"{c['group']} pid {c['pid']} at {c['t']:.0f} s, {c['baseline_fds']}→{c['fds']} "
                        f"(+{c['added'] or '{}'} -{c['removed'] or '{}'})" for c in changes[:10]) + ".", ""]
    cl = data.get("cleanup") or {}
    out += ["## Clean-up", "",
            f"- processes of the run still running after the stop: {', '.join(cl.get('processes_left') or []) or 'none'}",
            f"- zombies at the end of the run (before the stop): {', '.join(cl.get('zombies_left') or []) or 'none'}",
            f"- /dev/shm files of the run ({', '.join(cl.get('shm_files') or []) or 'none'}) left behind: "
            f"{', '.join(cl.get('shm_left') or []) or 'none'}",
            f"- orphans reaped by the soak (services of killed svscans that exited, workers of the stopped "
            f"master): {cl.get('orphans_reaped_total', 0)}", ""]
    chart = data.get("chart") or {}
    if chart.get("written"):  # published: --publish copies it next to docs/SOAK.md
        out += ["## Chart", "", "![soak](soak.png)", ""]
    elif chart.get("note"):
        out += ["## Chart", "", f"No chart: {chart['note']}.", ""]
    out += ["## Machine", "",
            f"- CPU: {m['cpu_model']}, nproc {m['nproc']}",
            f"- kernel {m['kernel']}, Python {m['python']}, prefork commit {m.get('prefork_commit') or 'unknown'}"
            + (f" plus uncommitted changes to {len(code['uncommitted'])} files of prefork/, control/, metrics/"
               if code.get("uncommitted") else ""),
            f"- load average at start {' '.join(f'{x:.2f}' for x in load)}, at end {' '.join(f'{x:.2f}' for x in end)}",
            "", "## Reproduce", "", "```", data["command"], "```", "",
            "The run writes `soak.json` (every figure, with per-second series), this report and `soak.png` "
            "(when matplotlib, the `bench` extra, is installed) to `loadtest/results/soak-TIMESTAMP/` or `--out`; "
            "`--publish` also writes docs/SOAK.md.  Exit status 0 when every check passed.", ""]
    return "\n".join(out)


def _short(command: str) -> str:
    """A command line with the venv's and the work directory's paths cut to their last part."""
    words = []
    for w in command.split():
        if w.startswith("/") and ("/.venv/" in w or "prefork-soak-" in w):
            w = Path(w).name
        words.append(w)
    return " ".join(words)


def write_chart(data: dict, path: Path) -> dict:
    """Connections, programs against -c, log lines, fds and RSS over time; {'written': False, 'note': why} without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        return {"written": False, "note": "matplotlib is not installed (pip install -e '.[bench]')", "path": ""}
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c, t, r = data.get("connections"), data.get("tree"), data.get("resources") or {}
    panels = []
    if c:
        panels += ["conns", "programs"]
    if t:
        panels.append("lines")
    if r.get("series"):
        panels += ["fds", "rss"]
    if not panels:
        return {"written": False, "note": "nothing was measured", "path": ""}
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 2.6 * len(panels)), sharex=True, squeeze=False)
    kills = c["timeline"]["kills"] if c else []
    faults = t["timeline"]["faults"] if t else []
    colours = {"service": "C2", "multilog": "C4", "svscan": "C3"}
    for ax, panel in zip(axes[:, 0], panels, strict=True):
        if panel == "conns":
            rows = c["timeline"]["conns"]
            ts = [row[0] for row in rows]
            ok = [b[1] - a[1] for a, b in zip([(0, 0, 0), *rows], rows, strict=False)]
            bad = [b[2] - a[2] for a, b in zip([(0, 0, 0), *rows], rows, strict=False)]
            ax.plot(ts, ok, color="C0", lw=1, label="ok")
            ax.plot(ts, bad, color="C3", lw=1, label="not ok")
            for k in kills:
                ax.axvline(k, color="grey", lw=0.5, alpha=0.5)
            ax.set_ylabel("connections/s")
            ax.set_title("connections per second (grey: worker kills)", fontsize=10)
            ax.legend(loc="upper right", fontsize=8)
        elif panel == "programs":
            ys = c["timeline"]["programs_max"]
            ax.step(range(len(ys)), ys, where="post", color="C1", lw=1, label="programs (max per second)")
            ax.axhline(c["limit"], color="C3", lw=1.5, ls="--", label=f"-c {c['limit']}")
            ax.set_ylim(0, max(c["limit"], max(ys, default=0)) * 1.15 + 1)
            ax.set_ylabel("programs")
            ax.set_title("programs running, sampled every 50 ms", fontsize=10)
            ax.legend(loc="lower right", fontsize=8)
        elif panel == "lines":
            for i, (name, p) in enumerate(t["per_service"].items()):
                ys = p["lines_per_second"]
                ax.plot(range(len(ys)), ys, lw=0.8, color=f"C{i % 10}", label=name)
            for f in faults:
                ax.axvline(f["t"], color=colours[f["kind"]], lw=0.6, alpha=0.6)
            ax.set_ylabel("lines/s")
            ax.set_title("log lines per second by stamp (green: producer kill, purple: multilog kill, red: svscan kill)",
                         fontsize=10)
            ax.legend(loc="lower right", fontsize=7, ncol=4)
        else:
            for i, (name, s) in enumerate(r["series"].items()):
                ys = s["fds_mean"] if panel == "fds" else [x / 2**20 for x in s["rss_mean"]]
                ax.plot(s["t"], ys, lw=1, color=f"C{i % 10}", label=name)
            ax.set_ylabel("fds per process" if panel == "fds" else "RSS MiB per process")
            ax.set_title("open fds per process (pidfds apart)" if panel == "fds" else "RSS per process", fontsize=10)
            ax.legend(loc="upper right", fontsize=7, ncol=2)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("seconds into the run")
    fig.suptitle(f"prefork soak, {data['elapsed']:.0f} s, {data['machine']['nproc']} cpus, seed {data['config']['seed']}")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return {"written": True, "note": "", "path": str(path)}
