"""Prometheus metrics of one server process, served at GET /metrics.

Most figures are read from the live objects at scrape time (a custom
collector), so the hot paths only bump plain integers.
"""

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from services.limits import KINDS as LIMIT_KINDS

REQUEST_BUCKETS_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                           0.5, 1.0, 2.5, 5.0)


class Metrics:
    def __init__(self, im):
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_StateCollector(im))
        self.request_seconds = Histogram(
            "im_http_request_duration_seconds",
            "REST request latency by handler, method and status class",
            ["handler", "method", "status"],
            buckets=REQUEST_BUCKETS_SECONDS,
            registry=self.registry,
        )

    def observe_request(self, handler_name, method, status, seconds):
        status_class = f"{status // 100}xx"
        self.request_seconds.labels(handler_name, method, status_class).observe(seconds)

    def render(self):
        return generate_latest(self.registry)


class _StateCollector:
    def __init__(self, im):
        self._im = im

    def collect(self):
        im = self._im
        registry = im.registry

        yield GaugeMetricFamily("im_connections", "Open WebSocket connections",
                                value=registry.connection_count)
        yield GaugeMetricFamily("im_online_users", "Users with a socket on this process",
                                value=registry.online_user_count)

        stored = CounterMetricFamily("im_messages_stored", "Messages stored",
                                     labels=["channel"])
        for channel, count in im.dispatcher.messages_stored.items():
            stored.add_metric([channel], count)
        yield stored

        yield CounterMetricFamily("im_frames_delivered", "Frames written to sockets",
                                  value=registry.frames_delivered)

        pushes = CounterMetricFamily("im_push_outcomes", "Push attempts by outcome",
                                     labels=["vendor", "status"])
        for vendor, sender in im.push_senders.items():
            for status, count in sender.outcomes.items():
                pushes.add_metric([vendor, status], count)
        yield pushes

        yield CounterMetricFamily("im_scheduled_sent", "Delayed messages sent",
                                  value=im.schedules.sent_count)

        limited = CounterMetricFamily(
            "im_rate_limited", "Sends and sockets rejected by a flood limit",
            labels=["kind"],
        )
        for kind in LIMIT_KINDS:
            limited.add_metric([kind], im.limits.hits[kind])
        yield limited

        pool = im.db.engine.pool
        if hasattr(pool, "checkedout"):
            yield GaugeMetricFamily("im_db_pool_checked_out",
                                    "Database connections in use", value=pool.checkedout())
            yield GaugeMetricFamily("im_db_pool_size", "Database pool size",
                                    value=pool.size())

        bus = registry.bus
        if bus is not None:
            yield GaugeMetricFamily("im_cluster_connected",
                                    "1 while the Redis subscription is up",
                                    value=1 if bus.connected else 0)
            yield CounterMetricFamily("im_cluster_outages", "Redis errors seen",
                                      value=bus.outages)
