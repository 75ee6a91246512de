"""The domain's error hierarchy. The HTTP layer maps each class to a status code in one place
(``backup_repository.http.errors``); services raise these and never build responses."""


class DomainError(Exception):
    """Base of every error a service may raise on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(DomainError):
    """The request is malformed or carries values that cannot be accepted (400)."""


class AuthenticationFailed(DomainError):
    """A login's credentials, or a request's token, are missing, wrong, expired or revoked
    (401). The message names which of the two was refused: a login is refused before any
    token exists, so its message must not speak of one."""


class Forbidden(DomainError):
    """The caller is known but may not do this (403)."""


class NotFound(DomainError):
    """The addressed object does not exist (404)."""


class Conflict(DomainError):
    """The request conflicts with work in progress (409)."""


class PayloadTooLarge(DomainError):
    """The body exceeds what is allowed (413)."""


class RequestTimeout(DomainError):
    """The request took longer than its time limit (408)."""


class DependencyUnavailable(DomainError):
    """A dependency (database, storage, configuration) is down (503)."""


class TooBusy(DomainError):
    """The server is at capacity for this kind of request; the client should try again
    after ``retry_after`` seconds (503 with ``Retry-After``)."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RangeNotSatisfiable(InvalidInput):
    """A download asked for bytes outside the file (416)."""

    def __init__(self, size: int) -> None:
        super().__init__("requested range not satisfiable")
        self.size = size
