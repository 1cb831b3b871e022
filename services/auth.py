"""JWT tokens: HS256 with the profile's secret, claims sub, role, iat, exp."""

import time
from dataclasses import dataclass

import jwt

from services.errors import Unauthorized

ROLES = ("doctor", "patient", "system")
ALGORITHM = "HS256"


@dataclass(frozen=True)
class Principal:
    """The identity a request or socket acts as, taken from a verified token."""

    user_id: str
    role: str
    issued_at: float
    expires_at: float

    @property
    def is_system(self):
        return self.role == "system"


class TokenService:
    def __init__(self, secret):
        self._secret = secret
        # user id -> time (seconds) up to which its tokens are revoked.
        self._revoked_before = {}

    def mint(self, user_id, role, ttl_seconds, now=None):
        """Return ``(token, expires_at_ms)`` for a user and role."""
        now = time.time() if now is None else now
        expires_at = int(now + ttl_seconds)
        # iat keeps milliseconds (RFC 7519 allows a fractional NumericDate),
        # so a logout also revokes tokens minted earlier in the same second.
        issued_at = int(now * 1000) / 1000
        claims = {"sub": user_id, "role": role, "iat": issued_at, "exp": expires_at}
        token = jwt.encode(claims, self._secret, algorithm=ALGORITHM)
        return token, expires_at * 1000

    def verify(self, token):
        """Return the Principal of a token or raise Unauthorized."""
        if not token or not isinstance(token, str):
            raise Unauthorized("Missing token")
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                options={"require": ["sub", "role", "exp"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("Token expired") from None
        except jwt.InvalidTokenError:
            raise Unauthorized("Invalid token") from None

        user_id, role = claims.get("sub"), claims.get("role")
        if not isinstance(user_id, str) or not 1 <= len(user_id) <= 64:
            raise Unauthorized("Invalid token: bad sub claim")
        if role not in ROLES:
            raise Unauthorized("Invalid token: bad role claim")
        issued_at = claims.get("iat", 0)
        if not isinstance(issued_at, (int, float)):
            raise Unauthorized("Invalid token: bad iat claim")
        revoked_before = self._revoked_before.get(user_id)
        if revoked_before is not None and issued_at <= revoked_before:
            raise Unauthorized("Token revoked by logout")
        return Principal(user_id, role, issued_at, claims["exp"])

    def revoke_before(self, user_id, when_seconds):
        """Reject tokens of ``user_id`` issued at or before ``when_seconds``."""
        current = self._revoked_before.get(user_id, 0)
        self._revoked_before[user_id] = max(current, when_seconds)

    def load_revocations(self, rows):
        for user_id, when_ms in rows:
            self.revoke_before(user_id, when_ms / 1000)
