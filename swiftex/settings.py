"""Swiftex settings: one module, every value from the environment with a local default.

Bad values stop the process at start with a message naming the variable
(see `swiftex/env.py`). Queue names, worker lanes and event subscribers are
declared here and nowhere else.
"""

from __future__ import annotations

from pathlib import Path

from kombu import Exchange, Queue

from swiftex.env import (
    database_from_url,
    env_bool,
    env_choice,
    env_float,
    env_int,
    env_optional_float,
    env_str,
    env_url,
)

BASE_DIR = Path(__file__).resolve().parent.parent

DEBUG = env_bool("DEBUG", False)
SECRET_KEY = env_str("SECRET_KEY", "dev-only-insecure-secret-key-change-me")
ALLOWED_HOSTS = [h.strip() for h in env_str("ALLOWED_HOSTS", "127.0.0.1,localhost,testserver").split(",") if h.strip()]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "swiftex",
    "leads",
    "conversations",
    "crmsync",
    "routing",
    "reps",
    "analytics",
    "metaleads",
    "webforms",
    "imports",
]

MIDDLEWARE = [
    "swiftex.metrics.RequestMetricsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # Serves admin and rep-page assets from the app folders: no collectstatic, no web server in front needed.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "swiftex.admin_timezone.AdminTimezoneMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "swiftex.urls"
WSGI_APPLICATION = "swiftex.wsgi.application"

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
            ],
        },
    },
]

# --- PostgreSQL -------------------------------------------------------------
DATABASES = {"default": database_from_url("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/swiftex")}
DATABASES["default"]["OPTIONS"] = {
    # The hot path's SQL (swiftex.db.prepared_cursor) is prepared on a connection
    # after this many runs, so PostgreSQL plans it once instead of at every call.
    # 0 turns prepared statements off: needed behind a transaction-mode pooler
    # that does not track them (PgBouncer before 1.21).
    "prepare_threshold": env_int("DATABASE_PREPARE_THRESHOLD", 5, minimum=0) or None,
}
if env_bool("DATABASE_POOL", True):
    # Django's psycopg 3 pool: a warm set of connections per process instead of a
    # TCP + auth handshake per request. CONN_MAX_AGE must stay 0 with a pool.
    DATABASES["default"]["OPTIONS"] |= {
        "pool": {
            "min_size": env_int("DATABASE_POOL_MIN", 1, minimum=0),
            "max_size": env_int("DATABASE_POOL_MAX", 8, minimum=1),
            "timeout": env_float("DATABASE_POOL_TIMEOUT", 10.0, minimum=0.1),
        }
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis ------------------------------------------------------------------
REDIS_URL = env_url("REDIS_URL", "redis://127.0.0.1:6379/0", schemes=("redis", "rediss", "unix"))
# Redis is the fast path, never the only path: short timeouts so a dead Redis
# costs a request milliseconds, then the caller falls back (see swiftex/redis.py).
REDIS_SOCKET_TIMEOUT = env_float("REDIS_SOCKET_TIMEOUT", 0.25, minimum=0.01)
REDIS_KEY_PREFIX = env_str("REDIS_KEY_PREFIX", "swx")
CACHES = {
    "default": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": REDIS_KEY_PREFIX,
        "TIMEOUT": 300,
        "OPTIONS": {
            "SOCKET_CONNECT_TIMEOUT": REDIS_SOCKET_TIMEOUT,
            "SOCKET_TIMEOUT": REDIS_SOCKET_TIMEOUT,
            "IGNORE_EXCEPTIONS": True,
        },
    }
}
DJANGO_REDIS_LOG_IGNORED_EXCEPTIONS = True

