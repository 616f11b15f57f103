"""docker-compose.yml, the Dockerfile, .dockerignore and .env.example, kept true without Docker.

The files are parsed, and their commands are run here the way the containers run them: the
Dockerfile's ENV, .env.example as the env_file, the compose ``environment``, on a fresh PostgreSQL
database and Redis. Only host names, ports and paths are replaced (``Local``), so a compose or
Dockerfile edit that no longer runs fails here.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
import redis
import requests
import yaml

from tests.sandbox._util import wait_for
from tools.chaos import _free_port

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
APP_SERVICES = ("migrate", "web", "worker", "safety", "safety-standby")
POSTGRES = "postgres://postgres@127.0.0.1:5432"
REDIS = "redis://127.0.0.1:6379"
SANDBOX_BLOCK = "# --- Sandbox demo"


# --------------------------------------------------------------------------------------------
# Reading the files
# --------------------------------------------------------------------------------------------
def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, args = line.partition(" ")
            out.append((instruction.upper(), args.strip()))
    return out


def dockerfile_env() -> dict[str, str]:
    env = {}
    for instruction, args in dockerfile():
        if instruction == "ENV":
            env.update(pair.split("=", 1) for pair in shlex.split(args))
    return env


def dockerfile_cmd() -> list[str]:
    [cmd] = [json.loads(args) for instruction, args in dockerfile() if instruction == "CMD"]
    return cmd


def env_file(*, sandbox: bool) -> dict[str, str]:
    """.env.example as compose reads an env_file (later lines win); ``sandbox``: with the sandbox
    block uncommented, as its instructions say."""
    values: dict[str, str] = {}
    in_block = False
    for line in (ROOT / ".env.example").read_text().splitlines():
        in_block = in_block or line.startswith(SANDBOX_BLOCK)
        if sandbox and in_block and re.match(r"#[A-Z_]+=", line):
            line = line[1:]
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip().strip("'")
    return values


def documented_command(key: str) -> str:
    """The `# python3 -c ...` comment nearest above ``key=`` in .env.example."""
    command = ""
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line.startswith("# python3 -c "):
            command = line[2:]
        if line.startswith(f"{key}="):
            return command
    raise AssertionError(f"{key} is not in .env.example")


def dockerignored(path: str) -> bool:
    """Docker's rule for the simple patterns used: a pattern excludes a path or any parent of it."""
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        regex = re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        if any(re.fullmatch(regex, prefix) for prefix in prefixes):
            return True
    return False


