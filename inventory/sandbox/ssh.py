"""Real SSH endpoints of the sandbox cloud (asyncssh), one loopback listener per running instance.

The asyncio loop runs on its own thread; the rest of the sandbox is threaded (http.server), so the
public methods of :class:`SSHManager` are blocking and thread-safe. Authentication is public-key
only, against the ``authorized_keys`` files of the instance's fake machine (see ``node.py``):
whatever the provider installed (Vast: attached keys; TensorDock: the create request's key and what
cloud-init wrote) is accepted, nothing else. A session runs the command through ``/bin/sh -c``
(or a shell, with a PTY when asked) in the user's fake home, with the instance's environment.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import pty
import signal
import struct
import termios
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import asyncssh

log = logging.getLogger("sandbox.ssh")


@dataclass
class SessionSpec:
    """How to run a session for one user of one instance."""

    env: dict[str, str]
    cwd: str
    rewrite: Callable[[str], str]
    fs_root: str


# (instance key, username, public key blob) -> allowed?
Authorizer = Callable[[str, str, bytes], bool]
# (instance key, username, TERM or None) -> SessionSpec, or None when the instance is gone
SpecFactory = Callable[[str, str, "str | None"], "SessionSpec | None"]
# (instance key, pid) -> None: remember a session's process group so destroy can kill it
PidTracker = Callable[[str, int], None]


def load_host_key(path: Path) -> asyncssh.SSHKey:
    """The sandbox's host key, generated once next to the state file."""
    if not path.exists():
        key = asyncssh.generate_private_key("ssh-ed25519")
        key.write_private_key(str(path))
        path.chmod(0o600)
        key.write_public_key(str(path) + ".pub")
    return asyncssh.read_private_key(str(path))


def _set_ctty() -> None:  # runs in the child, after setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _set_winsize(fd: int, width: int, height: int, pixw: int = 0, pixh: int = 0) -> None:
    if width and height:
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, pixw, pixh))


