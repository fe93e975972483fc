"""One hierarchy of errors for every face.

Domain and kernel code raise these; each face turns them into its own shape: the FHIR face
into an OperationOutcome with the status below (FHIR R4 http.html#summary and
operationoutcome.html), DICOMweb into its status codes, the portal into a readable page.
Anything else escaping a handler is a bug and answers 500.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Issue:
    """One problem, shaped like an OperationOutcome.issue (FHIR R4 operationoutcome.html)."""

    diagnostics: str
    code: str = "processing"
    severity: str = "error"
    expression: list[str] = field(default_factory=list)
    #: The rule broken (short kebab-case, e.g. `identity-sex`), for an error a user can correct;
    #: the faces show it: FHIR as `issue.details.coding`, the portal as the words it has for it
    #: (portal/locale/rules.json, in the user's language).
    rule: str | None = None


class AllianceError(Exception):
    """Base of every expected failure. `status` is the HTTP status the REST faces answer with.

    `rule` names the business rule or input check broken, for a failure the user can correct
    (protocol errors carry none); the diagnostics then read "[rule] message", the form that
    clients already rely on."""

    status: int = 400
    code: str = "processing"

    def __init__(
        self,
        message: str,
        *,
        rule: str | None = None,
        expression: list[str] | None = None,
        issues: list[Issue] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.rule = rule
        self.headers = headers or {}
        self.issues = issues or [Issue(self.said, self.code, "error", list(expression or []), rule)]

    @property
    def said(self) -> str:
        """The message with its rule first ("[rule] message"), as diagnostics and logs read."""
        return f"[{self.rule}] {self.message}" if self.rule else self.message


class BadRequest(AllianceError):
    """The request itself is malformed (unparseable JSON, wrong query syntax)."""

    status = 400
    code = "invalid"


class Unauthorized(AllianceError):
    status = 401
    code = "login"


class Forbidden(AllianceError):
    status = 403
    code = "forbidden"


class NotFound(AllianceError):
    status = 404
    code = "not-found"


class MethodNotAllowed(AllianceError):
    status = 405
    code = "not-supported"


class NotAcceptable(AllianceError):
    status = 406
    code = "not-supported"


class Conflict(AllianceError):
    status = 409
    code = "conflict"


class Gone(AllianceError):
    status = 410
    code = "deleted"


class PreconditionFailed(AllianceError):
    status = 412
    code = "conflict"


class PayloadTooLarge(AllianceError):
    status = 413
    code = "too-costly"


class UnsupportedMediaType(AllianceError):
    status = 415
    code = "not-supported"


class Invalid(AllianceError):
    """The content is well-formed but breaks a rule (FHIR validation, a domain invariant)."""

    status = 422
    code = "invariant"


class Unavailable(AllianceError):
    """A backing service (database, blob store, audit trail) cannot do its part now."""

    status = 503
    code = "transient"
