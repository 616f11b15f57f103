"""Real processes share one provider rate limiter (FIELD_NOTES VA-RATELIMIT, X-RATE-TD).

Two Python processes, each a configured Django with its own adapter from ``get_provider`` (as the
web server and the worker would be), call a tiny local HTTP server that records when each request
arrives and answers one of them 429. With per-process limiters (the old code) the two processes
interleave with no gap and the other process carries on right after the 429.
"""

from __future__ import annotations

import itertools
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
INTERVAL = 0.15
CALLS_PER_PROCESS = 6
THROTTLED = 3  # the 3rd request to arrive is answered 429

CHILD = r"""
import os, sys, time
import django
django.setup()
from inventory.providers import get_provider, http, ratelimit
if os.environ["REDIS_URL"]:  # this test's keys carry its tag, like every test's Redis keys
    url = os.environ["REDIS_URL"]
    ratelimit._REDIS_STORES[url] = ratelimit.RedisStore(url, prefix="shopper_adapters_test:ratelimit:")
provider = get_provider("vastai")
time.sleep(max(0.0, float(os.environ["START_AT"]) - time.time()))  # both start together
for _ in range(int(os.environ["CALLS"])):
    resp = http.request(provider, "GET", "/ping/" + os.environ["CHILD"])
    assert resp.status == 200, resp.status
print(type(provider.limiter).__name__)
"""


class Recorder(BaseHTTPRequestHandler):
    arrivals: list[tuple[float, str, int]] = []
    lock = threading.Lock()

    def do_GET(self):
        with self.lock:
            status = 429 if len(self.arrivals) + 1 == THROTTLED else 200
            self.arrivals.append((time.time(), self.path, status))
        # Vast's 429: plain text, no Retry-After (FIELD_NOTES VA-RATELIMIT).
        body = b"API requests too frequent" if status == 429 else json.dumps({"success": True}).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    Recorder.arrivals = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _env(tmp_path, backend: str, url: str) -> dict[str, str]:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "shopper.settings",
        "DEBUG": "1",
        "VASTAI_API_URL": url,
        "VASTAI_API_KEY": "sk-shared-account",
        "PROVIDER_MIN_INTERVAL_SECONDS": str(INTERVAL),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'shared.sqlite3'}",
        "REDIS_URL": "redis://127.0.0.1:6379/0" if backend == "redis" else "",
    }
    return env


@pytest.mark.parametrize("backend", ["database", "redis"])
def test_two_processes_share_pacing_and_backoff(tmp_path, server, backend):
    env = _env(tmp_path, backend, server)
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "inventory", "-v0"],
        cwd=ROOT,
        env=env,
        check=True,
        timeout=60,
    )
    start_at = time.time() + 4.0  # both children are set up by then
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD],
            cwd=ROOT,
            env={**env, "START_AT": str(start_at), "CALLS": str(CALLS_PER_PROCESS), "CHILD": str(i)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outputs = [child.communicate(timeout=60) for child in children]
    for child, (out, err) in zip(children, outputs, strict=True):
        assert child.returncode == 0, err
        assert out.strip() == "SharedRateLimiter"

    arrivals = sorted(Recorder.arrivals)
    # Every call arrived (the 429 was retried), from both processes, interleaved.
    assert len(arrivals) == 2 * CALLS_PER_PROCESS + 1
    assert {path for _, path, _ in arrivals} == {"/ping/0", "/ping/1"}
    gaps = [later[0] - earlier[0] for earlier, later in itertools.pairwise(arrivals)]
    # One account, one pace, whichever process sent them. Arrival times jitter on a busy machine
    # (a late request makes the next look close), so the pace is judged by the median gap and the
    # whole span: per-process limiters interleave two streams (median ~INTERVAL / 2, span ~half).
    assert statistics.median(gaps) >= INTERVAL * 0.9, gaps
    assert arrivals[-1][0] - arrivals[0][0] >= (len(arrivals) - 2) * INTERVAL + 0.5, gaps
    # The 429 one process saw held both: nothing arrived within the first backoff (0.5 s).
    assert arrivals[THROTTLED - 1][2] == 429
    assert gaps[THROTTLED - 1] >= 0.5 * 0.9, gaps
