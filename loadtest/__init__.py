"""Load generator and side-by-side benchmarks of prefork's tcpserver against Debian's ucspi-tcp 0.88.

`loadgen` drives one server; `runner` starts the servers, alternates them over rounds in one run
(so machine drift hits both alike) and reports ratios; nothing here asserts a wall-clock speed.
"""
