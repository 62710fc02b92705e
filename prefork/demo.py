"""``make demo``: a tcpserver with a rules file and a greeting program on 127.0.0.1.

It builds a throw-away directory with a rules text, compiles it with
prefork's tcprules, and runs prefork's tcpserver in the foreground with
``-v`` logging to the terminal.  Ctrl-C stops it and removes the directory.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

RULES = """\
# prefork demo rules: loopback clients are greeted by name, everyone else is refused.
127.0.0.1:allow,GREETING="welcome to prefork"
:deny
"""

GREETER = """\
#!/bin/sh
# One connection: the socket is stdin and stdout, tcpserver's variables are in the environment.
echo "$GREETING, $TCPREMOTEIP:$TCPREMOTEPORT (you reached $TCPLOCALIP:$TCPLOCALPORT)"
echo "type a line and I will echo it back:"
read -r line
echo "you said: $line"
"""


def main() -> int:
    """Run the demo until Ctrl-C (or SIGTERM); returns the exit status."""
    bindir = os.path.dirname(sys.executable)
    tmp = tempfile.mkdtemp(prefix="prefork-demo.")
    server = None
    try:
        with open(os.path.join(tmp, "rules.txt"), "w") as f:
            f.write(RULES)
        greeter = os.path.join(tmp, "greeter")
        with open(greeter, "w") as f:
            f.write(GREETER)
        os.chmod(greeter, 0o755)
        cdb = os.path.join(tmp, "rules.cdb")
        with open(os.path.join(tmp, "rules.txt"), "rb") as rules_in:
            subprocess.run([os.path.join(bindir, "tcprules"), cdb, cdb + ".tmp"], stdin=rules_in, check=True)
        port = os.environ.get("DEMO_PORT", "0")
        cmd = [os.path.join(bindir, "tcpserver"), "-1", "-v", "-HR", "-l", "localhost", "-c", "10",
               "-x", cdb, "127.0.0.1", port, greeter]
        server = subprocess.Popen(cmd, stdout=subprocess.PIPE)
        assert server.stdout is not None
        line = server.stdout.readline().strip()
        if not line:
            print("demo: tcpserver did not start", file=sys.stderr)
            return 111
        print(f"""
prefork demo: tcpserver is listening on 127.0.0.1:{line.decode()} (pid {server.pid})
  rules:    {os.path.join(tmp, 'rules.txt')} (compiled to rules.cdb with tcprules)
  program:  {greeter}
  connect:  nc 127.0.0.1 {line.decode()}     or: tcpclient -HR -l0 127.0.0.1 {line.decode()} sh -c 'cat <&6'
  check:    TCPREMOTEIP=127.0.0.1 tcprulescheck {cdb}
The -v log lines follow. Press Ctrl-C to stop.
""", flush=True)
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
        while server.poll() is None:
            time.sleep(0.5)
        return server.returncode or 0
    except KeyboardInterrupt:
        return 0
    finally:
        if server is not None and server.poll() is None:
            server.terminate()
            server.wait(timeout=5)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
