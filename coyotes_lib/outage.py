"""Redis outages and refusals, for loops that must go on.

``Outage`` backs off (up to 5 s) and logs once per outage; ``insist`` runs
one action until Redis takes it. A refused command (a key of another type)
is told apart from an unreachable server in the log, and refused credentials
are an error retried slowly: they will not fix themselves within seconds.
"""

from __future__ import annotations

import logging
import time

import gevent.event
import redis

log = logging.getLogger("coyotes.outage")

AUTH_RETRY = 30.0   # seconds between tries while Redis refuses our password or user


class Outage:
    """Backoff and one log line per Redis outage, for loops that must go on."""

    def __init__(self, what: str, wake: gevent.event.Event):
        self.what, self.wake = what, wake
        self.delay = 0.0
        self.since = 0.0

    def failed(self, exc: Exception) -> None:
        refused = isinstance(exc, redis.AuthenticationError)
        if not self.delay:
            self.since = time.monotonic()
            if refused:
                log.error("%s: %s: check the password (-redis-password-file, "
                          "COYOTES_REDIS_PASSWORD, -redis-url) and the user; retrying every "
                          "%.0f s", self.what, redis_trouble(exc), AUTH_RETRY)
            else:
                log.warning("%s: %s, retrying", self.what, redis_trouble(exc))
        self.delay = AUTH_RETRY if refused else min(5.0, (self.delay or 0.05) * 2)
        self.wake.wait(self.delay)

    def recovered(self) -> bool:
        if not self.delay:
            return False
        log.info("%s: redis is back after %.1fs", self.what, time.monotonic() - self.since)
        self.delay = 0.0
        return True


def redis_trouble(exc: Exception) -> str:
    """What went wrong, in words: a refused command (a key of another type, out of
    memory) is not an unavailable server."""
    if isinstance(exc, redis.ResponseError):
        return f"redis refused a command ({exc})"
    if isinstance(exc, redis.AuthenticationError):
        return f"redis refused this node's credentials ({exc})"
    return f"redis unavailable ({exc})"


def insist(what: str, action, give_up: gevent.event.Event):
    """Run ``action()`` until Redis takes it, or until ``give_up`` is set (-> None)."""
    outage = Outage(what, give_up)
    while True:
        try:
            result = action()
            outage.recovered()
            return result
        except redis.RedisError as exc:
            if give_up.is_set():
                log.error("%s: gave up (%s); the task stays in redis and is requeued "
                          "when this node starts again", what, exc)
                return None
            outage.failed(exc)