# --- RabbitMQ / Celery ------------------------------------------------------
CELERY_BROKER_URL = env_url("CELERY_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//", schemes=("amqp", "amqps", "pyamqp"))
# Publisher confirms: a publish returns only once RabbitMQ has the message.
CELERY_BROKER_TRANSPORT_OPTIONS = {"confirm_publish": True, "max_retries": 3}
CELERY_BROKER_CONNECTION_TIMEOUT = env_float("CELERY_BROKER_CONNECTION_TIMEOUT", 4.0, minimum=0.1)
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_HEARTBEAT = 30
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_TASK_ACKS_ON_FAILURE_OR_TIMEOUT = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = True
CELERY_TASK_IGNORE_RESULT = True
CELERY_RESULT_BACKEND = None
CELERY_TASK_TIME_LIMIT = env_int("CELERY_TASK_TIME_LIMIT", 120, minimum=1)
CELERY_TASK_SOFT_TIME_LIMIT = env_int("CELERY_TASK_SOFT_TIME_LIMIT", 100, minimum=1)
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_DEFAULT_QUEUE = "conversations"
CELERY_TASK_CREATE_MISSING_QUEUES = False
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_WORKER_SEND_TASK_EVENTS = False
CELERY_TASK_SEND_SENT_EVENT = False
CELERY_WORKER_ENABLE_REMOTE_CONTROL = env_bool("CELERY_WORKER_ENABLE_REMOTE_CONTROL", False)
CELERY_TIMEZONE = "UTC"
CELERY_BEAT_SCHEDULE_FILENAME = env_str("CELERY_BEAT_SCHEDULE_FILENAME", str(BASE_DIR / "var" / "celerybeat-schedule"))

