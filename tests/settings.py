"""Test settings: the real services, isolated from a running `make up` stack.

Redis database 15 and the RabbitMQ vhost `swiftex_test` keep test traffic away
from a development stack on the same machine. Values already in the
environment win, so CI can point the suite elsewhere.
"""

import os

os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/15")
os.environ.setdefault("CELERY_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/swiftex_test")
os.environ.setdefault("REDIS_KEY_PREFIX", "swxtest")
os.environ.setdefault("LOG_LEVEL", "WARNING")
# Enough pooled connections that 50 racing requests really are concurrent.
os.environ.setdefault("DATABASE_POOL_MAX", "60")

from swiftex.settings import *  # noqa: E402,F403
