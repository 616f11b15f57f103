"""``python -m inventory.sandbox``: start the sandbox cloud.

Flags fall back to environment variables: ``SANDBOX_HOST``, ``SANDBOX_PORT``, ``SANDBOX_STATE_FILE``,
``SANDBOX_SEED``, ``SANDBOX_BOOT_DELAY`` (seconds) and ``SANDBOX_FAULTS`` (JSON, see faults.py).
Prints ``SANDBOX READY http://HOST:PORT`` on stdout once it accepts requests (``--port 0`` picks a
free port). SIGTERM/SIGINT stop the API and the SSH endpoints; processes started on the simulated
machines keep running (a real cloud's machines don't die with its API): ``POST /_sandbox/reset``
first to kill them.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from .cloud import Cloud
from .faults import FaultConfigError, Faults
from .faults import parse as parse_faults
from .server import make_server


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ.get
    p = argparse.ArgumentParser(prog="python -m inventory.sandbox", description=__doc__.splitlines()[0])
    p.add_argument("--host", default=env("SANDBOX_HOST", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(env("SANDBOX_PORT", "8765")))
    p.add_argument(
        "--state-file", type=Path, default=Path(env("SANDBOX_STATE_FILE", "./.sandbox/state.sqlite3"))
    )
    p.add_argument("--seed", type=int, default=int(env("SANDBOX_SEED", "42")))
    p.add_argument("--boot-delay", type=float, default=float(env("SANDBOX_BOOT_DELAY", "3")))
    p.add_argument("--faults", default=env("SANDBOX_FAULTS", ""), help="fault config JSON, none or field")
    p.add_argument("--log-level", default=env("SANDBOX_LOG_LEVEL", "INFO"))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    logging.getLogger("asyncssh").setLevel(logging.WARNING)  # one INFO line per channel event otherwise
    try:
        faults = Faults(parse_faults(args.faults))
    except (ValueError, FaultConfigError) as exc:
        raise SystemExit(f"invalid SANDBOX_FAULTS / --faults: {exc}") from exc
    if args.boot_delay < 0:
        raise SystemExit("--boot-delay must be >= 0")
    cloud = Cloud(args.state_file, seed=args.seed, boot_delay=args.boot_delay, faults=faults)
    server = make_server(cloud, args.host, args.port)
    host, port = server.server_address[:2]
    url = f"http://{host}:{port}"
    cloud.start(url)

    def stop(signum, frame):  # serve_forever must be stopped from another thread
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"SANDBOX READY {url}", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        cloud.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