# Worker lanes: each is its own queue and its own worker process. The first-touch
# lane never shares workers with bulk work, so a burst of CRM sync cannot delay a
# greeting. I/O-bound lanes use a thread pool: dozens of provider calls in flight
# per process instead of one. A greeting waits ~0.6 s on providers (model, then
# WhatsApp), so 10,000 leads/min keep ~100 in flight: first_touch has 96 threads,
# and releases its database connection while it waits.
SWIFTEX_LANES = {
    "first_touch": {
        "queue": "first_touch",
        "pool": "threads",
        "concurrency": env_int("LANE_FIRST_TOUCH_CONCURRENCY", 96, minimum=1),
        "subscribers": ["conversations"],
    },
    "conversations": {
        "queue": "conversations",
        "pool": "threads",
        "concurrency": env_int("LANE_CONVERSATIONS_CONCURRENCY", 16, minimum=1),
        "subscribers": ["replies"],
    },
    # Follow-ups, inactivity timeouts and session expiry: scheduled work, due when
    # the scheduler says so. Few threads and a lower CPU priority (nice), so
    # thousands of due follow-ups go out steadily without slowing new greetings.
    "followups": {
        "queue": "followups",
        "pool": "threads",
        "concurrency": env_int("LANE_FOLLOWUPS_CONCURRENCY", 8, minimum=1),
        "subscribers": ["followups"],
        "nice": env_int("LANE_FOLLOWUPS_NICE", 10, minimum=0, maximum=19),
    },
    "bulk": {
        "queue": "bulk",
        "pool": "threads",
        "concurrency": env_int("LANE_BULK_CONCURRENCY", 8, minimum=1),
        "subscribers": ["analytics", "crmsync", "imported_greetings"],
    },
}
# Each lane queue is bound to one direct exchange by its own name, so a task
# routed to a lane lands in that lane's queue and no other.
CELERY_TASK_DEFAULT_EXCHANGE = "swiftex.tasks"
CELERY_TASK_DEFAULT_EXCHANGE_TYPE = "direct"
CELERY_TASK_DEFAULT_ROUTING_KEY = CELERY_TASK_DEFAULT_QUEUE
CELERY_TASK_QUEUES = [
    Queue(lane["queue"], Exchange(CELERY_TASK_DEFAULT_EXCHANGE, type="direct"), routing_key=lane["queue"], durable=True)
    for lane in SWIFTEX_LANES.values()
]
CELERY_TASK_ROUTES = {
    "conversations.tasks.first_touch": {"queue": "first_touch"},
    "conversations.tasks.greeting_fallback": {"queue": "first_touch"},
    "conversations.tasks.greeting_sweep": {"queue": "first_touch"},
    "conversations.tasks.prune_webhook_deliveries": {"queue": "bulk"},
    "conversations.tasks.greet_imported": {"queue": "bulk"},
    "conversations.tasks.dispatch_scheduled_jobs": {"queue": "followups"},
    "conversations.tasks.run_scheduled_job": {"queue": "followups"},
    "conversations.tasks.*": {"queue": "conversations"},
    "analytics.tasks.*": {"queue": "bulk"},
    "crmsync.tasks.*": {"queue": "bulk"},
    "routing.tasks.*": {"queue": "bulk"},
    "swiftex.tasks.*": {"queue": "bulk"},
    "leads.tasks.*": {"queue": "bulk"},
    # A Meta lead is a live lead: its Graph fetch is part of the first touch.
    "metaleads.tasks.fetch_lead": {"queue": "first_touch"},
    "metaleads.tasks.*": {"queue": "bulk"},
    "imports.tasks.*": {"queue": "bulk"},
}
# How often the scheduler looks for greetings that never got a `sent` status.
GREETING_SWEEP_SECONDS = env_float("GREETING_SWEEP_SECONDS", 5.0, minimum=0.5)
# How often stored delivery statuses are applied (conversations lane, in batches).
RECEIPTS_APPLY_SECONDS = env_float("RECEIPTS_APPLY_SECONDS", 0.5, minimum=0.1)
# How often the scheduler enqueues due follow-ups and timeouts, and how many may be
# enqueued or running at once (the rest wait, durable, in PostgreSQL).
SCHEDULED_JOBS_TICK_SECONDS = env_float("SCHEDULED_JOBS_TICK_SECONDS", 1.0, minimum=0.1)
FOLLOWUP_MAX_IN_FLIGHT = env_int("FOLLOWUP_MAX_IN_FLIGHT", 64, minimum=1)
# New leads come first. Scheduled jobs start at up to FOLLOWUP_DISPATCH_PER_SECOND
# across all workers while no leads arrive; the rate falls in proportion to lead
# intake and reaches FOLLOWUP_DISPATCH_FLOOR_PER_SECOND (follow-ups never stall) at
# FOLLOWUP_YIELD_AT_LEADS_PER_MIN. A follow-up's webhooks and rows land on the web
# and PostgreSQL, which no `nice` can push behind greetings; `make bench-followups`.
FOLLOWUP_DISPATCH_PER_SECOND = env_float("FOLLOWUP_DISPATCH_PER_SECOND", 20.0, minimum=0.1)
FOLLOWUP_DISPATCH_FLOOR_PER_SECOND = env_float("FOLLOWUP_DISPATCH_FLOOR_PER_SECOND", 1.0, minimum=0.1)
FOLLOWUP_YIELD_AT_LEADS_PER_MIN = env_float("FOLLOWUP_YIELD_AT_LEADS_PER_MIN", 3000.0, minimum=1)
# How often replies lost with Redis, or stuck with a dead worker, are looked for.
REPLY_SWEEP_SECONDS = env_float("REPLY_SWEEP_SECONDS", 15.0, minimum=1)
# CRM sync (crmsync/): contacts pushed in batches on the bulk lane, under each CRM
# account's request rate (Organization.crm_requests_per_second, a Redis bucket
# shared by every worker). A change waits CRM_SYNC_GATHER_SECONDS so the changes
# that follow it (the greeting's status a moment later) go in the same upsert.
CRM_SYNC_TICK_SECONDS = env_float("CRM_SYNC_TICK_SECONDS", 1.0, minimum=0.1)
CRM_SYNC_GATHER_SECONDS = env_float("CRM_SYNC_GATHER_SECONDS", 2.0, minimum=0.0)
CRM_SYNC_LEASE_SECONDS = env_float("CRM_SYNC_LEASE_SECONDS", 120.0, minimum=10)
CRM_SYNC_MAX_ATTEMPTS = env_int("CRM_SYNC_MAX_ATTEMPTS", 12, minimum=1)
CRM_SYNC_BACKOFF_BASE_SECONDS = env_float("CRM_SYNC_BACKOFF_BASE_SECONDS", 5.0, minimum=0.1)
CRM_SYNC_BACKOFF_MAX_SECONDS = env_float("CRM_SYNC_BACKOFF_MAX_SECONDS", 600.0, minimum=1)
# Lead routing (routing/): how often leads whose rep did not act in time are
# looked for, and how often reps' notification e-mails are sent.
ROUTING_ESCALATION_TICK_SECONDS = env_float("ROUTING_ESCALATION_TICK_SECONDS", 15.0, minimum=1)
ROUTING_EMAIL_TICK_SECONDS = env_float("ROUTING_EMAIL_TICK_SECONDS", 10.0, minimum=1)


def _tick(task: str, seconds: float) -> dict:
    """A beat entry run every `seconds`; a tick no worker took within four is dropped, not piled up."""
    return {"task": task, "schedule": seconds, "options": {"expires": max(5.0, seconds * 4)}}


