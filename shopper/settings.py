"""Settings, read from the environment (django-environ). Production differences are variables,
not files: see .env.example and the README's table."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import environ

BASE_DIR = Path(__file__).resolve().parent.parent
env = environ.Env()
# A .env next to manage.py fills in what the environment leaves unset (`make run` writes one for
# development; compose users copy .env.example). SHOPPER_ENV_FILE names another file, or none when
# empty: the test suite sets it empty so a developer's .env never changes what the tests see.
ENV_FILE = env.str("SHOPPER_ENV_FILE", default=str(BASE_DIR / ".env"))
if ENV_FILE and Path(ENV_FILE).is_file():
    environ.Env.read_env(ENV_FILE)

DEBUG = env.bool("DEBUG", default=False)
SECRET_KEY = env.str("SECRET_KEY", default="")
if not SECRET_KEY:
    if not DEBUG:
        from django.core.exceptions import ImproperlyConfigured

        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off")
    SECRET_KEY = "dev-only-insecure-key-change-me"
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])
TESTING = env.bool("SHOPPER_TESTING", default=False)

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_q",
    "channels",
    "django_htmx",
    "template_partials",
    "shopper",
    "inventory",
    "sessions.apps.RentalsConfig",
    "costs",
]

MIDDLEWARE = [
    "shopper.middleware.RequestIdMiddleware",  # first: every log line of a request has its id
    "django.middleware.security.SecurityMiddleware",
    "shopper.csp.ContentSecurityPolicyMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "shopper.middleware.HtmxLoginRedirectMiddleware",  # HTMX + expired login: a full-page redirect
    "shopper.middleware.TimeZoneMiddleware",  # times in the browser's zone (cookie "tz")
]

ROOT_URLCONF = "shopper.urls"
ASGI_APPLICATION = "shopper.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "shopper.context_processors.shopper",
            ],
        },
    },
]

# --- Database: SQLite (WAL) by default, PostgreSQL through DATABASE_URL -----------------------
DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets the web process read while the worker writes; IMMEDIATE avoids the
    # "database is locked" upgrade deadlock between two writers.
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=10000;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
    }
else:
    # A bounded pool per process (Django 5.2 + psycopg_pool) instead of persistent connections.
    # Under ASGI each request's sync code runs in a thread of its own and Django keeps one
    # connection per thread: with CONN_MAX_AGE every uncached request opened a new connection
    # and idle ones piled up to max_connections ("too many clients", HTTP 500). With the pool a
    # thread borrows a connection and hands it back when the request (or task) ends; at most
    # DB_POOL_MAX_SIZE per process, a request beyond that waits (up to DB_POOL_TIMEOUT s) instead
    # of failing. The kept connections also serve django-q2's polling broker (DESIGN.md asked
    # for CONN_MAX_AGE >= 60 for that reason; the pool keeps them longer).
    DATABASES["default"]["CONN_MAX_AGE"] = 0  # Django refuses persistent connections with a pool
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": env.int("DB_POOL_MIN_SIZE", default=1),
        "max_size": env.int("DB_POOL_MAX_SIZE", default=4),
        "timeout": env.float("DB_POOL_TIMEOUT", default=30),
        "max_idle": 300,
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
if TESTING:
    PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = env.path("STATIC_ROOT", default=BASE_DIR / "staticfiles")

# --- Security (production-safe unless DEBUG) --------------------------------------------------
SESSION_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
if not DEBUG and not TESTING:
    SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=True)
    SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=True)
    CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=True)
    SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# --- Cache, channel layer, Redis (optional) ---------------------------------------------------
REDIS_URL = env.str("REDIS_URL", default="")
if REDIS_URL:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}}
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
# Per process, never Redis: the inventory fast path reads it inside the event loop, where a
# network call (or a Redis outage) would stall every request and websocket of the process.
CACHES["local"] = {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "local"}
CHANNEL_LAYER = env.str("CHANNEL_LAYER", default="redis" if REDIS_URL else "memory")
if CHANNEL_LAYER == "redis" and REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": [REDIS_URL]}}
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# --- Background work (django-q2) ---------------------------------------------------------------
Q_CLUSTER = {
    "name": "shopper",
    "workers": env.int("Q_WORKERS", default=2),
    "timeout": env.int("Q_TIMEOUT", default=900),
    # retry must exceed timeout, or a long task is re-delivered while it still runs.
    "retry": env.int("Q_TIMEOUT", default=900) + 120,
    # 0 would retry failures forever; tasks that spend money are never retried blindly.
    "max_attempts": 1,
    "catch_up": False,
    "ack_failures": True,
    "sync": env.bool("Q_SYNC", default=False),
    "poll": 0.5,
    "save_limit": 1000,
    "label": "Tasks",
}
if REDIS_URL and not env.bool("Q_ORM_BROKER", default=False):
    Q_CLUSTER["redis"] = REDIS_URL
else:
    Q_CLUSTER["orm"] = "default"

# --- REST API ---------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "shopper.auth.ApiTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_PAGINATION_CLASS": "common.api.Pagination",
    "PAGE_SIZE": 50,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "common.api.exception_handler",
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    # DRF's three, with a JSON parser that refuses absurd nesting (400, not a RecursionError 500).
    "DEFAULT_PARSER_CLASSES": [
        "shopper.parsers.JSONParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    # Rates are read per request from API_THROTTLE_ANON / API_THROTTLE_USER (shopper/throttling.py).
    "DEFAULT_THROTTLE_CLASSES": ["shopper.throttling.AnonThrottle", "shopper.throttling.UserThrottle"],
}
API_THROTTLE_ANON = env.str("API_THROTTLE_ANON", default="60/min")
API_THROTTLE_USER = env.str("API_THROTTLE_USER", default="600/min")
# Failed logins allowed per username + client address within the window (then 429).
LOGIN_THROTTLE_ATTEMPTS = env.int("LOGIN_THROTTLE_ATTEMPTS", default=10)
LOGIN_THROTTLE_WINDOW_SECONDS = env.int("LOGIN_THROTTLE_WINDOW_SECONDS", default=15 * 60)
SPECTACULAR_SETTINGS = {
    "TITLE": "Cloud GPU Shopper API",
    "DESCRIPTION": "Rent commodity cloud GPUs from one place. See API.md for the contract.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # DESIGN.md: every endpoint needs login or a token (the schema and docs included).
    "SERVE_PERMISSIONS": ["rest_framework.permissions.IsAuthenticated"],
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "common.api.document_common_errors",
    ],
}

# --- Providers --------------------------------------------------------------------------------
VASTAI_API_KEY = env.str("VASTAI_API_KEY", default="")
VASTAI_API_URL = env.str("VASTAI_API_URL", default="https://console.vast.ai")
TENSORDOCK_API_TOKEN = env.str("TENSORDOCK_API_TOKEN", default="")
TENSORDOCK_API_URL = env.str("TENSORDOCK_API_URL", default="https://dashboard.tensordock.com/api/v2")
RUNPOD_API_KEY = env.str("RUNPOD_API_KEY", default="")
RUNPOD_API_URL = env.str("RUNPOD_API_URL", default="https://api.runpod.io/v2")  # REST v2 (v1 is retired)
# Lambda Cloud API v1; the deprecated host https://cloud.lambdalabs.com/api/v1 may redirect (refused).
LAMBDA_API_KEY = env.str("LAMBDA_API_KEY", default="")
LAMBDA_API_URL = env.str("LAMBDA_API_URL", default="https://cloud.lambda.ai/api/v1")
PROVIDER_TIMEOUT_SECONDS = env.float("PROVIDER_TIMEOUT_SECONDS", default=30.0)
# Overrides each adapter's pacing (Vast 1 s, TensorDock 0.6 s); for the local sandbox only.
PROVIDER_MIN_INTERVAL_SECONDS = env.float("PROVIDER_MIN_INTERVAL_SECONDS", default=None)
# True when the provider URLs point at the local sandbox cloud: every page says so.
SHOPPER_SANDBOX = env.bool("SHOPPER_SANDBOX", default=False)
SHOPPER_DEPLOYMENT_ID = env.str("SHOPPER_DEPLOYMENT_ID", default="")
# What the sandbox injects (plain words; `make run` sets it): shown on the sandbox banner.
SHOPPER_SANDBOX_FAULTS = env.str("SHOPPER_SANDBOX_FAULTS", default="")

# --- Product rules ----------------------------------------------------------------------------
SHOPPER_HARD_MAX_HOURS = env.int("SHOPPER_HARD_MAX_HOURS", default=12)
SHOPPER_MAX_LIVE_RENTALS = env.int("SHOPPER_MAX_LIVE_RENTALS", default=20)
SHOPPER_HEARTBEAT_TIMEOUT_SECONDS = env.int("SHOPPER_HEARTBEAT_TIMEOUT_SECONDS", default=300)
# A web process or safety loop unseen this long was down: heartbeats get a new grace (sessions/uptime.py).
SHOPPER_UPTIME_GAP_SECONDS = env.int("SHOPPER_UPTIME_GAP_SECONDS", default=60)
SHOPPER_OFFERS_CACHE_SECONDS = env.int("SHOPPER_OFFERS_CACHE_SECONDS", default=60)
SHOPPER_OFFERS_MAX_BACKOFF_SECONDS = env.int("SHOPPER_OFFERS_MAX_BACKOFF_SECONDS", default=300)
SHOPPER_PRICE_MARKUP_PERCENT = Decimal(env.str("SHOPPER_PRICE_MARKUP_PERCENT", default="0"))
# At 100 % of a budget: "refuse" new rentals (default), or "stop" = also stop its live rentals.
SHOPPER_BUDGET_POLICY = env.str("SHOPPER_BUDGET_POLICY", default="refuse")
SHOPPER_SSH_VERIFY_TIMEOUT_SECONDS = env.int("SHOPPER_SSH_VERIFY_TIMEOUT_SECONDS", default=600)
# From the first SSH login, how long the GPUs may take to work (TensorDock repairs its driver at
# boot: 2-5 min plus the dpkg lock, FIELD_NOTES TD-NODRIVER/TD-DPKGLOCK); per provider overrides
# as "tensordock=900,vastai=300".
SHOPPER_GPU_VERIFY_TIMEOUT_SECONDS = env.int("SHOPPER_GPU_VERIFY_TIMEOUT_SECONDS", default=600)
SHOPPER_GPU_VERIFY_TIMEOUT_OVERRIDES = {
    name.strip(): float(value)
    for name, _, value in (
        item.partition("=") for item in env.str("SHOPPER_GPU_VERIFY_TIMEOUT_OVERRIDES", default="").split(",")
    )
    if name.strip() and value.strip()
}
SHOPPER_BOOT_TIMEOUT_SECONDS = env.int("SHOPPER_BOOT_TIMEOUT_SECONDS", default=900)
SHOPPER_POLL_INTERVAL_SECONDS = env.float("SHOPPER_POLL_INTERVAL_SECONDS", default=5.0)
# After a create error: how many label lookups (this far apart) before believing nothing exists.
SHOPPER_LABEL_LOOKUPS_AFTER_ERROR = env.int("SHOPPER_LABEL_LOOKUPS_AFTER_ERROR", default=3)
SHOPPER_LABEL_LOOKUP_INTERVAL_SECONDS = env.float("SHOPPER_LABEL_LOOKUP_INTERVAL_SECONDS", default=10.0)
# A create may still be on the wire this long after provisioning began (provider timeout + lag).
SHOPPER_CREATE_SETTLE_SECONDS = env.int("SHOPPER_CREATE_SETTLE_SECONDS", default=120)
SHOPPER_TEARDOWN_BUDGET_SECONDS = env.int("SHOPPER_TEARDOWN_BUDGET_SECONDS", default=600)
# A provisioning or teardown task renews its lease on the rental at every wait; a lease not renewed
# this long belongs to a dead (or stalled) worker and the safety loop hands the work to another.
# Longer than the longest single step: one provider call with its 429 retries, or one SSH login.
SHOPPER_LEASE_SECONDS = env.int("SHOPPER_LEASE_SECONDS", default=180)
# Failover (sessions/failover.py): how many times one rental may move on to another offer.
SHOPPER_FAILOVER_TRIES = env.int("SHOPPER_FAILOVER_TRIES", default=3)
# Failover skips offers whose confidence (inventory/confidence.py) is below this: below every
# provider's prior (TensorDock's is 0.3), so only offers our own history says fail are skipped.
SHOPPER_FAILOVER_MIN_CONFIDENCE = env.float("SHOPPER_FAILOVER_MIN_CONFIDENCE", default=0.2)
# Where background work goes (sessions/queue.py): django-q2; tests set a recorder here.
SHOPPER_TASK_QUEUE = "sessions.queue.django_q_enqueue"
SHOPPER_DESTROY_MAX_BACKOFF_SECONDS = env.int("SHOPPER_DESTROY_MAX_BACKOFF_SECONDS", default=60)
SHOPPER_RESERVATION_WARNING_MINUTES = env.int("SHOPPER_RESERVATION_WARNING_MINUTES", default=15)
SHOPPER_LIFECYCLE_INTERVAL_SECONDS = env.float("SHOPPER_LIFECYCLE_INTERVAL_SECONDS", default=5.0)
SHOPPER_RECONCILE_INTERVAL_SECONDS = env.float("SHOPPER_RECONCILE_INTERVAL_SECONDS", default=30.0)
SHOPPER_ORPHAN_GRACE_SECONDS = env.int("SHOPPER_ORPHAN_GRACE_SECONDS", default=120)
SHOPPER_DESTROY_ALERT_SECONDS = env.int("SHOPPER_DESTROY_ALERT_SECONDS", default=900)
# Provisioning or teardown handed to the task queue and not started this long: the safety loop
# acts itself (sessions/stalled.py), spending at most SHOPPER_QUEUE_TAKEOVER_SECONDS per pass on
# teardowns so deadlines keep being enforced. worker_health uses the same bound.
SHOPPER_QUEUE_STALL_SECONDS = env.int("SHOPPER_QUEUE_STALL_SECONDS", default=60)
SHOPPER_QUEUE_TAKEOVER_SECONDS = env.float("SHOPPER_QUEUE_TAKEOVER_SECONDS", default=20.0)
SHOPPER_AGENT_HEARTBEAT_SECONDS = env.int("SHOPPER_AGENT_HEARTBEAT_SECONDS", default=30)
SHOPPER_AGENT_UNREACHABLE_SECONDS = env.int("SHOPPER_AGENT_UNREACHABLE_SECONDS", default=900)
# Heartbeats per agent token per minute (429 past it; 0: off). Never below twice the agent's own
# rate (sessions/agent_api.py), so a healthy agent is never throttled.
SHOPPER_AGENT_HEARTBEATS_PER_MINUTE = env.int("SHOPPER_AGENT_HEARTBEATS_PER_MINUTE", default=10)
# The node agent benchmarks the GPU once per rental after the handoff (issue 18, measured value).
SHOPPER_AGENT_BENCHMARK = env.bool("SHOPPER_AGENT_BENCHMARK", default=True)
# Fernet keys (comma-separated, newest first) that encrypt generated private keys at rest.
SHOPPER_FERNET_KEYS = env.list("SHOPPER_FERNET_KEYS", default=[])
SHOPPER_PUBLIC_URL = env.str("SHOPPER_PUBLIC_URL", default="http://127.0.0.1:8000")
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")

EMAIL_BACKEND = env.str("EMAIL_BACKEND", default="django.core.mail.backends.console.EmailBackend")
# The SMTP server of the smtp backend (in a container, localhost has none).
EMAIL_HOST = env.str("EMAIL_HOST", default="localhost")
EMAIL_PORT = env.int("EMAIL_PORT", default=25)
EMAIL_HOST_USER = env.str("EMAIL_HOST_USER", default="")
EMAIL_HOST_PASSWORD = env.str("EMAIL_HOST_PASSWORD", default="")
EMAIL_USE_TLS = env.bool("EMAIL_USE_TLS", default=False)
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="shopper@localhost")
ADMINS = [("Admin", a) for a in env.list("ADMIN_EMAILS", default=[])]

# LOG_JSON=True: one JSON object per line. Either way every record carries the request id and
# passes the redaction filter (secrets -> "[redacted]"), see shopper/logconfig.py.
LOG_JSON = env.bool("LOG_JSON", default=False)
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {
        "request_id": {"()": "shopper.logconfig.RequestIdFilter"},
        "redact": {"()": "shopper.logconfig.RedactFilter"},
        "require_debug_false": {"()": "django.utils.log.RequireDebugFalse"},
    },
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"},
        "json": {"()": "shopper.logconfig.JsonFormatter"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "json" if LOG_JSON else "plain",
            "filters": ["request_id", "redact"],
        },
        # Django's error email (500s to ADMINS), redacted too. Naming the "django" logger below
        # replaces Django's default handlers for it, which bypass the redaction.
        "mail_admins": {
            "class": "shopper.logconfig.AdminEmailHandler",
            "level": "ERROR",
            "filters": ["require_debug_false"],
        },
    },
    "loggers": {"django": {"handlers": ["mail_admins"], "level": "INFO"}},
    # django-q2 logs as "django-q" through these handlers too, at the root's level.
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
}

# Several safety loops, one acting (sessions/leader.py): the acting loop renews its lease every
# pass; when it dies another takes over once the lease has expired, so a deadline is enforced
# within this + SHOPPER_LIFECYCLE_INTERVAL_SECONDS + one pass of it passing (keep the sum < 60 s).
SHOPPER_SAFETY_LEASE_SECONDS = env.float("SHOPPER_SAFETY_LEASE_SECONDS", default=20.0)
# Idle stop (sessions/idle.py): the team default in minutes (unset = off; a user may set or clear
# it per rental), the utilisation (percent, every GPU) under which a heartbeat counts as idle, and
# how long before the stop the warning is given (at most half the idle time).
SHOPPER_IDLE_STOP_MINUTES = env.int("SHOPPER_IDLE_STOP_MINUTES", default=None)
SHOPPER_IDLE_UTIL_PERCENT = env.int("SHOPPER_IDLE_UTIL_PERCENT", default=5)
SHOPPER_IDLE_WARNING_MINUTES = env.int("SHOPPER_IDLE_WARNING_MINUTES", default=10)
# Provider balances (inventory/balances.py): alert admins when a balance covers fewer hours than
# this at the current burn rate.
SHOPPER_BALANCE_ALERT_HOURS = env.float("SHOPPER_BALANCE_ALERT_HOURS", default=24.0)
