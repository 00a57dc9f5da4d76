"""The one error hierarchy of cloudtaser.

Every room raises these (translating library errors at its boundary with ``raise ... from e``)
so callers decide on one question: retry (``TemporaryError``) or report (``PermanentError``).
Messages name the field, file or object at fault and never carry a secret value.
"""

from __future__ import annotations


class CloudtaserError(Exception):
    """Base of every error cloudtaser raises on purpose."""


class TemporaryError(CloudtaserError):
    """The same call may succeed later (network down, server busy): retry with backoff."""


class PermanentError(CloudtaserError):
    """Retrying will not help (bad input, permission denied): report and stop."""