CELERY_BEAT_SCHEDULE = {
    "prune-outbox": {"task": "swiftex.tasks.prune_outbox", "schedule": 600.0},
    "expire-idempotency-keys": {"task": "leads.tasks.expire_idempotency_keys", "schedule": 600.0},
    "prune-webhook-deliveries": {"task": "conversations.tasks.prune_webhook_deliveries", "schedule": 3600.0},
    "apply-receipts": _tick("conversations.tasks.apply_receipts", RECEIPTS_APPLY_SECONDS),
    "dispatch-scheduled-jobs": _tick("conversations.tasks.dispatch_scheduled_jobs", SCHEDULED_JOBS_TICK_SECONDS),
    "prune-crm-push-log": {"task": "crmsync.tasks.prune_push_log", "schedule": 3600.0},
    "dispatch-crm-sync": _tick("crmsync.tasks.dispatch", CRM_SYNC_TICK_SECONDS),
    "escalate-leads": _tick("routing.tasks.escalate", ROUTING_ESCALATION_TICK_SECONDS),
    "send-notification-emails": _tick("routing.tasks.send_notification_emails", ROUTING_EMAIL_TICK_SECONDS),
    "resume-imports": _tick("imports.tasks.resume_stalled", 30.0),
    "reply-sweep": {
        "task": "conversations.tasks.reply_sweep",
        "schedule": REPLY_SWEEP_SECONDS,
        "options": {"expires": REPLY_SWEEP_SECONDS * 2},
    },
    "greeting-sweep": {
        "task": "conversations.tasks.greeting_sweep",
        "schedule": GREETING_SWEEP_SECONDS,
        "options": {"expires": GREETING_SWEEP_SECONDS * 4},  # no pile-up while workers are down
    },
}

# Event subscribers: each gets its own durable queue `<name>.events` bound to the
# topic exchange for the routing keys listed, and a handler that receives events
# in batches and records them or turns them into tasks on its lane, or, with
# `in_pool`, one event at a time run in the lane's worker pool. The lane whose
# worker consumes the queue is set in SWIFTEX_LANES. Registered here, in one
# place.
SWIFTEX_EVENTS_EXCHANGE = "swiftex.events"
SWIFTEX_SUBSCRIBERS = {
    "conversations": {
        "routing_keys": ["lead.created", "message.failed"],
        "handler": "conversations.subscriber.handle_event",
        # Every millisecond here is a millisecond of first response: the greeting
        # starts in the first-touch pool the moment its event arrives.
        "in_pool": True,
    },
    "replies": {"routing_keys": ["message.received"], "handler": "conversations.subscriber.handle_inbound"},
    "followups": {"routing_keys": ["lead.status_changed"], "handler": "conversations.subscriber.handle_lead_changes"},
    "analytics": {"routing_keys": ["lead.#", "message.#"], "handler": "analytics.subscriber.handle_events"},
    "crmsync": {
        "routing_keys": ["lead.created", "lead.imported", "lead.status_changed", "message.received", "contact.updated"],
        "handler": "crmsync.subscriber.handle_events",
    },
    # A CSV import whose admin chose to greet the list: greetings at the bulk lane's pace,
    # never queued ahead of live leads in the first-touch lane.
    "imported_greetings": {"routing_keys": ["lead.imported"], "handler": "conversations.subscriber.handle_imported"},
}

# --- Outbox -----------------------------------------------------------------
# The relay is woken by each commit that writes outbox rows (LISTEN/NOTIFY) and
# also sweeps on this interval for anything a missed wake-up left behind.
OUTBOX_RELAY_SWEEP_SECONDS = env_float("OUTBOX_RELAY_SWEEP_SECONDS", 1.0, minimum=0.05)
# After a wake-up, wait this long for more commits and publish them as one batch.
OUTBOX_RELAY_GATHER_SECONDS = env_float("OUTBOX_RELAY_GATHER_SECONDS", 0.01, minimum=0.0, maximum=1.0)
OUTBOX_BATCH_SIZE = env_int("OUTBOX_BATCH_SIZE", 200, minimum=1, maximum=5000)
OUTBOX_RETENTION_HOURS = env_int("OUTBOX_RETENTION_HOURS", 24, minimum=1)

