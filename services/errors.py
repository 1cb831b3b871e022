"""The error family every layer raises and the edges render.

Each error carries an HTTP status and a stable machine code. Handlers turn
it into ``{"error": {"code", "message", "field"?}}``, and the socket into an
``error`` frame with the same code.
"""


class ApiError(Exception):
    status = 500
    code = "internal"

    def __init__(self, message, field=None):
        super().__init__(message)
        self.message = message
        self.field = field

    def to_dict(self):
        body = {"code": self.code, "message": self.message}
        if self.field:
            body["field"] = self.field
        return body


class InvalidArgument(ApiError):
    status = 400
    code = "invalid_argument"


class Unauthorized(ApiError):
    status = 401
    code = "unauthorized"


class Forbidden(ApiError):
    status = 403
    code = "forbidden"


class NotFound(ApiError):
    status = 404
    code = "not_found"


class Conflict(ApiError):
    status = 409
    code = "conflict"


class PayloadTooLarge(ApiError):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(ApiError):
    status = 415
    code = "unsupported_media_type"


class RateLimited(ApiError):
    status = 429
    code = "rate_limited"

    def __init__(self, message, retry_after_seconds=1, field=None):
        super().__init__(message, field)
        self.retry_after_seconds = retry_after_seconds


class Unavailable(ApiError):
    status = 503
    code = "unavailable"


class Internal(ApiError):
    status = 500
    code = "internal"
