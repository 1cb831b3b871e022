"""Browser origins allowed to call the REST API (CORS) and open the WebSocket.

A request without an ``Origin`` header does not come from a web page
(native apps, curl, the platform's backend) and is never checked here.
"""

import re

ANY_ORIGIN = "*"
ANY_PORT = "*"
DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}

# scheme://host[:port] in the lower case that browsers send. The host is a
# DNS name, an IPv4 address or a bracketed IPv6 address. Origins have no
# path, query or user info.
_ORIGIN = re.compile(
    r"(?P<scheme>[a-z][a-z0-9+.-]*)://"
    r"(?P<host>\[[0-9a-f:.]+\]|[a-z0-9._-]+)"
    r"(?::(?P<port>[0-9]{1,5}|\*))?"
)


class OriginPolicy:
    """Match ``Origin`` headers against the configured entries.

    An entry is ``*`` (any origin), an exact origin such as
    ``https://app.example.org`` or ``http://localhost:8080``, or an origin
    whose port is ``*``, such as ``http://localhost:*``, which matches that
    scheme and host on any port or none. An empty list allows no origin.
    Raises ValueError for an entry that is not one of these.
    """

    def __init__(self, entries):
        self.allows_any = False
        self._exact = set()
        self._any_port = set()
        for entry in entries:
            if entry.strip() == ANY_ORIGIN:
                self.allows_any = True
                continue
            scheme, host, port = _split_origin(entry, allow_any_port=True)
            if port == ANY_PORT:
                self._any_port.add((scheme, host))
            else:
                self._exact.add((scheme, host, port))

    def allows(self, origin):
        """Return whether a page of ``origin`` may call the API."""
        if not origin:
            return False
        if self.allows_any:
            return True
        try:
            scheme, host, port = _split_origin(origin)
        except ValueError:
            # "null" (sandboxed frames, file: pages) and malformed values.
            return False
        return (scheme, host, port) in self._exact or (scheme, host) in self._any_port


def _split_origin(value, allow_any_port=False):
    """Return (scheme, host, port) of an origin; port is ``*`` for a pattern."""
    match = _ORIGIN.fullmatch(value.strip().lower())
    if match is None:
        raise ValueError(
            f"{value!r} is not an origin; use scheme://host[:port], e.g. "
            "https://app.example.org or http://localhost:*"
        )
    scheme, host, port = match.group("scheme", "host", "port")
    if port == ANY_PORT:
        if not allow_any_port:
            raise ValueError(f"{value!r} has a wildcard port")
        return scheme, host, ANY_PORT
    number = int(port) if port else DEFAULT_PORTS.get(scheme)
    if number is not None and not 0 < number < 65536:
        raise ValueError(f"{value!r} has a port outside 1-65535")
    return scheme, host, number
