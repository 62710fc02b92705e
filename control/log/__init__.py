"""The logger: multilog, tai64n, tai64nlocal, log directories and their counter blocks (daemontools' side)."""
