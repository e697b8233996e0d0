"""Domain errors shared by every part of placeid. Each carries the HTTP status a request handler answers with."""

from __future__ import annotations


class PlaceidError(Exception):
    """Base class; ``http_status`` is what an HTTP adapter returns for it."""

    http_status = 500
    code = "internal"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def to_json(self) -> dict:
        return {"error": {"code": self.code, "message": self.message, "status": self.http_status}}


class BadRequest(PlaceidError):
    http_status = 400
    code = "bad_request"


class NotFound(PlaceidError):
    http_status = 404
    code = "not_found"


class TooLarge(PlaceidError):
    http_status = 413
    code = "too_large"


class UnsupportedMediaType(PlaceidError):
    http_status = 415
    code = "unsupported_media_type"


class InvalidImage(PlaceidError):
    """Input that is not a usable image: corrupt, truncated, a bomb, absurd dimensions."""

    http_status = 422
    code = "invalid_image"


class TransientError(PlaceidError):
    """Infrastructure fault worth retrying (the platform redelivers the event)."""

    http_status = 503
    code = "unavailable"


class ModelUnavailable(PlaceidError):
    """No model to answer with yet (nothing promoted, or the bundle could not be fetched)."""

    http_status = 503
    code = "model_unavailable"


class InvalidBundle(PlaceidError):
    """A model bundle that is incomplete, altered (sha256 mismatch) or built for other preprocessing."""

    http_status = 500
    code = "invalid_bundle"