# --------------------------------------------------------------------------------------------
# The files, read
# --------------------------------------------------------------------------------------------
def test_the_services_and_their_order():
    assert set(SERVICES) == {"db", "redis", "migrate", "web", "worker", "safety", "safety-standby", "sandbox"}
    assert {name for name, s in SERVICES.items() if s.get("profiles")} == {"sandbox"}
    assert SERVICES["sandbox"]["profiles"] == ["sandbox"]
    # Nothing starts on a database that migrate has not finished with.
    assert SERVICES["migrate"]["depends_on"]["db"] == {"condition": "service_healthy"}
    assert SERVICES["migrate"]["restart"] == "no"
    for name in ("web", "worker", "safety", "safety-standby"):
        assert SERVICES[name]["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
    # One image, one environment for the app.
    for name in APP_SERVICES:
        assert SERVICES[name]["build"] == "." and SERVICES[name]["env_file"] == ".env"
        assert SERVICES[name]["environment"] == SERVICES["web"]["environment"]
    # Two safety loops, one acting at a time (the lease, sessions/leader.py; tests/e2e/test_safety_leader.py).
    assert SERVICES["safety"]["command"] == SERVICES["safety-standby"]["command"]


def test_the_metrics_directory_is_one_tmpfs_shared_by_the_app():
    directory = SERVICES["web"]["environment"]["PROMETHEUS_MULTIPROC_DIR"]
    for name in ("web", "worker", "safety"):
        [mount] = [v for v in SERVICES[name]["volumes"] if v.endswith(f":{directory}")]
        volume = mount.split(":")[0]
        assert COMPOSE["volumes"][volume]["driver_opts"]["type"] == "tmpfs"


def test_the_sandbox_profile_points_the_app_at_the_sandbox():
    sandbox = SERVICES["sandbox"]
    # Its SSH endpoints listen on loopback: it shares the network of the worker, which logs in.
    assert sandbox["network_mode"] == "service:worker"
    assert "sandbox" in SERVICES["worker"]["networks"]["default"]["aliases"]
    port = sandbox["command"][sandbox["command"].index("--port") + 1]
    # None of the app's secrets reach the sandbox's machines.
    assert "env_file" not in sandbox and "environment" not in sandbox

    env = env_file(sandbox=True)
    assert env["COMPOSE_PROFILES"] == "sandbox"
    assert env["SHOPPER_SANDBOX"] == "True"
    assert env["VASTAI_API_URL"].startswith(f"http://sandbox:{port}/")
    assert env["TENSORDOCK_API_URL"].startswith(f"http://sandbox:{port}/")
    assert env["VASTAI_API_KEY"] and env["TENSORDOCK_API_TOKEN"]
    # The sandbox's machines run the node agent inside the compose network: they call the web.
    assert env["SHOPPER_PUBLIC_URL"] == "http://web:8000"
    assert "web" in env["ALLOWED_HOSTS"].split(",")
    # Without the block nothing points at the sandbox.
    assert "sandbox" not in json.dumps(env_file(sandbox=False))


def test_the_dockerfile_copies_what_exists_and_runs_as_a_user():
    copies = [args.split()[:-1] for instruction, args in dockerfile() if instruction == "COPY"]
    assert copies and all((ROOT / source).exists() for sources in copies for source in sources)
    users = [args for instruction, args in dockerfile() if instruction == "USER"]
    assert users and users[-1] != "root"
    # The web service runs the image's CMD.
    assert "command" not in SERVICES["web"]


def test_the_build_context_has_the_app_and_no_secrets():
    needed = ["manage.py", "pyproject.toml", "shopper/settings.py", "inventory/sandbox/server.py"]
    needed += ["sessions/models.py", "costs/models.py", "templates/base.html", "static/css/app.css"]
    for path in needed:
        assert (ROOT / path).exists() and not dockerignored(path), path
    secret = [".env", ".venv/bin/python", ".git/config", "db.sqlite3", "db.sqlite3-wal", ".run/fernet.key"]
    secret += [".sandbox/state.sqlite3", "shopper/__pycache__/settings.cpython-311.pyc"]
    for path in secret:
        assert dockerignored(path), path


def test_the_dependency_step_of_the_dockerfile(tmp_path):
    """The RUN that installs pyproject's dependencies, with pip told to resolve against what is
    installed here (no download) instead of installing."""
    [run] = [args for instruction, args in dockerfile() if instruction == "RUN" and "pip install" in args]
    command = (
        run.replace("/tmp/requirements.txt", str(tmp_path / "requirements.txt"))
        .replace("pip install", f"{sys.executable} -m pip install --dry-run --no-index")
        .replace("python -c", f"{sys.executable} -c")
    )
    done = subprocess.run(["sh", "-c", command], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Would install" not in done.stdout
    for name in ("Django", "daphne", "django-q2", "psycopg"):
        assert f"Requirement already satisfied: {name}" in done.stdout


def test_every_setting_read_from_the_environment_is_documented():
    readme = (ROOT / "README.md").read_text()
    configuration = readme.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    settings_py = (ROOT / "shopper" / "settings.py").read_text()
    names = set(re.findall(r"env\.\w+\(\"([A-Z0-9_]+)\"", settings_py))
    names |= set(env_file(sandbox=True)) - {"COMPOSE_PROFILES"}  # compose's own
    names |= {"WEB_WORKERS", "PROMETHEUS_MULTIPROC_DIR"}
    assert len(names) > 50
    missing = sorted(n for n in names if f"`{n}`" not in configuration)
    assert missing == [], f"not in the README's Configuration table: {missing}"


# --------------------------------------------------------------------------------------------
# The commands, run
# --------------------------------------------------------------------------------------------
@dataclass
class Local:
    """Where the containers' host names, ports and paths are on this machine."""

    tmp: Path
    database_url: str
    redis_url: str
    web_port: int
    sandbox_port: int

    def text(self, value: str) -> str:
        web = f"127.0.0.1:{self.web_port}"
        metrics = SERVICES["web"]["environment"]["PROMETHEUS_MULTIPROC_DIR"]
        for old, new in (
            ("web:8000", web), ("127.0.0.1:8000", web), ("sandbox:8765", f"127.0.0.1:{self.sandbox_port}"),
            (metrics, str(self.tmp / "metrics")), ("/home/shopper", str(self.tmp / "home")),
        ):  # fmt: skip
            value = value.replace(old, new)
        return value

    def argv(self, command: list[str]) -> list[str]:
        ports = {"8000": str(self.web_port), "8765": str(self.sandbox_port)}
        out: list[str] = []
        for arg in command:
            if not out and arg == "python":
                arg = sys.executable
            elif out[-2:] == ["sh", "-c"]:
                arg = re.sub(r"\bpython\b", sys.executable, arg)
            elif out and out[-1] == "--port":
                arg = ports[arg]
            elif arg == "0.0.0.0":
                arg = "127.0.0.1"  # a shared CI machine: loopback only
            out.append(self.text(arg))
        return out

    def env(self, *, app: bool, sandbox: bool = False) -> dict[str, str]:
        """A container's environment: the image's ENV, then (app services) the env_file and the
        compose environment, which wins over it."""
        env = {
            "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
            "HOME": "/home/shopper",
            "LANG": "C.UTF-8",
        }
        env.update(dockerfile_env())
        if app:
            env.update(env_file(sandbox=sandbox))
            compose_env = SERVICES["web"]["environment"]
            assert (
                compose_env["DATABASE_URL"].startswith("postgres://")
                and "@db:5432/" in compose_env["DATABASE_URL"]
            )
            assert compose_env["REDIS_URL"].startswith("redis://redis:6379/")
            env.update(compose_env, DATABASE_URL=self.database_url, REDIS_URL=self.redis_url)
            # What the operator fills in, made with the commands .env.example gives.
            for key in ("SECRET_KEY", "SHOPPER_FERNET_KEYS"):
                made = subprocess.run(["sh", "-c", documented_command(key)], capture_output=True, text=True)
                assert made.returncode == 0 and len(made.stdout.strip()) >= 40, made.stderr
                env[key] = made.stdout.strip()
        return {key: self.text(value) for key, value in env.items()}


class Process:
    """One container's main process: its output in a log file, stopped like `docker stop`."""

    def __init__(self, name: str, argv: list[str], env: dict, log_dir: Path):
        self.name = name
        self.log = log_dir / f"{name}.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for_output(self, text: str, timeout: float = 30) -> None:
        def seen() -> bool:
            assert self.proc.poll() is None, f"{self.name} exited:\n{self.output()[-3000:]}"
            return text in self.output()

        wait_for(seen, timeout=timeout, interval=0.2)

    def stop(self, timeout: float = 20) -> int:
        """SIGTERM to the main process only (what init: true forwards), then its exit code."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.name} ignored SIGTERM:\n{self.output()[-3000:]}") from None

    def kill(self) -> None:
        """The whole process group (qcluster's forked workers too), whatever state it is in."""
        with suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


@contextmanager
def running() -> Iterator[dict[str, Process]]:
    """Processes started into the dict are killed on the way out if a test left them running."""
    procs: dict[str, Process] = {}
    try:
        yield procs
    finally:
        for proc in procs.values():
            proc.kill()


def http(local: Local, path: str, *, host: str, proxied: bool, **kwargs) -> requests.Response:
    """A request to the web container as the TLS proxy sends it (``proxied``) or as a bare client."""
    headers = {"Host": host, **({"X-Forwarded-Proto": "https"} if proxied else {})}
    return requests.get(
        f"http://127.0.0.1:{local.web_port}{path}",
        headers=headers,
        timeout=10,
        allow_redirects=False,
        **kwargs,
    )


def wait_healthy(local: Local, env: dict, web: Process) -> None:
    """Run the web service's healthcheck command until it passes, as Docker does."""
    test = SERVICES["web"]["healthcheck"]["test"]
    assert test[0] == "CMD"
    deadline = time.monotonic() + 40
    while True:
        assert web.proc.poll() is None, f"web exited:\n{web.output()[-3000:]}"
        done = subprocess.run(
            local.argv(test[1:]), cwd=ROOT, env=env, capture_output=True, text=True, timeout=20
        )
        if done.returncode == 0:
            return
        assert time.monotonic() < deadline, f"the healthcheck never passed:\n{done.stderr[-2000:]}"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def local(tmp_path_factory) -> Iterator[Local]:
    """A fresh PostgreSQL database and a Redis database of its own; dropped afterwards."""
    name = f"shopper_containers_{secrets.token_hex(4)}"
    try:
        admin = psycopg.connect(f"{POSTGRES}/postgres", autocommit=True, connect_timeout=3)
        redis.Redis.from_url(REDIS, socket_connect_timeout=3).ping()
    except (psycopg.OperationalError, redis.RedisError) as exc:
        # CI starts both (.ci/run): there, their absence is a failure, never a silent skip.
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL and Redis on 127.0.0.1 are required in CI: {exc}")
        pytest.skip(f"needs PostgreSQL and Redis on 127.0.0.1 (.ci/run starts them): {exc}")
    admin.execute(f'CREATE DATABASE "{name}"')
    tmp = tmp_path_factory.mktemp("containers")
    (tmp / "metrics").mkdir()  # the tmpfs volume: empty when the stack starts
    (tmp / "home").mkdir()
    try:
        yield Local(
            tmp=tmp,
            database_url=f"{POSTGRES}/{name}",
            # A Redis database of its own: the task queue is shared by name within one.
            redis_url=f"{REDIS}/{secrets.randbelow(14) + 2}",
            web_port=_free_port(),
            sandbox_port=_free_port(),
        )
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture(scope="module")
def migrated(local) -> Local:
    """The migrate service, run twice: every `docker compose up` runs it again."""
    argv = local.argv(SERVICES["migrate"]["command"])
    for run in (1, 2):
        done = subprocess.run(
            argv, cwd=ROOT, env=local.env(app=True), capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, f"run {run}:\n{done.stdout}\n{done.stderr}"
        assert "inventory.refresh_offers" in done.stdout
    return local


@pytest.mark.e2e
def test_migrate_leaves_the_schema_and_the_schedules(migrated):
    with psycopg.connect(migrated.database_url) as conn:
        schedules = {row[0] for row in conn.execute("SELECT name FROM django_q_schedule")}
        migrations = conn.execute("SELECT count(*) FROM django_migrations").fetchone()[0]
    assert {"inventory.refresh_offers", "sessions.resume_stopping", "costs.accrue"} <= schedules
    assert migrations > 20


@pytest.mark.e2e
def test_the_web_serves_pages_and_static_files_behind_the_proxy(migrated):
    """The image's CMD with the production .env.example: DEBUG off, HTTPS redirects on."""
    local = migrated
    env = local.env(app=True)
    assert env["DEBUG"] == "False"
    host = env["ALLOWED_HOSTS"].split(",")[0]
    with running() as procs:
        procs["web"] = web = Process("web-production", local.argv(dockerfile_cmd()), env, local.tmp)
        wait_healthy(local, env, web)

        health = http(local, "/api/v1/health", host=host, proxied=True)
        assert health.status_code == 200 and health.json()["database"] == "ok"
        # What the healthcheck's X-Forwarded-Proto is for: a bare http request is sent to https.
        bare = http(local, "/api/v1/health", host=host, proxied=False)
        assert bare.status_code == 301 and bare.headers["Location"].startswith("https://")
        assert http(local, "/api/v1/health", host="evil.example", proxied=True).status_code == 400

        # Static files with DEBUG off and no collectstatic: Daphne serves them from the sources.
        css = http(local, "/static/css/app.css", host=host, proxied=True)
        assert css.status_code == 200 and css.content == (ROOT / "static/css/app.css").read_bytes()
        admin_css = http(local, "/static/admin/css/base.css", host=host, proxied=True)
        assert admin_css.status_code == 200 and len(admin_css.content) > 1000
        login = http(local, "/login/", host=host, proxied=True)
        assert login.status_code == 200 and "csrfmiddlewaretoken" in login.text
        assert "/static/css/app.css" in login.text
        assert web.stop() == 0


@pytest.mark.e2e
def test_the_sandbox_profile_stack(migrated):
    """sandbox, web, worker and safety as compose starts them with the sandbox block of
    .env.example: the worker and the safety loop call the sandbox, and their provider calls show
    on the web's /metrics."""
    local = migrated
    env = local.env(app=True, sandbox=True)
    with running() as procs:
        sandbox = SERVICES["sandbox"]
        procs["sandbox"] = Process("sandbox", local.argv(sandbox["command"]), local.env(app=False), local.tmp)
        procs["sandbox"].wait_for_output("SANDBOX READY")
        for name in ("web", "worker", "safety"):
            command = SERVICES[name].get("command") or dockerfile_cmd()
            procs[name] = Process(name, local.argv(command), env, local.tmp)

        # The app's provider URLs reach the sandbox.
        listing = requests.get(
            f"{env['TENSORDOCK_API_URL']}/instances",
            headers={"Authorization": f"Bearer {env['TENSORDOCK_API_TOKEN']}"},
            timeout=10,
        )
        assert listing.status_code == 200 and listing.json()["data"]["instances"] == []

        wait_healthy(local, env, procs["web"])
        procs["safety"].wait_for_output("recovery: 0 provisioning and 0 teardowns resumed")

        # The worker takes a task off the queue and runs it against the sandbox.
        enqueue = "from django_q.tasks import async_task; print(async_task('inventory.tasks.refresh_offers'))"
        done = subprocess.run(
            [sys.executable, "manage.py", "shell", "-c", enqueue],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        task_id = done.stdout.strip().splitlines()[-1]

        def task_result():
            with psycopg.connect(local.database_url) as conn:
                return conn.execute(
                    "SELECT success, result FROM django_q_task WHERE id = %s", [task_id]
                ).fetchone()

        success, _ = wait_for(task_result, timeout=60, interval=0.5)
        assert success, procs["worker"].output()[-3000:]
        health = http(local, "/api/v1/health", host="127.0.0.1", proxied=False).json()
        assert health["sandbox"] is True
        # The sandbox block of .env.example points all four providers at the sandbox.
        assert {p["name"]: p["offers"] > 0 for p in health["providers"] if p["enabled"]} == {
            "vastai": True,
            "tensordock": True,
            "runpod": True,
            "lambda": True,
        }

        # Provider calls of the worker (offer search) and of the safety loop (instance listing),
        # on the web server's /metrics.
        metrics = http(local, "/metrics", host="127.0.0.1", proxied=False)
        assert metrics.status_code == 200
        assert re.search(
            r'shopper_provider_requests_total\{[^}]*operation="GET /locations"[^}]*\} [1-9]', metrics.text
        )
        assert re.search(
            r'shopper_provider_requests_total\{[^}]*operation="GET /instances"[^}]*\} [1-9]', metrics.text
        )

        # `docker compose stop`: SIGTERM, and each exits cleanly.
        for name in ("safety", "worker", "web", "sandbox"):
            assert procs[name].stop() == 0, procs[name].output()[-3000:]
