"""The one domain exception family; views and the API translate it once at the edge."""


class EnrollmentError(Exception):
    """An error whose .message is safe to show to the person who caused it."""

    default_message = "The request could not be completed."

    def __init__(self, message: str | None = None, *, field: str | None = None) -> None:
        self.message = message or self.default_message
        self.field = field
        super().__init__(self.message)


class PolicyViolation(EnrollmentError):
    default_message = "The request is not allowed by the certificate template."


class NotPermitted(EnrollmentError):
    default_message = "You are not allowed to do that."

    def __init__(
        self, message: str | None = None, *, field: str | None = None, refusal: str = ""
    ) -> None:
        super().__init__(message, field=field)
        # Why, when it refuses someone for who they are (not an officer, outside their
        # scope, their own request: a key of permissions.REFUSALS), not for what they ask:
        # such a refusal of someone holding a role is audited as access.refused.
        self.refusal = refusal


class InvalidState(EnrollmentError):
    default_message = "That is not possible in the object's current state."


class KeyStoreError(EnrollmentError):
    default_message = "The CA key is not available on this server."


class ConfigurationError(EnrollmentError):
    default_message = "The PKI is not set up completely."


class RateLimited(EnrollmentError):
    default_message = "Too many requests; try again later."
    # Seconds until a retry can succeed, when known (the API's Retry-After header).
    retry_after: float | None = None


class Busy(EnrollmentError):
    default_message = "Another process is doing this right now; try again shortly."


CA_CANNOT_SIGN = "The CA cannot sign right now; please tell your administrator."


def public_message(exc: EnrollmentError) -> str:
    """What may be shown to whoever caused it: a key store's own message names key files
    and backends, which are for the operator's log."""
    return CA_CANNOT_SIGN if isinstance(exc, KeyStoreError) else exc.message
