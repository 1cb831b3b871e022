"""Route table and Application factory."""

import logging

import tornado.web

from handlers import chats, health, sdk, users, wechat, ws
from handlers.base import NotFoundHandler, access_logger, scrub_uri


def make_app(im):
    """Build the Tornado Application for an IMServer container."""
    routes = (chats.ROUTES + users.ROUTES + health.ROUTES + ws.ROUTES + sdk.ROUTES
              + wechat.ROUTES)
    config = im.config
    app = tornado.web.Application(
        routes,
        default_handler_class=NotFoundHandler,
        log_function=log_request,
        websocket_ping_interval=config.ws_ping_interval_seconds,
        websocket_ping_timeout=config.ws_ping_timeout_seconds,
        websocket_max_message_size=config.ws_max_message_bytes,
        compress_response=False,
    )
    app.im = im
    return app


def log_request(handler):
    """Record request latency; log 2xx/3xx at debug, 4xx warning, 5xx error."""
    status = handler.get_status()
    im = getattr(handler.application, "im", None)
    if im is not None:
        im.metrics.observe_request(type(handler).__name__, handler.request.method,
                                   status, handler.request.request_time())
    if status < 400:
        level = logging.DEBUG
    elif status < 500:
        level = logging.WARNING
    else:
        level = logging.ERROR
    if not access_logger.isEnabledFor(level):
        return
    request = handler.request
    access_logger.log(
        level,
        "%d %s %s (%s) %.1fms [%s]",
        status,
        request.method,
        scrub_uri(request.uri),
        request.remote_ip,
        1000.0 * request.request_time(),
        getattr(handler, "request_id", "-"),
    )