class SSHManager:
    def __init__(
        self, host_key_path: Path, authorizer: Authorizer, spec_factory: SpecFactory, track: PidTracker
    ):
        self.host_key = load_host_key(host_key_path)
        self.authorizer = authorizer
        self.spec_factory = spec_factory
        self.track = track
        self.loop = asyncio.new_event_loop()
        self._servers: dict[str, asyncssh.SSHAcceptor] = {}
        self._conns: dict[str, set[asyncssh.SSHServerConnection]] = {}
        self._thread = threading.Thread(target=self.loop.run_forever, name="sandbox-ssh", daemon=True)
        self._thread.start()

    def _call(self, coro, timeout: float = 10.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    # -- public, blocking ------------------------------------------------------------------
    def is_open(self, key: str) -> bool:
        return key in self._servers

    def open(self, key: str, port: int) -> None:
        """Listen for instance ``key`` on 127.0.0.1:``port``; raises OSError if the port is taken."""
        self._call(self._open(key, port))

    def close(self, key: str) -> None:
        """Stop listening and drop every connection of instance ``key``."""
        self._call(self._close(key))

    def stop(self) -> None:
        for key in list(self._servers):
            try:
                self.close(key)
            except Exception:  # shutting down anyway
                log.exception("closing ssh for %s", key)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)

    # -- loop side -------------------------------------------------------------------------
    async def _open(self, key: str, port: int) -> None:
        if key in self._servers:
            return
        manager = self

        class Server(asyncssh.SSHServer):
            def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
                self.conn = conn
                manager._conns.setdefault(key, set()).add(conn)

            def connection_lost(self, exc: Exception | None) -> None:
                manager._conns.get(key, set()).discard(self.conn)

            def begin_auth(self, username: str) -> bool:
                return True  # authentication is always required

            def password_auth_supported(self) -> bool:
                return False

            def public_key_auth_supported(self) -> bool:
                return True

            def validate_public_key(self, username: str, key_: asyncssh.SSHKey) -> bool:
                return manager.authorizer(key, username, key_.public_data)

        class SFTP(asyncssh.SFTPServer):
            def __init__(self, chan: asyncssh.SSHServerChannel):
                user = chan.get_extra_info("username")
                spec = manager.spec_factory(key, user, None)
                super().__init__(chan, chroot=(spec.fs_root if spec else "/nonexistent").encode())

            def exit(self) -> None:
                super().exit()
                # sshd reports exit status 0 for the sftp subsystem; scp (sftp mode) insists on it.
                with contextlib.suppress(OSError, asyncssh.Error):
                    self.channel.exit(0)

        server = await asyncssh.create_server(
            Server,
            "127.0.0.1",
            port,
            server_host_keys=[self.host_key],
            process_factory=lambda process: self._session(key, process),
            sftp_factory=SFTP,
            allow_scp=True,
            encoding=None,
            line_editor=False,
            reuse_address=True,
        )
        self._servers[key] = server

    async def _close(self, key: str) -> None:
        server = self._servers.pop(key, None)
        if server is not None:
            server.close()
            await server.wait_closed()
        for conn in list(self._conns.pop(key, set())):
            conn.abort()

    async def _session(self, key: str, process: asyncssh.SSHServerProcess) -> None:
        user = process.get_extra_info("username")
        term = process.get_terminal_type()
        spec = self.spec_factory(key, user, term)
        if spec is None:
            process.stderr.write(b"instance is not running\n")
            process.exit(255)
            return
        command = process.command
        try:
            if term:
                code = await self._run_pty(key, process, spec, command)
            else:
                code = await self._run_pipes(key, process, spec, command)
        except (OSError, asyncssh.Error) as exc:
            log.info("session on %s ended: %s", key, exc)
            code = 255
        with contextlib.suppress(OSError, asyncssh.Error):
            await process.stdout.drain()
        process.exit(code if code >= 0 else 128 - code)

    async def _run_pipes(self, key: str, process, spec: SessionSpec, command: str | None) -> int:
        argv = ["/bin/sh", "-c", spec.rewrite(command)] if command else ["/bin/sh"]
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=spec.cwd,
            env=spec.env,
            start_new_session=True,
        )
        self.track(key, proc.pid)

        async def pump_out(reader: asyncio.StreamReader, writer) -> None:
            while chunk := await reader.read(65536):
                writer.write(chunk)

        async def pump_in() -> None:
            try:
                while True:
                    try:
                        data = await process.stdin.read(65536)
                    except asyncssh.SignalReceived as sig:
                        _signal_group(proc.pid, sig.signal)
                        continue
                    except (asyncssh.BreakReceived, asyncssh.TerminalSizeChanged):
                        continue
                    if not data:
                        break
                    proc.stdin.write(data)
                    await proc.stdin.drain()
            except (OSError, asyncssh.Error):
                pass
            finally:
                if not proc.stdin.is_closing():
                    proc.stdin.close()

        feeder = asyncio.ensure_future(pump_in())
        await asyncio.gather(pump_out(proc.stdout, process.stdout), pump_out(proc.stderr, process.stderr))
        code = await proc.wait()
        feeder.cancel()
        return code

    async def _run_pty(self, key: str, process, spec: SessionSpec, command: str | None) -> int:
        master, slave = pty.openpty()
        width, height, pixw, pixh = process.get_terminal_size()
        _set_winsize(slave, width, height, pixw, pixh)
        shell = spec.env.get("SHELL", "/bin/sh")
        argv = ["/bin/sh", "-c", spec.rewrite(command)] if command else [shell, "-i"]
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=slave,
                stdout=slave,
                stderr=slave,
                cwd=spec.cwd,
                env=spec.env,
                start_new_session=True,
                preexec_fn=_set_ctty,
            )
        finally:
            os.close(slave)
        self.track(key, proc.pid)
        loop = asyncio.get_running_loop()
        eof = asyncio.Event()

        def readable() -> None:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO once every holder of the slave side is gone
                data = b""
            if data:
                process.stdout.write(data)
            else:
                loop.remove_reader(master)
                eof.set()

        loop.add_reader(master, readable)

        async def pump_in() -> None:
            try:
                while True:
                    try:
                        data = await process.stdin.read(65536)
                    except asyncssh.TerminalSizeChanged as change:
                        _set_winsize(master, change.width, change.height, change.pixwidth, change.pixheight)
                        continue
                    except asyncssh.SignalReceived as sig:
                        _signal_group(proc.pid, sig.signal)
                        continue
                    except asyncssh.BreakReceived:
                        continue
                    if not data:
                        break
                    os.write(master, data)
            except (OSError, asyncssh.Error):
                pass

        feeder = asyncio.ensure_future(pump_in())
        code = await proc.wait()
        try:
            # Background jobs may keep the slave open; don't wait for them forever.
            await asyncio.wait_for(eof.wait(), timeout=1.0)
        except TimeoutError:
            loop.remove_reader(master)
        feeder.cancel()
        os.close(master)
        return code


def _signal_group(pid: int, name: str) -> None:
    sig = getattr(signal, f"SIG{name}", None)
    if sig is not None:
        with contextlib.suppress(OSError):
            os.killpg(pid, sig)
