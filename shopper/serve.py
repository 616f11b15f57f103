"""Serve the ASGI app with N Daphne processes on one port.

Daphne is single-process; its documented way to use more cores is a process manager that
passes it an already-bound socket (``--fd``). This is that manager, small enough to keep in the
repo: it binds, starts N children, forwards SIGINT/SIGTERM and exits when any child dies: with
status 0 only when it was asked to stop (SIGINT/SIGTERM); a child that died on its own makes it
exit non-zero, so a restart-on-failure policy (compose ``restart: on-failure``, systemd
``Restart=on-failure``) restarts the web server.

Each child gets its own socket bound with SO_REUSEPORT, so the kernel spreads connections across
them. With one shared socket the first child to wake accepts every waiting connection: a handful
of keep-alive clients (scripts polling the menu) all landed on one process, leaving a core idle
and halving throughput.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time


def listening_socket(host: str, port: int, reuse_port: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


def listening_sockets(host: str, port: int, workers: int) -> list[socket.socket]:
    """One SO_REUSEPORT socket per worker (one shared socket where the OS lacks it).

    Raises OSError (address in use) when anything already listens on the port, even another
    server of ours: a plain bind comes first, because SO_REUSEPORT sockets of the same user
    would otherwise share the port silently, and a stale server would take half the traffic."""
    if not hasattr(socket, "SO_REUSEPORT"):
        return [listening_socket(host, port, reuse_port=False)]
    listening_socket(host, port, reuse_port=False).close()
    return [listening_socket(host, port, reuse_port=True) for _ in range(workers)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    parser.add_argument("--workers", type=int, default=int(os.environ.get("WEB_WORKERS", "2")))
    parser.add_argument("--proxy-headers", action="store_true")
    args = parser.parse_args(argv)

    workers = max(1, args.workers)
    try:
        sockets = listening_sockets(args.host, args.port, workers)
    except OSError as exc:
        sys.exit(f"shopper.serve: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}")
    children = []
    for i in range(workers):
        fd = sockets[i % len(sockets)].fileno()
        cmd = [sys.executable, "-m", "daphne", "--fd", str(fd), "-v", "1", "shopper.asgi:application"]
        if args.proxy_headers:
            cmd.insert(-1, "--proxy-headers")
        # SHOPPER_SERVED: the child records "web up" for the heartbeat grace (sessions/uptime.py).
        env = {**os.environ, "SHOPPER_SERVED": "1"}
        children.append(subprocess.Popen(cmd, pass_fds=(fd,), env=env))

    asked_to_stop = False

    def stop(signum, frame):
        nonlocal asked_to_stop
        if signum is not None:
            asked_to_stop = True
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        while all(child.poll() is None for child in children):
            time.sleep(0.5)
    finally:
        stop(None, None)
        for child in children:
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()
    sys.exit(exit_code(children, asked_to_stop=asked_to_stop))


def exit_code(children: list[subprocess.Popen], *, asked_to_stop: bool) -> int:
    """0 after a requested stop in which every child exited cleanly; otherwise non-zero.

    A child killed by a signal has a negative return code, which ``max(..., 0)`` used to turn
    into 0: the web server then looked like it had stopped on purpose and was never restarted."""
    codes = [child.returncode for child in children]
    if not asked_to_stop:
        # A child died on its own (crash, OOM kill, SIGKILL): always a failure.
        return next((code for code in codes if code and code > 0), 1)
    failed = [code for code in codes if code not in (0, None, -signal.SIGTERM, -signal.SIGINT)]
    return 1 if failed else 0


if __name__ == "__main__":
    main()