# --- Lead ingest --------------------------------------------------------------
LEADS_MAX_BODY_BYTES = env_int("LEADS_MAX_BODY_BYTES", 64 * 1024, minimum=1024)
LEADS_BATCH_MAX_ITEMS = env_int("LEADS_BATCH_MAX_ITEMS", 500, minimum=1)
LEADS_BATCH_MAX_BODY_BYTES = env_int("LEADS_BATCH_MAX_BODY_BYTES", 4 * 1024 * 1024, minimum=1024)
LEADS_DEFAULT_PHONE_REGION = env_str("LEADS_DEFAULT_PHONE_REGION", "US").upper()
LEADS_DEFAULT_RATE_PER_MINUTE = env_int("LEADS_DEFAULT_RATE_PER_MINUTE", 6000, minimum=1)
IDEMPOTENCY_KEY_TTL_HOURS = env_int("IDEMPOTENCY_KEY_TTL_HOURS", 24, minimum=1)
API_KEY_CACHE_SECONDS = env_float("API_KEY_CACHE_SECONDS", 10.0, minimum=0.0)
# Organizations read by the first touch and webhooks; admin edits apply within this.
ORGANIZATION_CACHE_SECONDS = env_float("ORGANIZATION_CACHE_SECONDS", 10.0, minimum=0.0)
DATA_UPLOAD_MAX_MEMORY_SIZE = LEADS_BATCH_MAX_BODY_BYTES

# --- Providers (defaults an organization starts with; editable per organization)
OPENAI_BASE_URL = env_url("OPENAI_BASE_URL", "https://api.openai.com/v1", schemes=("http", "https"))
OPENAI_API_KEY = env_str("OPENAI_API_KEY")
# The request's length limit and temperature. Most OpenAI-compatible servers take `max_tokens`;
# OpenAI's reasoning models (o-series, GPT-5) refuse it and any temperature but their own: for
# them set max_completion_tokens, a larger limit (they spend tokens thinking first) and an empty
# OPENAI_TEMPERATURE (not sent).
OPENAI_MAX_TOKENS_PARAMETER = env_choice("OPENAI_MAX_TOKENS_PARAMETER", "max_tokens", ("max_tokens", "max_completion_tokens"))
OPENAI_MAX_TOKENS = env_int("OPENAI_MAX_TOKENS", 160, minimum=16, maximum=100_000)
OPENAI_TEMPERATURE = env_optional_float("OPENAI_TEMPERATURE", 0.7, minimum=0, maximum=2)
WHATSAPP_API_URL = env_url("WHATSAPP_API_URL", "https://graph.facebook.com/v23.0", schemes=("http", "https"))
TWILIO_API_URL = env_url("TWILIO_API_URL", "https://api.twilio.com", schemes=("http", "https"))
HUBSPOT_API_URL = env_url("HUBSPOT_API_URL", "https://api.hubapi.com", schemes=("http", "https"))
WHATSAPP_PHONE_NUMBER_ID = env_str("WHATSAPP_PHONE_NUMBER_ID")
WHATSAPP_ACCESS_TOKEN = env_str("WHATSAPP_ACCESS_TOKEN")
WHATSAPP_APP_SECRET = env_str("WHATSAPP_APP_SECRET")
WHATSAPP_VERIFY_TOKEN = env_str("WHATSAPP_VERIFY_TOKEN")
TWILIO_ACCOUNT_SID = env_str("TWILIO_ACCOUNT_SID")
TWILIO_AUTH_TOKEN = env_str("TWILIO_AUTH_TOKEN")
TWILIO_FROM_NUMBER = env_str("TWILIO_FROM_NUMBER")
HUBSPOT_ACCESS_TOKEN = env_str("HUBSPOT_ACCESS_TOKEN")
# Where providers reach this deployment (Twilio status callbacks are sent to
# it, and their signatures are computed over it).
PUBLIC_BASE_URL = env_url("PUBLIC_BASE_URL", "http://127.0.0.1:8000", schemes=("http", "https"))

