"""Flood limits: REST send rates and WebSocket caps, with their counters.

Every limit keeps its state in this process's memory, so it applies per
process: N processes behind a load balancer admit up to N times as much.
A rate or a cap of 0 turns that limit off.
"""

import logging
import math
import time
from collections import Counter

from services.errors import RateLimited

logger = logging.getLogger(__name__)

# A limit hit is logged at most once per minute per limit and key (user id
# or address). The next log line reports how many hits it left out.
LOG_INTERVAL_SECONDS = 60.0
PRUNE_INTERVAL_SECONDS = 60.0

# Kinds of limits, the `kind` label of im_rate_limited_total.
REST_USER_SENDS = "rest_user_sends"
REST_IP_SENDS = "rest_ip_sends"
WS_SOCKET_SENDS = "ws_socket_sends"
WS_USER_SOCKETS = "ws_user_sockets"
WS_UNAUTHENTICATED_IP = "ws_unauthenticated_ip"
KINDS = (REST_USER_SENDS, REST_IP_SENDS, WS_SOCKET_SENDS, WS_USER_SOCKETS,
         WS_UNAUTHENTICATED_IP)


class TokenBuckets:
    """One token bucket per key: ``rate`` tokens a second, at most ``burst``."""

    def __init__(self, rate, burst, clock=time.monotonic):
        self.rate = rate
        self.burst = burst
        self._clock = clock
        # key -> (tokens, monotonic time of that count)
        self._buckets = {}
        self._pruned_at = clock()

    def take(self, key):
        """Take a token for ``key``; return 0, or the seconds until one is due."""
        now = self._clock()
        self._prune(now)
        tokens, counted_at = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - counted_at) * self.rate)
        if tokens >= 1:
            self._buckets[key] = (tokens - 1, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1 - tokens) / self.rate

    def __len__(self):
        return len(self._buckets)

    def _prune(self, now):
        """Drop the buckets that have refilled, so memory follows active keys."""
        if now - self._pruned_at < PRUNE_INTERVAL_SECONDS:
            return
        self._pruned_at = now
        full = [key for key, (tokens, counted_at) in self._buckets.items()
                if tokens + (now - counted_at) * self.rate >= self.burst]
        for key in full:
            del self._buckets[key]


class Limits:
    """The flood limits of one process, how often each was hit, and their log."""

    def __init__(self, config, clock=time.monotonic):
        self._config = config
        self._clock = clock
        self._user_sends = _buckets(config.rest_user_sends_per_second,
                                    config.rest_user_send_burst, clock)
        self._ip_sends = _buckets(config.rest_ip_sends_per_second,
                                  config.rest_ip_send_burst, clock)
        # remote address -> sockets open there that have not logged in yet
        self._unauthenticated = Counter()
        self.hits = Counter()
        # (kind, key) -> (time of the last log line, hits left out since)
        self._logged = {}
        self._log_pruned_at = clock()

    # -- REST sends -------------------------------------------------------------

    def check_rest_send(self, principal, remote_ip):
        """Take a REST send from the caller's budgets; raise RateLimited when empty.

        System tokens skip the per-user budget, because they send for many
        users, but count against their address like every caller. The
        user's budget is checked first, so a rejected user spends none of
        its address's budget.
        """
        if self._user_sends is not None and not principal.is_system:
            self._take(self._user_sends, REST_USER_SENDS, principal.user_id, "user")
        if self._ip_sends is not None:
            self._take(self._ip_sends, REST_IP_SENDS, remote_ip, "address")

    def _take(self, buckets, kind, key, noun):
        wait_seconds = buckets.take(key)
        if not wait_seconds:
            return
        self.record(kind, key)
        retry_after = max(1, math.ceil(wait_seconds))
        raise RateLimited(
            f"Too many sends from this {noun} (limit {buckets.rate:g} a second, "
            f"bursts of {buckets.burst}); retry in {retry_after} s",
            retry_after_seconds=retry_after,
        )

    # -- WebSocket caps ---------------------------------------------------------

    def admit_unauthenticated(self, remote_ip):
        """Count a socket waiting for its login; False when the address is full.

        Each True result must be paired with one ``release_unauthenticated``.
        """
        cap = self._config.ws_max_unauthenticated_per_ip
        if cap and self._unauthenticated[remote_ip] >= cap:
            self.record(WS_UNAUTHENTICATED_IP, remote_ip)
            return False
        self._unauthenticated[remote_ip] += 1
        return True

    def release_unauthenticated(self, remote_ip):
        self._unauthenticated[remote_ip] -= 1
        if self._unauthenticated[remote_ip] <= 0:
            del self._unauthenticated[remote_ip]

    def admit_user_socket(self, user_id, open_sockets):
        """Return whether a user with ``open_sockets`` sockets may open another."""
        cap = self._config.ws_max_sockets_per_user
        if cap and open_sockets >= cap:
            self.record(WS_USER_SOCKETS, user_id)
            return False
        return True

    # -- hits -------------------------------------------------------------------

    def record(self, kind, key):
        """Count a hit of a limit and log it, at most once a minute per key."""
        self.hits[kind] += 1
        now = self._clock()
        logged_at, left_out = self._logged.get((kind, key), (None, 0))
        if logged_at is not None and now - logged_at < LOG_INTERVAL_SECONDS:
            self._logged[(kind, key)] = (logged_at, left_out + 1)
        elif left_out:
            logger.warning("Limit %s hit by %s, and %d more times since the last report",
                           kind, key, left_out)
            self._logged[(kind, key)] = (now, 0)
        else:
            logger.warning("Limit %s hit by %s", kind, key)
            self._logged[(kind, key)] = (now, 0)
        self._prune_log(now)

    def _prune_log(self, now):
        """Forget keys not logged for a minute, reporting the hits they left out."""
        if now - self._log_pruned_at < PRUNE_INTERVAL_SECONDS:
            return
        self._log_pruned_at = now
        stale = [key for key, (logged_at, _) in self._logged.items()
                 if now - logged_at >= LOG_INTERVAL_SECONDS]
        for kind, key in stale:
            _, left_out = self._logged.pop((kind, key))
            if left_out:
                logger.warning("Limit %s hit by %s %d more times since the last report",
                               kind, key, left_out)


def _buckets(rate, burst, clock):
    return TokenBuckets(rate, burst, clock) if rate > 0 else None
