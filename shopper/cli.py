"""``gpu-shopper``: the command-line client of the shopper's REST API (API.md).

It speaks HTTP only (``requests`` and the standard library) and imports no Django, so it runs on
any laptop with the package installed. Configuration: ``gpu-shopper config --url URL --token
TOKEN`` writes ``$XDG_CONFIG_HOME/gpu-shopper/config.json`` (default ``~/.config/...``, mode
0600); the environment variables ``GPU_SHOPPER_URL`` and ``GPU_SHOPPER_TOKEN`` override it.

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
import sys
import textwrap
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests

TIMEOUT_SECONDS = 10
ENV_URL = "GPU_SHOPPER_URL"
ENV_TOKEN = "GPU_SHOPPER_TOKEN"
SORTS = ("price", "-price", "price_per_gpu", "vram_gb", "-vram_gb", "reliability", "-reliability")
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


def money(value: Any) -> str:
    return "" if value in (None, "") else f"${value}"


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
            o.get("reliability") or "",
            o.get("provider"),
        ]
        for o in offers
    ]
    headers = ["ID", "GPU", "COUNT", "VRAM", "$/H", "$/GPU·H", "LOCATION", "RELIABILITY", "PROVIDER"]
    out(table(headers, rows, right={0, 2, 3, 4, 5, 7}))
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
    if args.preset:
        body["preset"] = args.preset
    if args.port:
        body["ports"] = args.port
    if args.onstart:
        body["onstart"] = args.onstart
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


def wait_active(
    client: Client, session_id: str, key_path: Path | None, *, timeout: float, interval: float, quiet: bool
) -> int:
    """Poll the session until it is active (print the ssh command) or can no longer become so."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        session = client.get(f"sessions/{session_id}")
        status, detail = session.get("status"), session.get("status_detail") or ""
        if (status, detail) != last and not quiet:
            stamp = datetime.now(UTC).strftime("%H:%M:%S")
            out(f"[{stamp}] {status}" + (f": {detail}" if detail else ""))
        last = (status, detail)
        if status == "active":
            command = ssh_command(session, key_path)
            if quiet:
                print_json({**session, "ssh_command": command or None})
                return EXIT_OK
            out("Active. Connect with:")
            out(f"  {command}" if command else "  (the shopper has not published the ssh address yet)")
            return EXIT_OK
        if status in NEVER_ACTIVE:
            raise CliError(
                f"session {session_id} is {status} and will not become active"
                + (f": {detail}" if detail else "")
            )
        if time.monotonic() >= deadline:
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
    headers = ["ID", "STATUS", "GPU", "PROVIDER", "CREATED", "COST"]
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
            money(s.get("cost_so_far")),
        ]
        if staff_view:
            row.insert(1, s.get("consumer"))
        rows.append(row)
    out(table(headers, rows, right={len(headers) - 1}))
    out(page_footer(page, len(sessions), "sessions", int(args.page or 1)))
    return EXIT_OK


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
        ("cost so far", money(s.get("cost_so_far"))),
        ("created", when(s.get("created_at"))),
        ("active since", when(s.get("active_since"))),
        ("reserved until", when(s.get("reservation_ends_at"))),
        ("hard maximum", when(s.get("hard_max_at"))),
        ("ended", when(s.get("ended_at"))),
        ("last heartbeat", when(s.get("last_heartbeat_at"))),
        ("label", s.get("label")),
        ("instance", s.get("provider_instance_id")),
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
    return report_stop(args, session, "Done")


def cmd_shutdown(args) -> int:
    client = Client.from_config()
    session_id = resolve_session_id(client, args.id)
    session = client.request("DELETE", f"sessions/{session_id}")
    return report_stop(args, session, "Shutdown requested")


def report_stop(args, session: dict, what: str) -> int:
    if args.json:
        print_json(session)
        return EXIT_OK
    status = session.get("status")
    if status in ("destroyed", "failed"):
        out(f"Session {session.get('id')} has already ended ({status}).")
    else:
        out(f"{what}: session {session.get('id')} is {status}; the machine is being torn down.")
    out(f"Cost so far: {money(session.get('cost_so_far'))}")
    return EXIT_OK


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
# Parser and entry point
# --------------------------------------------------------------------------------------------
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
    p.add_argument("--provider", help="one provider, e.g. vastai or tensordock")
    p.add_argument("--location", help="location or part of it, e.g. US")
    p.add_argument("--min-reliability", metavar="R", help="at least R (0 to 1)")
    p.add_argument("--sort", choices=SORTS, help="sort order (default price)")
    p.add_argument("--page", type=int, metavar="N", help="page number (default 1)")
    p.add_argument("--page-size", type=int, metavar="N", help="offers per page, 1 to 500 (default 50)")
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
    p.add_argument("--json", action="store_true", help="print the API answer as JSON")

    p = command("shutdown", cmd_shutdown, "force shutdown of a session's machine")
    p.add_argument("id", metavar="ID", help=id_help)
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

    p = command("costs", cmd_costs, "spend summary (yours; staff: the team's)")
    p.add_argument("--period", choices=("day", "month"), help="series grouping (default month)")
    p.add_argument(
        "--from", dest="from_", metavar="DATE", help="start, ISO date (default: start of this month)"
    )
    p.add_argument("--to", metavar="DATE", help="end, ISO date (inclusive) or date-time (default: now)")
    p.add_argument("--consumer", metavar="USERNAME", help="staff: one person's spend")
    p.add_argument("--json", action="store_true", help="print the API answer as JSON")
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