# --- Lead sources beyond the API: Meta Lead Ads, web forms, CSV import --------
# (metaleads/, webforms/, imports/). Section owned by those apps.
# CSV import (imports/, docs/csv-import.md): runs on the bulk lane, a chunk per
# transaction, paced so a big list never slows live leads down.
IMPORT_MAX_BYTES = env_int("IMPORT_MAX_BYTES", 50 * 1024 * 1024, minimum=1024)
IMPORT_MAX_ROWS = env_int("IMPORT_MAX_ROWS", 200_000, minimum=1)
IMPORT_CHUNK_ROWS = env_int("IMPORT_CHUNK_ROWS", 200, minimum=1, maximum=5000)
IMPORT_ROWS_PER_SECOND = env_float("IMPORT_ROWS_PER_SECOND", 100.0, minimum=1)
IMPORT_CHECK_ROWS_PER_SECOND = env_float("IMPORT_CHECK_ROWS_PER_SECOND", 2000.0, minimum=1)
IMPORT_SLICE_SECONDS = env_float("IMPORT_SLICE_SECONDS", 20.0, minimum=1)  # one task's share; then it re-queues itself
IMPORT_STALL_SECONDS = env_float("IMPORT_STALL_SECONDS", 60.0, minimum=5)  # no progress this long: picked up again
# Meta Lead Ads (metaleads/, docs/meta-lead-ads.md): ONE Meta app for the deployment,
# which every organization's pages subscribe to; pages and their tokens are per
# organization (admin → Meta pages).
GRAPH_API_URL = env_url("GRAPH_API_URL", "https://graph.facebook.com/v23.0", schemes=("http", "https"))
META_APP_SECRET = env_str("META_APP_SECRET")  # signs every leadgen webhook; unset: all refused
META_VERIFY_TOKEN = env_str("META_VERIFY_TOKEN")  # the subscription handshake's hub.verify_token
META_GRAPH_TIMEOUT_SECONDS = env_float("META_GRAPH_TIMEOUT_SECONDS", 5.0, minimum=0.1, maximum=60)
# Transient Graph errors: retried with exponential backoff and jitter, then failed (admin).
META_FETCH_MAX_ATTEMPTS = env_int("META_FETCH_MAX_ATTEMPTS", 8, minimum=1, maximum=50)
META_FETCH_BACKOFF_SECONDS = env_float("META_FETCH_BACKOFF_SECONDS", 2.0, minimum=0.01)
META_FETCH_BACKOFF_MAX_SECONDS = env_float("META_FETCH_BACKOFF_MAX_SECONDS", 300.0, minimum=0.1)
# The sweep re-enqueues leads whose task was lost and starts reconciliation (polling
# each form's leads, the safety net under the webhook) every META_RECONCILE_SECONDS,
# re-reading META_RECONCILE_OVERLAP_SECONDS before each form's watermark.
META_SWEEP_SECONDS = env_float("META_SWEEP_SECONDS", 15.0, minimum=1)
META_RECONCILE_SECONDS = env_float("META_RECONCILE_SECONDS", 300.0, minimum=10)
META_RECONCILE_OVERLAP_SECONDS = env_int("META_RECONCILE_OVERLAP_SECONDS", 900, minimum=0)
CELERY_BEAT_SCHEDULE["meta-leads-sweep"] = _tick("metaleads.tasks.sweep", META_SWEEP_SECONDS)
# Web forms (/f/<slug>): submissions per client IP, across every form; a burst of this many passes at once.
WEBFORM_IP_RATE_PER_MINUTE = env_int("WEBFORM_IP_RATE_PER_MINUTE", 10, minimum=1)
WEBFORM_IP_BURST = env_int("WEBFORM_IP_BURST", 10, minimum=1)
# Reverse proxies in front of the web that append to X-Forwarded-For; 0: the client is REMOTE_ADDR
# (a client can write any X-Forwarded-For it likes, so it is read only when a proxy is declared).
WEBFORM_TRUSTED_PROXIES = env_int("WEBFORM_TRUSTED_PROXIES", 0, minimum=0, maximum=10)

# --- Sign-in (reps' pages and admin) ----------------------------------------------
# Failed sign-ins per username, and per client address (behind WEBFORM_TRUSTED_PROXIES), within
# LOGIN_LOCKOUT_SECONDS of the first: past either, sign-in is refused until the window ends.
LOGIN_FAILURES_PER_ACCOUNT = env_int("LOGIN_FAILURES_PER_ACCOUNT", 10, minimum=1)
LOGIN_FAILURES_PER_ADDRESS = env_int("LOGIN_FAILURES_PER_ADDRESS", 50, minimum=1)
LOGIN_LOCKOUT_SECONDS = env_int("LOGIN_LOCKOUT_SECONDS", 900, minimum=1)
# Password reset e-mails per e-mail address asked for, and per client address.
PASSWORD_RESETS_PER_HOUR = env_int("PASSWORD_RESETS_PER_HOUR", 5, minimum=1)

