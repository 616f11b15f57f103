"""Logging in to a rented machine to prove the SSH handoff works (we never proxy traffic)."""

from __future__ import annotations

import asyncio

import asyncssh


class SSHCheckFailed(Exception):
    pass


async def _run(host: str, port: int, user: str, private_key: str, command: str, timeout: float) -> str:
    key = asyncssh.import_private_key(private_key)
    async with asyncssh.connect(
        host, port=port, username=user, client_keys=[key], known_hosts=None,
        connect_timeout=timeout, login_timeout=timeout,
    ) as conn:  # fmt: skip
        result = await asyncio.wait_for(conn.run(command, check=False), timeout)
        if result.exit_status not in (0, None):
            raise SSHCheckFailed(f"`{command}` exited with {result.exit_status}: {str(result.stderr)[:200]}")
        return str(result.stdout)


def ssh_run(*, host: str, port: int, user: str, private_key: str, command: str, timeout: float = 15) -> str:
    """Log in with ``private_key`` and run ``command``; returns its output or raises SSHCheckFailed.

    Host keys are not pinned: the machine is brand new and its key is unknown to us; what we
    prove is that *our* key gets a shell, which is what the user will rely on.
    """
    try:
        return asyncio.run(_run(host, port, user, private_key, command, timeout))
    except SSHCheckFailed:
        raise
    except (TimeoutError, OSError, asyncssh.Error) as exc:
        raise SSHCheckFailed(f"{type(exc).__name__}: {exc}") from exc


def ssh_banner(*, host: str, port: int, timeout: float = 10) -> str:
    """The server's SSH identification line, proving an SSH server answers on host:port."""
    import socket

    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            banner = sock.recv(256).decode(errors="replace").strip()
    except OSError as exc:
        raise SSHCheckFailed(f"{type(exc).__name__}: {exc}") from exc
    if not banner.startswith("SSH-"):
        raise SSHCheckFailed(f"not an SSH server: {banner[:60]!r}")
    return banner
