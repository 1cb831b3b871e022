"""Logging helpers for outbound vendor HTTP calls that keep secrets out of logs."""

import logging
import urllib.parse

from services.push_outcome import PushOutcome, PushStatus

# Query parameters whose values are credentials. Names are compared
# case-insensitively.
SECRET_QUERY_PARAMETERS = frozenset({"access_token", "token", "sign", "secret"})

MASK = "***"

# Tornado's curl client logs every URL, header and body at DEBUG, and
# these carry the vendors' tokens and secrets.
CURL_LOGGER_NAME = "tornado.curl_httpclient"

_OUTCOME_LOG_LEVELS = {
    PushStatus.SENT: logging.INFO,
    PushStatus.INVALID_TARGET: logging.INFO,
    PushStatus.RETRY: logging.WARNING,
    PushStatus.RATE_LIMITED: logging.WARNING,
    PushStatus.QUOTA_EXHAUSTED: logging.ERROR,
    PushStatus.PERMANENT: logging.ERROR,
}


def scrub_url(url: str) -> str:
    """Return ``url`` with credential query values and any password masked.

    The values of ``access_token``, ``token``, ``sign`` and ``secret`` become
    ``***``. Every other part of the URL is kept byte for byte, so the
    result still shows which endpoint was called.
    """
    parts = urllib.parse.urlsplit(url)

    netloc = parts.netloc
    if parts.password is not None:
        userinfo, _, host = netloc.rpartition("@")
        username = userinfo.split(":", 1)[0]
        netloc = "%s:%s@%s" % (username, MASK, host)

    fields = []
    for field in parts.query.split("&") if parts.query else []:
        name = field.partition("=")[0]
        if urllib.parse.unquote_plus(name).lower() in SECRET_QUERY_PARAMETERS:
            fields.append(name + "=" + MASK)
        else:
            fields.append(field)

    return urllib.parse.urlunsplit(
        (parts.scheme, netloc, parts.path, "&".join(fields), parts.fragment)
    )


def protect_http_client_logs() -> None:
    """Set Tornado's curl client logger to INFO unless it has a level of INFO or above.

    Its DEBUG output contains whole requests, so it would write access
    tokens, the Getui ``token`` header and the WeChat app secret to the log.
    An explicit level keeps it quiet even if the root logger is later set
    to DEBUG. This changes a process-wide logger, on purpose.
    """
    curl_logger = logging.getLogger(CURL_LOGGER_NAME)
    if curl_logger.level == logging.NOTSET or curl_logger.level < logging.INFO:
        was_enabled = curl_logger.isEnabledFor(logging.DEBUG)
        curl_logger.setLevel(logging.INFO)
        if was_enabled:
            logging.getLogger(__name__).info(
                "set the %s log level to INFO because its DEBUG output contains "
                "vendor credentials",
                CURL_LOGGER_NAME,
            )


def log_push_outcome(
    logger: logging.Logger,
    vendor: str,
    id_name: str,
    id_value: str | None,
    outcome: PushOutcome,
    elapsed_seconds: float,
) -> None:
    """Log one push attempt at a level that matches how bad its outcome is.

    ``id_name`` and ``id_value`` name the idempotency key that the vendor
    de-duplicates on, such as Getui's ``request_id``. Sent pushes and
    dropped targets log at INFO, transient failures at WARNING, and quota
    or permanent failures at ERROR because they need an operator.
    """
    logger.log(
        _OUTCOME_LOG_LEVELS[outcome.status],
        "%s push %s=%s status=%s code=%s elapsed=%.3fs detail=%s",
        vendor,
        id_name,
        id_value,
        outcome.status.value,
        outcome.vendor_code,
        elapsed_seconds,
        outcome.detail,
    )