# --- E-mail (reps' notifications) -------------------------------------------------
# Printed to the console unless an SMTP server is configured.
EMAIL_BACKEND = env_str("EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")
EMAIL_HOST = env_str("EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("EMAIL_PORT", 25, minimum=1, maximum=65535)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER")
EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
EMAIL_TIMEOUT = env_float("EMAIL_TIMEOUT", 10.0, minimum=0.5)
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "Swiftex <swiftex@localhost>")

# --- First touch ----------------------------------------------------------------
# The model gets this long to write the greeting; past it, the organization's
# fallback text goes out instead, so the 2-second promise holds anyway.
GREETING_MODEL_BUDGET_SECONDS = env_float("GREETING_MODEL_BUDGET_SECONDS", 1.2, minimum=0.05, maximum=30)
# A WhatsApp greeting that Meta never confirmed taking (no answer, no wamid, no
# status) is given up on after this long and goes by SMS. 0 turns it off.
WHATSAPP_SENT_TIMEOUT_SECONDS = env_float("WHATSAPP_SENT_TIMEOUT_SECONDS", 60.0, minimum=0, maximum=3600)
# One Meta did accept (it has a wamid) but that has no `sent` status yet: off by
# default, because late status webhooks (ours or Meta's) would then send the
# lead an SMS on top of a WhatsApp message that did arrive. A `failed` status
# always falls back.
WHATSAPP_ACCEPTED_TIMEOUT_SECONDS = env_float("WHATSAPP_ACCEPTED_TIMEOUT_SECONDS", 0.0, minimum=0, maximum=7 * 24 * 3600)
PROVIDER_CONNECT_TIMEOUT_SECONDS = env_float("PROVIDER_CONNECT_TIMEOUT_SECONDS", 2.0, minimum=0.05)
PROVIDER_READ_TIMEOUT_SECONDS = env_float("PROVIDER_READ_TIMEOUT_SECONDS", 8.0, minimum=0.1)
# Transient provider errors (5xx, rate limits, connection refused) are retried
# with exponential backoff and jitter, capped; then the message is failed.
SEND_MAX_ATTEMPTS = env_int("SEND_MAX_ATTEMPTS", 6, minimum=1, maximum=50)
SEND_RETRY_BACKOFF_SECONDS = env_float("SEND_RETRY_BACKOFF_SECONDS", 1.0, minimum=0.01)
SEND_RETRY_BACKOFF_MAX_SECONDS = env_float("SEND_RETRY_BACKOFF_MAX_SECONDS", 120.0, minimum=0.1)
WEBHOOK_RETENTION_HOURS = env_int("WEBHOOK_RETENTION_HOURS", 72, minimum=1)

# --- DRF --------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["leads.auth.ApiKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["leads.auth.HasOrganization"],
    "DEFAULT_PARSER_CLASSES": ["swiftex.parsers.JSONParser"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "EXCEPTION_HANDLER": "swiftex.api.exception_handler",
    "UNAUTHENTICATED_USER": None,
}

# --- i18n / static / logging -------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "var" / "static"  # `collectstatic` output; empty is fine, files are found in the apps
STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # WhiteNoise warns on every start without it
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG

# Rep pages (reps/): Django's own login, then the rep's leads.
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/app/leads/"
LOGOUT_REDIRECT_URL = "/accounts/login/"
# How often the rep pages ask for news (new leads, messages, statuses); 0 turns live updates off.
REP_PAGES_POLL_SECONDS = env_float("REP_PAGES_POLL_SECONDS", 4.0, minimum=0)
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LOG_LEVEL = env_str("LOG_LEVEL", "INFO").upper()
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(process)d %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.db.backends": {"level": "INFO"},
        "amqp": {"level": "WARNING"},
        "kombu": {"level": "WARNING"},
        # The OpenAI client's HTTP layer logs every request at INFO: a line per greeting.
        "httpx": {"level": "WARNING"},
        "httpx2": {"level": "WARNING"},
        "openai": {"level": "WARNING"},
    },
}
