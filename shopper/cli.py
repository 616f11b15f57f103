"""``gpu-shopper``: the command-line client of the shopper's REST API (API.md).

It speaks HTTP only (``requests`` and the standard library) and imports no Django, so it runs on
any laptop with the package installed. Configuration: ``gpu-shopper config --url URL --token
TOKEN`` writes ``$XDG_CONFIG_HOME/gpu-shopper/config.json`` (default ``~/.config/...``, mode
0600); the environment variables ``GPU_SHOPPER_URL`` and ``GPU_SHOPPER_TOKEN`` override it.

``ssh``, ``cp`` and ``ssh-config`` hand the machine's SSH address to OpenSSH (and rsync) on this
machine: the shopper is the menu, never a middleman for the traffic.

Exit codes: 0 success; 1 the server refused the request (or a wait ended without an active
session); 2 authentication, permission or configuration problem (and bad command-line usage);
3 not found; 4 the shopper cannot be reached; 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import requests

TIMEOUT_SECONDS = 10
ENV_URL = "GPU_SHOPPER_URL"
ENV_TOKEN = "GPU_SHOPPER_TOKEN"
SORTS = ("price", "-price", "price_per_gpu", "vram_gb", "-vram_gb", "reliability", "-reliability", "best_bet")
SORTS += ("value", "-value")  # $ per TFLOP-hour (the spec table)
STATUSES = ("pending", "provisioning", "booting", "verifying", "active", "stopping", "destroyed", "failed")
# A rental in one of these can never become active (sessions/models.py TRANSITIONS).
NEVER_ACTIVE = ("stopping", "destroyed", "failed")
UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$")

EXIT_OK, EXIT_ERROR, EXIT_AUTH, EXIT_NOT_FOUND, EXIT_UNREACHABLE, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130

EXIT_CODES_HELP = """exit codes:
  0  success
  1  the shopper refused the request (its message is printed), or --wait ended without an active session
  2  bad or missing token, permission denied, missing configuration, bad command-line usage
  3  not found
  4  the shopper cannot be reached
  ssh and cp: the exit code of ssh, scp or rsync (ssh: the remote command's)
"""


class CliError(Exception):
    """One line for the user (printed as ``error: <message>``) and an exit code."""

    def __init__(self, message: str, exit_code: int = EXIT_ERROR):
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------
def config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME", "")
    root = Path(base) if base and os.path.isabs(base) else Path.home() / ".config"
    return root / "gpu-shopper" / "config.json"


def config_read() -> dict:
    path = config_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot read the config file {path}: {exc}", EXIT_AUTH) from None
    return data if isinstance(data, dict) else {}


def write_private_file(path: Path, text: str, *, exclusive: bool = False) -> None:
    """Write ``text`` to ``path`` with mode 0600 from the first byte (never readable by others).

    ``exclusive``: fail with FileExistsError rather than replace an existing file.
    """
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC)
    fd = os.open(path, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)  # an existing file may have been created wider
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            fd = -1
            f.write(text)
    finally:
        if fd != -1:
            os.close(fd)


def private_dir(path: Path) -> None:
    """Create ``path`` (and parents) if missing; a directory we create is mode 0700."""
    if not path.is_dir():
        path.mkdir(parents=True, mode=0o700, exist_ok=True)
        path.chmod(0o700)


def config_write(data: dict) -> Path:
    path = config_path()
    try:
        private_dir(path.parent)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        write_private_file(tmp, json.dumps(data, indent=2) + "\n")
        os.replace(tmp, path)
    except OSError as exc:
        raise CliError(f"cannot write the config file {path}: {exc}") from None
    return path


def normalize_url(url: str) -> str:
    url = url.strip().rstrip("/")
    if url.endswith("/api/v1"):
        url = url[: -len("/api/v1")]
    if not re.match(r"^https?://[^/\s]+", url):
        raise CliError(f"the shopper URL must start with http:// or https:// (got {url!r})", EXIT_AUTH)
    return url


def settings_resolve() -> dict:
    """URL and token with where each came from: the environment wins over the config file."""
    saved = config_read()
    out = {}
    for key, env in (("url", ENV_URL), ("token", ENV_TOKEN)):
        if os.environ.get(env):
            out[key], out[f"{key}_source"] = os.environ[env].strip(), f"environment ({env})"
        elif saved.get(key):
            out[key], out[f"{key}_source"] = str(saved[key]).strip(), f"config file ({config_path()})"
        else:
            out[key], out[f"{key}_source"] = "", "not set"
    return out


def mask(token: str) -> str:
    if not token:
        return "(not set)"
    if len(token) <= 12:
        return "*" * len(token)
    return f"{token[:4]}…{token[-4:]}"


# --------------------------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------------------------
def _version() -> str:
    try:
        from importlib.metadata import version

        return version("cloud-gpu-shopper")
    except Exception:
        return "0"


class Client:
    """The REST API with the error mapping of the CLI (one line, an exit code, no traceback)."""

    def __init__(self, url: str, token: str):
        self.url = normalize_url(url)
        self.http = requests.Session()
        self.http.headers.update(
            {
                "Authorization": f"Token {token}",
                "Accept": "application/json",
                "User-Agent": f"gpu-shopper/{_version()}",
            }
        )

    @classmethod
    def from_config(cls) -> Client:
        s = settings_resolve()
        if not s["url"]:
            raise CliError(
                "no shopper URL configured: run `gpu-shopper config --url URL --token TOKEN` "
                f"or set {ENV_URL}",
                EXIT_AUTH,
            )
        if not s["token"]:
            raise CliError(
                "no API token configured: make one on the web page 'API tokens', then run "
                f"`gpu-shopper config --token TOKEN` or set {ENV_TOKEN}",
                EXIT_AUTH,
            )
        return cls(s["url"], s["token"])

    def request(self, method: str, path: str, *, params=None, body=None, raw: bool = False) -> Any:
        url = f"{self.url}/api/v1/{path.lstrip('/')}"
        if params:
            params = {k: v for k, v in params.items() if v is not None and v != ""}
        try:
            response = self.http.request(method, url, params=params, json=body, timeout=TIMEOUT_SECONDS)
        except requests.Timeout:
            raise CliError(
                f"cannot reach the shopper at {self.url}: no answer within {TIMEOUT_SECONDS} s",
                EXIT_UNREACHABLE,
            ) from None
        except requests.ConnectionError as exc:
            raise CliError(
                f"cannot reach the shopper at {self.url}: {_reason(exc)}", EXIT_UNREACHABLE
            ) from None
        except requests.RequestException as exc:
            raise CliError(f"bad shopper URL {self.url}: {exc}", EXIT_AUTH) from None
        if response.status_code >= 400:
            raise _http_error(response, self.url)
        if raw:
            return response.text
        try:
            return response.json()
        except ValueError:
            raise CliError(
                f"the answer from {self.url} is not JSON (HTTP {response.status_code}); "
                "is this the shopper's address?"
            ) from None

    def get(self, path: str, **params) -> Any:
        return self.request("GET", path, params=params)


def _reason(exc: Exception) -> str:
    """The innermost useful words of a connection error ('Connection refused', 'Name or ...')."""
    text = str(exc)
    found = re.findall(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
    if found:
        return found[-1].strip()
    for marker in ("Connection refused", "timed out", "Name or service not known", "No route to host"):
        if marker in text:
            return marker
    return text.splitlines()[0][:200] if text else exc.__class__.__name__


def _http_error(response: requests.Response, base_url: str) -> CliError:
    status = response.status_code
    detail, code = "", ""
    try:
        data = response.json()
    except ValueError:
        data = None
    if isinstance(data, dict):
        detail, code = str(data.get("detail") or "").strip(), str(data.get("code") or "").strip()
        if not detail:  # a validation answer without the shared shape: name the first field
            for key, value in data.items():
                message = value[0] if isinstance(value, list) and value else value
                detail = f"{key}: {message}"
                break
    detail = " ".join(detail.split())  # one line
    if status in (401, 403):
        exit_code = EXIT_AUTH
        detail = detail or ("not authenticated" if status == 401 else "permission denied")
    elif status == 404:
        exit_code = EXIT_NOT_FOUND
        detail = detail or f"not found (HTTP 404 from {base_url}; is this the shopper's address?)"
    elif status >= 500:
        exit_code = EXIT_ERROR
        detail = f"the shopper failed (HTTP {status})" + (f": {detail}" if detail else "; try again later")
    else:
        exit_code = EXIT_ERROR
        detail = detail or f"the shopper refused the request (HTTP {status})"
    return CliError(f"{detail} ({code})" if code else detail, exit_code)


# --------------------------------------------------------------------------------------------
# Output helpers
# --------------------------------------------------------------------------------------------
def out(text: str = "") -> None:
    print(text, flush=True)


def print_json(data: Any) -> None:
    out(json.dumps(data, indent=2, sort_keys=False))


def table(headers: list[str], rows: list[list[Any]], right: set[int] = frozenset()) -> str:
    cells = [[("" if c is None else str(c)) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]

    def line(values):
        parts = [
            v.rjust(w) if i in right else v.ljust(w)
            for i, (v, w) in enumerate(zip(values, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in cells)])


def when(value: str | None) -> str:
    """An API timestamp as ``2025-03-01 12:00 UTC`` (blank when missing)."""
    if not value:
        return ""
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return value
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return f"{moment:%Y-%m-%d %H:%M} UTC"


CENT = Decimal("0.01")


def money(value: Any, billed: bool = False) -> str:
    """Amounts as the web shows them (shopper/templatetags/shopper_format.py ``money``):
    ``$12.34``, and a charge under a cent reads ``< $0.01`` rather than a misleading ``$0.00``
    (``billed``: time was billed, so a zero that was rounded down is such a charge)."""
    if value in (None, ""):
        return ""
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        return f"${value}"
    if 0 < amount < CENT or (amount == 0 and billed):
        return "< $0.01"
    return f"${amount.quantize(CENT, rounding=ROUND_HALF_UP)}"


def percent(value: Any) -> str:
    """A 0..1 reliability as a whole percent, like the offers page; "n/a" when the provider
    publishes none (TensorDock)."""
    if value in (None, ""):
        return "n/a"
    try:
        return f"{(Decimal(str(value)) * 100).quantize(Decimal(1), rounding=ROUND_HALF_UP)}%"
    except InvalidOperation:
        return str(value)


def confidence_text(offer: dict) -> str:
    """An offer's confidence as the offers page says it, with the number: "usually works 82%"."""
    if offer.get("confidence") is None:
        return "?"
    return f"{offer.get('confidence_label') or ''} {percent(offer['confidence'])}".strip()


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def duration(seconds: float) -> str:
    """``45 s``, ``12 min``, ``1 h 05 min``, ``2 d 3 h`` (rounded down)."""
    seconds = int(max(0, seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min"
    if seconds < 86400:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    return f"{seconds // 86400} d {seconds % 86400 // 3600} h"


def billed(session: dict) -> bool:
    """Whether the session has been billed for any time (active since before its end or now)."""
    start = parse_time(session.get("active_since"))
    end = parse_time(session.get("ended_at")) or datetime.now(UTC)
    return start is not None and end > start


LIVE = ("pending", "provisioning", "booting", "verifying", "active")


def time_left(session: dict, now: datetime | None = None) -> str:
    """Until the reservation ends, as on the sessions page; blank once the session is ending."""
    if session.get("status") not in LIVE:
        return ""
    end = parse_time(session.get("reservation_ends_at"))
    if end is None:
        return ""
    seconds = (end - (now or datetime.now(UTC))).total_seconds()
    return duration(seconds) if seconds > 0 else "due now"


def clock(seconds: float) -> str:
    """Elapsed time as ``m:ss`` (or ``h:mm:ss``)."""
    seconds = int(max(0, seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def page_footer(page: dict, shown: int, noun: str, page_number: int) -> str:
    count = page.get("count", shown)
    text = f"{shown} of {count} {noun}"
    if page.get("next"):
        text += f" (page {page_number}; next: --page {page_number + 1})"
    elif page_number > 1:
        text += f" (page {page_number})"
    return text


# --------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------
def cmd_config(args) -> int:
    if args.url is None and args.token is None:
        s = settings_resolve()
        out(f"config file: {config_path()}")
        out(f"url:   {s['url'] or '(not set)'}  [{s['url_source']}]")
        out(f"token: {mask(s['token'])}  [{s['token_source']}]")
        return EXIT_OK
    data = config_read()
    if args.url is not None:
        data["url"] = normalize_url(args.url)
    if args.token is not None:
        token = args.token.strip()
        if token.lower().startswith("token "):
            token = token[6:].strip()
        if not token:
            raise CliError("the token is empty", EXIT_AUTH)
        data["token"] = token
    path = config_write(data)
    out(f"Saved to {path} (mode 0600).")
    out(f"url:   {data.get('url') or '(not set)'}")
    out(f"token: {mask(data.get('token', ''))}")
    for key, env in (("url", ENV_URL), ("token", ENV_TOKEN)):
        if os.environ.get(env):
            out(f"note: {env} is set in the environment and overrides the saved {key}.")
    return EXIT_OK


def cmd_inventory(args) -> int:
    client = Client.from_config()
    params = {
        "gpu": args.gpu,
        "min_gpus": args.min_gpus,
        "min_vram_gb": args.min_vram,
        "max_price": args.max_price,
        "provider": args.provider,
        "location": args.location,
        "min_reliability": args.min_reliability,
        "min_confidence": args.min_confidence,
        "min_cuda": args.min_cuda,
        "sort": args.sort,
        "page": args.page,
        "page_size": args.page_size,
    }
    page = client.get("inventory", **params)
    if args.json:
        print_json(page)
        return EXIT_OK
    offers = page.get("results", [])
    if not offers:
        out("No offers match.")
        return EXIT_OK
    rows = [
        [
            o.get("id"),
            o.get("gpu_type"),
            o.get("gpu_count"),
            f"{o.get('vram_gb')} GB",
            o.get("price_per_hour"),
            o.get("price_per_gpu_hour"),
            o.get("location"),
            percent(o.get("reliability")),
            confidence_text(o),
            o.get("provider"),
            o.get("usd_per_tflop_hour") or "—",
        ]
        for o in offers
    ]
    headers = [
        "ID",
        "GPU",
        "COUNT",
        "VRAM",
        "$/H",
        "$/GPU·H",
        "LOCATION",
        "RELIABILITY",
        "CONFIDENCE",
        "PROVIDER",
        "$/TFLOP·H",
    ]
    out(table(headers, rows, right={0, 2, 3, 4, 5, 7, 10}))
    out(page_footer(page, len(offers), "offers", int(args.page or 1)))
    return EXIT_OK


def read_public_key(path_text: str) -> str:
    path = Path(path_text).expanduser()
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise CliError(f"cannot read the key file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise CliError(f"{path} is not a text public key file") from None
    if "PRIVATE KEY" in text:
        # Never send a private key anywhere: use its .pub companion if there is one.
        pub = path.with_name(path.name + ".pub")
        if pub.is_file():
            return read_public_key(str(pub))
        raise CliError(f"{path} is a private key; give the public key file (usually {path.name}.pub)")
    if not text:
        raise CliError(f"the key file {path} is empty")
    return text


def save_private_key(session_id: str, pem: str) -> Path:
    """Save the generated key as ``~/.ssh/shopper-<first 8 of id>.pem`` (0600), the name the
    server's ssh command uses; never overwrite a file: the next free name is taken instead."""
    ssh_dir = Path.home() / ".ssh"
    try:
        private_dir(ssh_dir)
    except OSError as exc:
        raise CliError(f"cannot create {ssh_dir}: {exc}") from None
    stem = f"shopper-{session_id[:8]}"
    if not pem.endswith("\n"):
        pem += "\n"
    for n in range(1000):
        path = ssh_dir / (f"{stem}.pem" if n == 0 else f"{stem}-{n}.pem")
        try:
            write_private_file(path, pem, exclusive=True)
        except FileExistsError:
            continue
        except OSError as exc:
            raise CliError(f"cannot save the private key to {path}: {exc}") from None
        return path
    raise CliError(f"cannot find a free file name for the private key in {ssh_dir}")


def display_path(path: Path) -> str:
    home = Path.home()
    try:
        return f"~/{path.relative_to(home)}"
    except ValueError:
        return str(path)


def ssh_command(session: dict, key_path: Path | None = None) -> str:
    """The server's ssh command; when the key was saved under another name, that name."""
    command = ((session.get("ssh") or {}).get("command")) or ""
    if command and key_path is not None:
        expected = f"~/.ssh/shopper-{str(session.get('id', ''))[:8]}.pem"
        command = command.replace(expected, display_path(key_path))
    return command


def key_hint(session: dict) -> str | None:
    """A note when the ssh command names a generated key file this machine does not have."""
    match = re.search(r"-i (~/\.ssh/\S+)", ssh_command(session))
    if match and not Path(match.group(1)).expanduser().exists():
        return (
            f"note: {match.group(1)} is not on this machine; the key was shown once when the "
            "session was created (the owner can download it from the session's page while it runs)."
        )
    return None


def cmd_gpus(args) -> int:
    """One row per GPU model on the menu, best value ($ per TFLOP-hour) first: `GET /api/v1/gpus`."""
    models = Client.from_config().get("gpus").get("results", [])
    if args.json:
        print_json(models)
        return EXIT_OK
    if not models:
        out("No offers yet.")
        return EXIT_OK
    rows = [
        [
            m["gpu_type"],
            f"{m['vram_gb']} GB",
            m["offers"],
            m["cheapest_price_per_gpu_hour"],
            m.get("usd_per_tflop_hour") or "—",
            m.get("usd_per_vram_gb_hour") or "—",
            m.get("usd_per_tbps_hour") or "—",
            percent(m.get("best_confidence")),
            ", ".join(f"{p['provider']} {p['cheapest_price_per_gpu_hour']}" for p in m["providers"]),
        ]
        for m in models
    ]
    headers = [
        "GPU",
        "VRAM",
        "OFFERS",
        "FROM $/GPU·H",
        "$/TFLOP·H",
        "$/GB·H",
        "$/TBPS·H",
        "BEST CONFIDENCE",
        "CHEAPEST PER PROVIDER",
    ]
    out(table(headers, rows, right={1, 2, 3, 4, 5, 6, 7}))
    out("Value from vendor spec peaks (dense BF16). `gpu-shopper inventory --gpu NAME`: its offers.")
    return EXIT_OK


def cmd_provision(args) -> int:
    client = Client.from_config()
    body: dict[str, Any] = {"offer_id": args.offer_id, "reservation_hours": args.hours}
    if args.key:
        body["ssh_public_key"] = read_public_key(args.key)
    if args.new_key:
        body["generate_key"] = True
    if args.image:
        body["image"] = args.image
    if args.disk_gb is not None:
        body["disk_gb"] = args.disk_gb
    if args.idle_stop is not None:  # absent: the team default
        body["idle_stop_minutes"] = idle_minutes_arg(args.idle_stop)
    if args.preset:
        body["preset"] = args.preset
    if args.port:
        body["ports"] = args.port
    if args.onstart:
        body["onstart"] = args.onstart
    if args.max_price is not None:
        body["max_price_per_hour"] = args.max_price
    if args.no_failover:
        body["failover"] = False
    session = client.request("POST", "sessions", body=body)
    session_id = str(session.get("id", ""))
    key_path = None
    if session.get("ssh_private_key"):
        key_path = save_private_key(session_id, session.pop("ssh_private_key"))
    if args.json:
        print_json({**session, "ssh_private_key_file": str(key_path) if key_path else None})
    else:
        out(
            f"Session {session_id} created: {session.get('gpu_type')} ×{session.get('gpu_count')} "
            f"on {session.get('provider')} at ${session.get('price_per_hour')}/h, "
            f"reserved until {when(session.get('reservation_ends_at'))}."
        )
        if key_path is not None:
            expected = f"shopper-{session_id[:8]}.pem"
            out(f"Private key saved to {key_path} (mode 0600).")
            if key_path.name != expected:
                out(f"note: ~/.ssh/{expected} already existed; the key is in {key_path.name} instead.")
    if not args.wait:
        if not args.json:
            out(f"Status: {session.get('status')}. Follow it with: gpu-shopper show {session_id}")
        return EXIT_OK
    try:
        return wait_active(
            client, session_id, key_path, timeout=args.timeout, interval=args.interval, quiet=args.json
        )
    except KeyboardInterrupt:
        raise CliError(
            f"interrupted; session {session_id} keeps going: follow it with `gpu-shopper show "
            f"{session_id}` or end it with `gpu-shopper done {session_id}`",
            EXIT_INTERRUPTED,
        ) from None


def _sleep(seconds: float) -> None:
    """Every wait of the CLI goes through here (tests step the session forward instead)."""
    time.sleep(seconds)


class Progress:
    """What a ``--wait`` shows: a line each time the status changes, with the clock time and the
    time since the wait began (``[12:00:05 +0:12] booting: ...``); on a terminal one more line
    keeps counting how long the current status has lasted, so a slow boot never looks hung."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.started = self.changed = time.monotonic()
        self.last: tuple | None = None
        self.ticker = not quiet and sys.stdout.isatty()
        self.ticking = False

    def show(self, status: str | None, detail: str = "") -> None:
        if self.quiet:
            return
        now = time.monotonic()
        if self.ticking:
            sys.stdout.write("\r\033[K")
            self.ticking = False
        if (status, detail) != self.last:
            if self.last is None or status != self.last[0]:
                self.changed = now
            self.last = (status, detail)
            stamp = datetime.now(UTC).strftime("%H:%M:%S")
            out(f"[{stamp} +{clock(now - self.started)}] {status}" + (f": {detail}" if detail else ""))
        elif self.ticker:
            sys.stdout.write(f"  … {status} for {clock(now - self.changed)}")
            sys.stdout.flush()
            self.ticking = True

    def elapsed(self) -> str:
        return clock(time.monotonic() - self.started)

    def end(self) -> None:
        """Clear the counting line (before an error message, which would land on it)."""
        if self.ticking:
            sys.stdout.write("\r\033[K")
            sys.stdout.flush()
            self.ticking = False


def wait_active(
    client: Client, session_id: str, key_path: Path | None, *, timeout: float, interval: float, quiet: bool
) -> int:
    """Poll the session until it is active (print the ssh command) or can no longer become so."""
    deadline = time.monotonic() + timeout
    progress = Progress(quiet)
    offer = None
    while True:
        session = client.get(f"sessions/{session_id}")
        status, detail = session.get("status"), session.get("status_detail") or ""
        if offer is not None and session.get("offer_id") != offer:  # failed over (sessions/failover.py)
            progress.show(
                "failover",
                f"now {session.get('provider')} offer {session.get('offer_id')} "
                f"({session.get('gpu_type')} ×{session.get('gpu_count')}) "
                f"at ${session.get('price_per_hour')}/h",
            )
        offer = session.get("offer_id")
        progress.show(status, detail)
        if status == "active":
            command = ssh_command(session, key_path)
            if quiet:
                print_json({**session, "ssh_command": command or None})
                return EXIT_OK
            out(f"Active after {progress.elapsed()}. Connect with:")
            out(f"  {command}" if command else "  (the shopper has not published the ssh address yet)")
            return EXIT_OK
        if status in NEVER_ACTIVE:
            progress.end()
            raise CliError(
                f"session {session_id} is {status} and will not become active"
                + (f": {detail}" if detail else "")
            )
        if time.monotonic() >= deadline:
            progress.end()
            raise CliError(
                f"session {session_id} is still {status} after {timeout:g} s; it keeps going: "
                f"follow it with `gpu-shopper show {session_id}` "
                f"or end it with `gpu-shopper done {session_id}`"
            )
        _sleep(max(0.0, min(interval, deadline - time.monotonic())))


def iter_sessions(client: Client, **params):
    page_number = 1
    while True:
        page = client.get("sessions", page=page_number, page_size=500, **params)
        yield from page.get("results", [])
        if not page.get("next") or page_number >= 100:
            return
        page_number += 1


def resolve_session_id(client: Client, ident: str) -> str:
    """A full uuid as is; else the one session whose id starts with ``ident``."""
    ident = ident.strip().lower()
    if UUID_RE.match(ident):
        return ident
    if not re.fullmatch(r"[0-9a-f-]{1,36}", ident):
        raise CliError(f"{ident!r} is not a session id", EXIT_NOT_FOUND)
    matches = [s["id"] for s in iter_sessions(client) if str(s.get("id", "")).startswith(ident)]
    if not matches:
        raise CliError(f"no session id starts with {ident!r}", EXIT_NOT_FOUND)
    if len(matches) > 1:
        raise CliError(f"{ident!r} matches {len(matches)} sessions; give more of the id")
    return matches[0]


def session_gpu(s: dict) -> str:
    return f"{s.get('gpu_type', '')} ×{s.get('gpu_count', '')}"


def cmd_sessions(args) -> int:
    client = Client.from_config()
    page = client.get(
        "sessions", status=args.status, consumer=args.consumer, page=args.page, page_size=args.page_size
    )
    if args.json:
        print_json(page)
        return EXIT_OK
    sessions = page.get("results", [])
    if not sessions:
        out("No sessions.")
        return EXIT_OK
    staff_view = len({s.get("consumer") for s in sessions}) > 1 or args.consumer
    headers = ["ID", "STATUS", "GPU", "PROVIDER", "CREATED", "LEFT", "COST"]
    if staff_view:
        headers.insert(1, "CONSUMER")
    rows = []
    for s in sessions:
        row = [
            str(s.get("id", ""))[:8],
            s.get("status"),
            session_gpu(s),
            s.get("provider"),
            when(s.get("created_at")),
            time_left(s),
            money(s.get("cost_so_far"), billed(s)),
        ]
        if staff_view:
            row.insert(1, s.get("consumer"))
        rows.append(row)
    out(table(headers, rows, right={len(headers) - 2, len(headers) - 1}))
    out(page_footer(page, len(sessions), "sessions", int(args.page or 1)))
    return EXIT_OK


def gpu_verified_text(found: dict | None) -> str:
    """What nvidia-smi found on the machine, one line ("" until verified)."""
    if not found:
        return ""
    return (
        f"{found.get('count')}× {found.get('name')}, {found.get('memory_gb')} GB each, "
        f"driver {found.get('driver')}, CUDA {found.get('cuda') or 'unknown'}"
    )


def print_session(s: dict) -> None:
    fields = [
        ("id", s.get("id")),
        ("status", s.get("status") + (f" ({s['status_detail']})" if s.get("status_detail") else "")),
        ("consumer", s.get("consumer")),
        ("gpu", session_gpu(s) + (f", {s['vram_gb']} GB each" if s.get("vram_gb") else "")),
        ("provider", s.get("provider")),
        ("location", s.get("location")),
        ("offer", s.get("offer_id")),
        ("price", f"${s.get('price_per_hour')}/h"),
        ("cost so far", money(s.get("cost_so_far"), billed(s))),
        ("created", when(s.get("created_at"))),
        ("active since", when(s.get("active_since"))),
        ("reserved until", when(s.get("reservation_ends_at"))),
        ("time left", time_left(s)),
        ("hard maximum", when(s.get("hard_max_at"))),
        ("ended", when(s.get("ended_at"))),
        ("last heartbeat", when(s.get("last_heartbeat_at"))),
        ("label", s.get("label")),
        ("instance", s.get("provider_instance_id")),
        ("gpu verified", gpu_verified_text(s.get("gpu_verified"))),
    ]
    width = max(len(k) for k, _ in fields) + 1
    for key, value in fields:
        if value not in (None, ""):
            out(f"{key + ':':<{width}} {value}")
    command = ssh_command(s)
    if command:
        out(f"{'ssh:':<{width}} {command}")
        hint = key_hint(s)
        if hint:
            out(hint)


def cmd_show(args) -> int:
    client = Client.from_config()
    session_id = resolve_session_id(client, args.id)
    session = client.get(f"sessions/{session_id}")
    events = client.get(f"sessions/{session_id}/events") if args.events else None
    if args.json:
        print_json({**session, "events": events} if events is not None else session)
        return EXIT_OK
    print_session(session)
    if events is not None:
        out("")
        out("events:")
        if not events:
            out("  (none)")
        for e in events:
            change = f"{e.get('from_status')} → {e.get('to_status')}" if e.get("to_status") else e.get("kind")
            actor = f" by {e['actor']}" if e.get("actor") else ""
            out(f"  {when(e.get('at'))}  {change}{actor}: {e.get('reason', '')}".rstrip(": "))
    return EXIT_OK


def cmd_done(args) -> int:
    client = Client.from_config()
    session_id = resolve_session_id(client, args.id)
    session = client.request("POST", f"sessions/{session_id}/done")
    return report_stop(args, session, "Done", client)


def cmd_shutdown(args) -> int:
    client = Client.from_config()
    session_id = resolve_session_id(client, args.id)
    session = client.request("DELETE", f"sessions/{session_id}")
    return report_stop(args, session, "Shutdown requested", client)


def report_stop(args, session: dict, what: str, client: Client | None = None) -> int:
    status = session.get("status")
    if getattr(args, "wait", False) and client is not None and status not in ("destroyed", "failed"):
        session = wait_ended(client, str(session.get("id")), args)
        if args.json:
            print_json(session)
        return EXIT_OK
    if args.json:
        print_json(session)
        return EXIT_OK
    if status in ("destroyed", "failed"):
        out(f"Session {session.get('id')} has already ended ({status}).")
    else:
        out(f"{what}: session {session.get('id')} is {status}; the machine is being torn down.")
    out(f"Cost so far: {money(session.get('cost_so_far'), billed(session))}")
    return EXIT_OK


def wait_ended(client: Client, session_id: str, args) -> dict:
    """Poll a stopping session until the provider has confirmed the machine is gone."""
    deadline = time.monotonic() + args.timeout
    progress = Progress(args.json)
    try:
        while True:
            session = client.get(f"sessions/{session_id}")
            status = session.get("status")
            progress.show(status, session.get("status_detail") or "")
            if status in ("destroyed", "failed"):
                if not args.json:
                    gone = "the provider confirmed the machine is gone" if status == "destroyed" else status
                    out(f"Ended after {progress.elapsed()}: {gone}.")
                    out(f"Cost: {money(session.get('cost_so_far'), billed(session))}")
                return session
            if time.monotonic() >= deadline:
                progress.end()
                raise CliError(
                    f"session {session_id} is still {status} after {args.timeout:g} s; the shopper "
                    f"keeps tearing it down (retrying until the provider confirms): follow it with "
                    f"`gpu-shopper show {session_id}`"
                )
            _sleep(max(0.0, min(args.interval, deadline - time.monotonic())))
    except KeyboardInterrupt:
        progress.end()
        raise CliError(
            f"interrupted; the shopper keeps tearing session {session_id} down: follow it with "
            f"`gpu-shopper show {session_id}`",
            EXIT_INTERRUPTED,
        ) from None


def cmd_extend(args) -> int:
    client = Client.from_config()
    session_id = resolve_session_id(client, args.id)
    body = {"hours": args.hours, "reason": args.reason or ""}
    session = client.request("POST", f"sessions/{session_id}/extend", body=body)
    if args.json:
        print_json(session)
        return EXIT_OK
    out(
        f"Session {session.get('id')} extended: reserved until {when(session.get('reservation_ends_at'))} "
        f"(hard maximum {when(session.get('hard_max_at'))})."
    )
    return EXIT_OK


def idle_minutes_arg(value: str) -> int | str | None:
    """'off' (or 'none') clears the idle stop; anything else goes to the server as given, which
    answers a clear 400 for what it does not accept."""
    if value.strip().lower() in ("off", "none", "never"):
        return None
    return int(value) if value.strip().isascii() and value.strip().isdigit() else value


def cmd_idle_stop(args) -> int:
    client = Client.from_config()
    session_id = resolve_session_id(client, args.id)
    body = {"idle_stop_minutes": idle_minutes_arg(args.minutes)}
    session = client.request("PATCH", f"sessions/{session_id}", body=body)
    if args.json:
        print_json(session)
        return EXIT_OK
    minutes = session.get("idle_stop_minutes")
    out(
        f"Session {session.get('id')}: stops after {minutes} min with idle GPUs."
        if minutes
        else f"Session {session.get('id')}: idle stop off."
    )
    return EXIT_OK


def cmd_costs(args) -> int:
    client = Client.from_config()
    params = {"period": args.period, "from": args.from_, "to": args.to, "consumer": args.consumer}
    data = client.get("costs", **params)
    if args.json:
        print_json(data)
        return EXIT_OK
    who = data.get("consumer") or "the whole team"
    out(
        f"Spend of {who} from {when(data.get('from'))} to {when(data.get('to'))} "
        f"({data.get('currency', 'USD')})"
    )
    out(
        f"total: {money(data.get('total'))}   provider cost: {money(data.get('provider_cost'))}   "
        f"hours: {data.get('hours')}"
    )
    series = data.get("series") or []
    out("")
    if series:
        rows = [
            [r.get("period"), money(r.get("amount")), money(r.get("provider_cost")), r.get("hours")]
            for r in series
        ]
        out(
            table(
                [data.get("period", "period").upper(), "AMOUNT", "PROVIDER COST", "HOURS"],
                rows,
                right={1, 2, 3},
            )
        )
    else:
        out("No spend in this range.")
    for key, title in (("by_gpu_type", "GPU"), ("by_provider", "PROVIDER"), ("by_consumer", "CONSUMER")):
        rows = data.get(key) or []
        if rows:
            out("")
            out(
                table(
                    [title, "AMOUNT", "HOURS"],
                    [[r.get("key"), money(r.get("amount")), r.get("hours")] for r in rows],
                    right={1, 2},
                )
            )
    budget = data.get("budget") or {}
    for scope in ("user", "team"):
        b = budget.get(scope)
        if b:
            out("")
            out(
                f"{scope} budget: {money(b.get('spent'))} of {money(b.get('limit'))} spent this month "
                f"({b.get('percent')} %), {money(b.get('reserved'))} reserved, "
                f"{money(b.get('remaining'))} left"
            )
    return EXIT_OK


# --------------------------------------------------------------------------------------------
# Straight to the machine: ssh, cp, ssh-config (OpenSSH and rsync run here; never our server)
# --------------------------------------------------------------------------------------------
SSH_BLOCK_BEGIN = (
    "# >>> gpu-shopper: live sessions (written by `gpu-shopper ssh-config`; edits here are lost) >>>"
)
SSH_BLOCK_END = "# <<< gpu-shopper <<<"
REMOTE_RE = re.compile(r"^(?:shopper-)?([0-9a-fA-F][0-9a-fA-F-]{0,35}):(.*)$", re.S)


def host_alias(session: dict) -> str:
    """``shopper-<first 8 of the id>``: the ssh-config host name, the key file's stem."""
    return f"shopper-{str(session.get('id', ''))[:8]}"


def known_hosts_path() -> Path:
    return config_path().parent / "known_hosts"


def ssh_target(client: Client, ident: str) -> dict:
    """The session with an SSH address, or a CliError saying why there is none."""
    session = client.get(f"sessions/{resolve_session_id(client, ident)}")
    status = session.get("status")
    if status in ("destroyed", "failed"):
        raise CliError(f"session {session.get('id')} has ended ({status}); its machine is gone")
    ssh = session.get("ssh") or {}
    if not (ssh.get("host") and ssh.get("port")):
        raise CliError(
            f"session {session.get('id')} is {status} and has no SSH address yet; "
            f"wait with `gpu-shopper show {session.get('id')}`"
        )
    return session


def session_key(client: Client, session: dict) -> Path | None:
    """The private key the session's ssh command names, downloaded into ~/.ssh when this machine
    does not have it (the owner may fetch it while the session is live); None when the session
    uses the caller's own keys."""
    match = re.search(r"-i ~/\.ssh/(\S+)", (session.get("ssh") or {}).get("command") or "")
    if not match:
        return None
    path = Path.home() / ".ssh" / match.group(1)
    if path.is_file():
        return path
    try:
        pem = client.request("GET", f"sessions/{session['id']}/ssh-key", raw=True)
    except CliError as exc:  # only the owner may download it, and only while the session is live
        raise CliError(
            f"the session's key {display_path(path)} is not on this machine and the shopper did not "
            f"give it: {exc.message}; use -i FILE for a key you have",
            exc.exit_code,
        ) from None
    try:
        private_dir(path.parent)
        write_private_file(path, pem if pem.endswith("\n") else pem + "\n", exclusive=True)
    except FileExistsError:
        pass  # another gpu-shopper saved it meanwhile: same key
    except OSError as exc:
        raise CliError(f"cannot save the private key to {path}: {exc}") from None
    print(f"Private key downloaded to {path} (mode 0600).", file=sys.stderr, flush=True)
    return path


def ssh_options(session: dict, key: Path | None) -> list[str]:
    """``-o`` options for ssh, scp and rsync's ssh alike. Host keys are trusted on first use and
    kept per session (``HostKeyAlias``): provider SSH proxies reuse host:port across machines
    (FIELD_NOTES: Vast ``ssh_host:ssh_port`` proxy), so keying on the address would either warn
    of a changed key on the next rental or pin the wrong one."""
    ssh = session["ssh"]
    private_dir(known_hosts_path().parent)
    opts = {
        "Port": str(ssh["port"]),
        "User": ssh.get("user") or "root",
        "HostKeyAlias": host_alias(session),
        "StrictHostKeyChecking": "accept-new",
        "UserKnownHostsFile": str(known_hosts_path()),
        "ServerAliveInterval": "30",
    }
    if key is not None:
        opts.update(IdentityFile=str(key), IdentitiesOnly="yes")
    return [arg for k, v in opts.items() for arg in ("-o", f"{k}={v}")]


def _run_tool(argv: list[str]) -> int:
    """Run ssh/scp/rsync attached to this terminal; its exit code is ours. Ctrl-C belongs to the
    tool (ssh passes it to the remote shell, scp and rsync stop), so this process only waits for
    it: a Python handler that does nothing, not SIG_IGN, which the tool would inherit."""
    if not shutil.which(argv[0]):
        raise CliError(f"`{argv[0]}` is not installed here (OpenSSH client needed)")
    previous = signal.signal(signal.SIGINT, lambda signum, frame: None)
    try:
        return subprocess.run(argv).returncode
    finally:
        signal.signal(signal.SIGINT, previous)


def cmd_ssh(args) -> int:
    client = Client.from_config()
    session = ssh_target(client, args.id)
    key = Path(args.identity).expanduser() if args.identity else session_key(client, session)
    command = list(args.remote_command)
    if command[:1] == ["--"]:
        command = command[1:]
    argv = ["ssh", *ssh_options(session, key)]
    if not command and sys.stdin.isatty():
        argv.append("-t")
    argv += [_host(session["ssh"]["host"]), *(["--", *command] if command else [])]
    return _run_tool(argv)


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _split_remote(text: str) -> tuple[str, str] | None:
    match = REMOTE_RE.match(text)
    return (match.group(1), match.group(2)) if match else None


def rsync_argv(sources: list[str], dest: str, session: dict, key: Path | None, upload: bool) -> list[str]:
    """rsync over ssh: archive mode, partial files kept (a re-run resumes), overall progress.
    Trailing slashes are dropped so a folder is copied as itself, like scp and cp do."""
    remote = f"{_host(session['ssh']['host'])}:"
    shell = shlex.join(["ssh", *ssh_options(session, key)])

    def clean(path: str) -> str:
        return path.rstrip("/") or "/"

    if upload:
        paths = [clean(s) for s in sources] + [remote + dest]
    else:
        paths = [remote + clean(s) for s in sources] + [dest]
    return ["rsync", "-a", "--partial", "--info=progress2", "-e", shell, *paths]


def scp_argv(sources: list[str], dest: str, session: dict, key: Path | None, upload: bool) -> list[str]:
    """scp, which speaks SFTP since OpenSSH 9 (``-s`` asks for it on 8.x as well), recursive,
    keeping times and modes; shows its progress meter on a terminal."""
    remote = f"{_host(session['ssh']['host'])}:"
    paths = [*sources, remote + dest] if upload else [*(remote + s for s in sources), dest]
    return ["scp", "-r", "-p", *ssh_options(session, key), *paths]


def remote_has_rsync(session: dict, key: Path | None) -> bool:
    argv = ["ssh", *ssh_options(session, key), "-o", "BatchMode=yes", _host(session["ssh"]["host"])]
    try:
        done = subprocess.run(
            [*argv, "command -v rsync"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def cmd_cp(args) -> int:
    paths = [*args.sources, args.dest]
    remote = [_split_remote(p) for p in paths]
    ids = {r[0].lower() for r in remote if r}
    upload = remote[-1] is not None
    if not ids:
        raise CliError("one side must be a session: SESSION:path (e.g. 1a2b3c4d:/workspace)", EXIT_AUTH)
    if len(ids) > 1 or (upload and any(remote[:-1])) or (not upload and not all(remote[:-1])):
        raise CliError(
            "copy between this machine and one session: `cp LOCAL... SESSION:path` "
            "or `cp SESSION:path... LOCAL`",
            EXIT_AUTH,
        )
    if upload:
        missing = [p for p in args.sources if not Path(p).exists()]
        if missing:
            raise CliError(f"no such file or folder here: {missing[0]}")
    client = Client.from_config()
    session = ssh_target(client, ids.pop())
    key = Path(args.identity).expanduser() if args.identity else session_key(client, session)
    sources = [p for p in args.sources] if upload else [r[1] for r in remote[:-1]]  # type: ignore[index]
    dest = remote[-1][1] if upload else args.dest  # type: ignore[index]
    via = args.via
    if via == "auto":
        via = "rsync" if shutil.which("rsync") and remote_has_rsync(session, key) else "scp"
    build = rsync_argv if via == "rsync" else scp_argv
    print(f"Copying with {via}.", file=sys.stderr, flush=True)
    return _run_tool(build(sources, dest, session, key, upload))


def ssh_config_block(entries: list[tuple[dict, Path | None]]) -> str:
    lines = [SSH_BLOCK_BEGIN]
    for session, key in entries:
        ssh = session["ssh"]
        lines += [
            f"Host {host_alias(session)}",
            f"    # {session.get('gpu_type', '')} ×{session.get('gpu_count', '')} on "
            f"{session.get('provider', '')}, session {session.get('id')}",
            f"    HostName {ssh['host']}",
            f"    Port {ssh['port']}",
            f"    User {ssh.get('user') or 'root'}",
            f"    HostKeyAlias {host_alias(session)}",
            "    StrictHostKeyChecking accept-new",
            f'    UserKnownHostsFile "{known_hosts_path()}"',
            "    ServerAliveInterval 30",
        ]
        if key is not None:
            lines += [f'    IdentityFile "{key}"', "    IdentitiesOnly yes"]
    # The block goes first (ssh takes the first value it finds for an option, so ours win over a
    # later `Host *`); this line ends it so whatever followed it before stays global.
    lines += ["Host *", SSH_BLOCK_END]
    return "\n".join(lines) + "\n"


def strip_block(text: str) -> str:
    """The file without our marked block (the rest kept byte for byte)."""
    start = text.find(SSH_BLOCK_BEGIN)
    if start == -1:
        return text
    end = text.find(SSH_BLOCK_END, start)
    if end == -1:
        raise CliError(f"the gpu-shopper block in the ssh config has no end line ({SSH_BLOCK_END!r})")
    end += len(SSH_BLOCK_END)
    if text[end : end + 1] == "\n":
        end += 1
    return text[:start] + text[end:]


def cmd_ssh_config(args) -> int:
    path = Path(args.file).expanduser() if args.file else Path.home() / ".ssh" / "config"
    try:
        before = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        before = ""
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc}") from None
    rest = strip_block(before)
    entries: list[tuple[dict, Path | None]] = []
    if not args.remove:
        client = Client.from_config()
        for s in iter_sessions(client):
            ssh = s.get("ssh") or {}
            if s.get("status") in LIVE and ssh.get("host") and ssh.get("port"):
                try:
                    entries.append((s, session_key(client, s)))
                except CliError as exc:  # staff see everyone's sessions, keys only of their own
                    print(f"skipped {host_alias(s)}: {exc.message}", file=sys.stderr, flush=True)
    text = (ssh_config_block(entries) if entries else "") + rest
    if text != before:
        try:
            private_dir(path.parent)
            mode = stat.S_IMODE(path.stat().st_mode) if path.exists() else 0o600
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            write_private_file(tmp, text)
            tmp.chmod(mode)
            os.replace(tmp, path)
        except OSError as exc:
            raise CliError(f"cannot write {path}: {exc}") from None
    if args.remove:
        out(
            f"Removed the gpu-shopper block from {path}."
            if text != before
            else f"Nothing to remove in {path}."
        )
    elif not entries:
        out(f"No live session has an SSH address; {path} has no gpu-shopper block.")
    else:
        out(f"Wrote {len(entries)} host{'s' if len(entries) > 1 else ''} to {path}:")
        for session, _ in entries:
            out(f"  ssh {host_alias(session)}")
    return EXIT_OK


# --------------------------------------------------------------------------------------------
# Parser and entry point
# --------------------------------------------------------------------------------------------
def add_wait_options(p: argparse.ArgumentParser, until: str, timeout: float) -> None:
    p.add_argument("--wait", action="store_true", help=f"follow the progress {until}")
    p.add_argument(
        "--timeout",
        type=float,
        default=timeout,
        metavar="S",
        help=f"give up waiting after S seconds ({timeout:g})",
    )
    p.add_argument("--interval", type=float, default=2, metavar="S", help="poll every S seconds (2)")


def cmd_cleanup_orphans(args) -> int:
    """The offline kill switch (shopper/killswitch.py): provider keys only, no server, no database."""
    from shopper import killswitch

    return killswitch.run(args)


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="gpu-shopper",
        description="Rent cloud GPUs through the Cloud GPU Shopper from the command line.",
        epilog=f"configuration: {ENV_URL} and {ENV_TOKEN} override the saved config.\n\n{EXIT_CODES_HELP}",
        formatter_class=fmt,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def command(name, func, help_text, description=None):
        p = sub.add_parser(
            name,
            help=help_text,
            description=textwrap.fill(description or help_text, 90),
            epilog=EXIT_CODES_HELP,
            formatter_class=fmt,
        )
        p.set_defaults(func=func)
        return p

    p = command(
        "config",
        cmd_config,
        "show or save the shopper URL and API token",
        f"Without options: show the settings in use (token masked). With options: save them to "
        f"{config_path()} (mode 0600). {ENV_URL} and {ENV_TOKEN} override the file.",
    )
    p.add_argument("--url", help="the shopper's address, e.g. https://shopper.example.com")
    p.add_argument("--token", help="an API token (made on the web page 'API tokens')")

    p = command("inventory", cmd_inventory, "list GPU offers (filters and sort like the offers page)")
    p.add_argument("--gpu", help="GPU name or part of it, e.g. 'A100 80GB'")
    p.add_argument("--min-gpus", metavar="N", help="at least N GPUs")
    p.add_argument("--min-vram", metavar="GB", help="at least GB of memory per GPU")
    p.add_argument("--max-price", metavar="USD", help="at most USD per hour for the whole offer")
    p.add_argument("--provider", help="one provider: vastai, tensordock, runpod or lambda")
    p.add_argument("--location", help="location or part of it, e.g. US")
    p.add_argument("--min-reliability", metavar="R", help="at least R (0 to 1)")
    p.add_argument("--min-confidence", metavar="C", help="at least C (0 to 1) chance a rental becomes active")
    p.add_argument("--min-cuda", metavar="VERSION", help="at least this CUDA version, e.g. 12.4")
    p.add_argument(
        "--sort",
        choices=SORTS,
        help="sort order (default price; best_bet = price ÷ confidence; value: best $/TFLOP-hour)",
    )
    p.add_argument("--page", type=int, metavar="N", help="page number (default 1)")
    p.add_argument("--page-size", type=int, metavar="N", help="offers per page, 1 to 500 (default 50)")
    p.add_argument("--json", action="store_true", help="print the API answer as JSON")

    p = command("gpus", cmd_gpus, "compare GPU models: cheapest price per provider, value; best value first")
    p.add_argument("--json", action="store_true", help="print the API answer as JSON")

    p = command(
        "provision",
        cmd_provision,
        "rent an offer",
        "Rent an offer. Without --key the shopper installs your registered public keys, or "
        "generates a key pair; a generated private key is saved to ~/.ssh/shopper-<id>.pem (mode 0600).",
    )
    p.add_argument("offer_id", metavar="OFFER_ID", help="the offer's id (from `gpu-shopper inventory`)")
    p.add_argument("--hours", required=True, metavar="N", help="reservation length in hours, e.g. 2 or 1.5")
    key = p.add_mutually_exclusive_group()
    key.add_argument("--key", metavar="FILE", help="install this public key (e.g. ~/.ssh/id_ed25519.pub)")
    key.add_argument(
        "--new-key", action="store_true", help="generate a new key pair even if you registered keys"
    )
    p.add_argument(
        "--preset",
        choices=("cuda", "pytorch", "vllm"),
        help="an image preset (default cuda); see the rent page",
    )
    p.add_argument("--image", help="your own image instead of a preset")
    p.add_argument("--disk-gb", type=int, metavar="GB", help="disk size, priced (default: the offer's)")
    p.add_argument(
        "--port",
        type=int,
        action="append",
        metavar="PORT",
        help="expose this port (repeat for more), e.g. 8888",
    )
    p.add_argument("--onstart", metavar="COMMAND", help="a start-up command, run in the background at boot")
    p.add_argument(
        "--idle-stop",
        metavar="MIN",
        help="stop after MIN minutes with every GPU idle, or 'off' (default: the team's setting)",
    )
    p.add_argument(
        "--max-price", metavar="USD", help="failover: rent a comparable offer up to this $/h (default +10 %%)"
    )
    p.add_argument("--no-failover", action="store_true", help="no failover to a comparable offer")
    p.add_argument("--wait", action="store_true", help="follow the progress until the session is active")
    p.add_argument(
        "--timeout", type=float, default=900, metavar="S", help="give up waiting after S seconds (900)"
    )
    p.add_argument("--interval", type=float, default=2, metavar="S", help="poll every S seconds (2)")
    p.add_argument("--json", action="store_true", help="print the API answer as JSON")

    p = command("sessions", cmd_sessions, "list your sessions (staff: everyone's)")
    p.add_argument("--status", choices=STATUSES, help="only sessions in this status")
    p.add_argument("--consumer", metavar="USERNAME", help="staff: only this person's sessions")
    p.add_argument("--page", type=int, metavar="N", help="page number (default 1)")
    p.add_argument("--page-size", type=int, metavar="N", help="sessions per page (default 50)")
    p.add_argument("--json", action="store_true", help="print the API answer as JSON")

    id_help = "the session id (a unique prefix of it is enough)"
    p = command("show", cmd_show, "show one session and its ssh command")
    p.add_argument("id", metavar="ID", help=id_help)
    p.add_argument("--events", action="store_true", help="also print the session's timeline")
    p.add_argument("--json", action="store_true", help="print the API answer as JSON")

    p = command("done", cmd_done, "the work is finished: shut the session's machine down")
    p.add_argument("id", metavar="ID", help=id_help)
    add_wait_options(p, "until the provider confirms the machine is gone", 600)
    p.add_argument("--json", action="store_true", help="print the API answer as JSON")

    p = command("shutdown", cmd_shutdown, "force shutdown of a session's machine")
    p.add_argument("id", metavar="ID", help=id_help)
    add_wait_options(p, "until the provider confirms the machine is gone", 600)
    p.add_argument("--json", action="store_true", help="print the API answer as JSON")

    p = command(
        "extend",
        cmd_extend,
        "extend a session's reservation",
        "Extend the reservation by N hours. Owners may extend up to the hard maximum; "
        "staff may go past it with a reason.",
    )
    p.add_argument("id", metavar="ID", help=id_help)
    p.add_argument("--hours", required=True, metavar="N", help="hours to add, e.g. 1 or 0.5")
    p.add_argument("--reason", metavar="TEXT", default="", help="why (required past the hard maximum)")
    p.add_argument("--json", action="store_true", help="print the API answer as JSON")

    p = command(
        "idle-stop",
        cmd_idle_stop,
        "set or clear a session's idle stop",
        "Stop the machine after MINUTES with every GPU idle (warned on the timeline first); 'off' clears it.",
    )
    p.add_argument("id", metavar="ID", help=id_help)
    p.add_argument("minutes", metavar="MINUTES", help="whole minutes (1 to 1440), or 'off'")
    p.add_argument("--json", action="store_true", help="print the API answer as JSON")

    p = command("costs", cmd_costs, "spend summary (yours; staff: the team's)")
    p.add_argument("--period", choices=("day", "month"), help="series grouping (default month)")
    p.add_argument(
        "--from", dest="from_", metavar="DATE", help="start, ISO date (default: start of this month)"
    )
    p.add_argument("--to", metavar="DATE", help="end, ISO date (inclusive) or date-time (default: now)")
    p.add_argument("--consumer", metavar="USERNAME", help="staff: one person's spend")
    p.add_argument("--json", action="store_true", help="print the API answer as JSON")

    p = command(
        "ssh",
        cmd_ssh,
        "open a shell on the session's machine, or run a command there",
        "Log in to the machine with OpenSSH (straight to it, never through the shopper) using the "
        "session's key: the generated key in ~/.ssh (downloaded when missing) or your own. "
        "`gpu-shopper ssh ID -- nvidia-smi` runs one command; its exit code is returned.",
    )
    p.add_argument("id", metavar="ID", help=id_help)
    p.add_argument("-i", "--identity", metavar="FILE", help="private key to use instead of the session's")
    p.add_argument("remote_command", nargs=argparse.REMAINDER, metavar="-- COMMAND", help="command to run")

    p = command(
        "cp",
        cmd_cp,
        "copy files and folders to or from a session's machine",
        "Copy between this machine and a session's machine, folders recursively: "
        "`cp data ID:/workspace/` uploads, `cp ID:/workspace/out .` downloads (ID: the session id "
        "or a unique prefix of it, or its ssh-config name shopper-XXXXXXXX). Uses rsync over SSH "
        "when both sides have it (shows progress; run it again to resume an interrupted copy), "
        "else scp (SFTP).",
    )
    p.add_argument("sources", nargs="+", metavar="SOURCE")
    p.add_argument("dest", metavar="DEST")
    p.add_argument("--via", choices=("auto", "rsync", "scp"), default="auto", help="the tool (auto)")
    p.add_argument("-i", "--identity", metavar="FILE", help="private key to use instead of the session's")

    p = command(
        "ssh-config",
        cmd_ssh_config,
        "write ssh config entries for your live sessions",
        "Write a `Host shopper-XXXXXXXX` entry for each live session into a marked block of "
        "~/.ssh/config, so `ssh shopper-XXXXXXXX`, scp, rsync and editors' remote SSH work. "
        "Run it again after renting or ending a session; --remove takes the block out.",
    )
    p.add_argument("--remove", action="store_true", help="remove the gpu-shopper block")
    p.add_argument("--file", metavar="PATH", help="the ssh config file (default ~/.ssh/config)")

    p = command(
        "cleanup-orphans",
        cmd_cleanup_orphans,
        "offline kill switch: list (and destroy) every machine of a deployment at the providers",
        "For when the shopper or its database is gone. Needs only the provider keys in the "
        "environment (VASTAI_API_KEY / VASTAI_API_URL, TENSORDOCK_API_TOKEN / TENSORDOCK_API_URL, "
        "RUNPOD_API_KEY / RUNPOD_API_URL, LAMBDA_API_KEY / LAMBDA_API_URL, as the server reads "
        "them); no server, no database, no API token. Lists every instance "
        "labelled shopper-<ID>-... with its age and price; --destroy destroys each and waits until "
        "the provider confirms it is gone, after you type the deployment id (--yes for scripts).",
    )
    p.add_argument("--deployment", required=True, metavar="ID", help="the deployment id (safety page)")
    p.add_argument("--destroy", action="store_true", help="destroy every machine listed")
    p.add_argument("--yes", action="store_true", help="with --destroy: no typed confirmation")
    p.add_argument(
        "--unscoped",
        action="store_true",
        help="also pre-scoping labels shopper-<uuid> (any deployment's before scoping: careful)",
    )
    p.add_argument(
        "--timeout", type=float, default=600, metavar="S", help="per machine: give up after S seconds (600)"
    )
    p.add_argument("--interval", type=float, default=5, metavar="S", help="poll every S seconds (5)")
    return parser


def main(argv: list[str] | None = None) -> int:
    with contextlib.suppress(AttributeError, ValueError):
        sys.stdout.reconfigure(errors="replace")  # a '×' on an ASCII terminal is not worth a crash
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    for i in range(len(argv) - 1):  # `--sort -price` reads as an option to argparse: join the value
        if argv[i] == "--sort" and argv[i + 1].startswith("-"):
            argv[i : i + 2] = [f"--sort={argv[i + 1]}"]
            break
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else EXIT_AUTH)
    try:
        return args.func(args)
    except CliError as exc:
        print(f"error: {exc.message}", file=sys.stderr, flush=True)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except Exception as exc:  # never a traceback for the user; GPU_SHOPPER_DEBUG=1 shows one
        if os.environ.get("GPU_SHOPPER_DEBUG"):
            raise
        print(f"error: unexpected {exc.__class__.__name__}: {exc}", file=sys.stderr, flush=True)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
