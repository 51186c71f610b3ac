"""Error answers: every one is ``{"detail": message}`` and declared in the OpenAPI of the route that gives it."""
from __future__ import annotations

from fastapi import HTTPException

from . import schemas

ERROR_DESCRIPTIONS = {
    400: "The body is not valid JSON", 404: "Not found", 409: "Conflict with the task's or the server's state",
    413: "An image or the body is too large", 422: "A field is invalid: the message names it",
    500: "The model could not be loaded, or the generation failed"}


def error(status: int, message: str) -> HTTPException:
    return HTTPException(status_code=status, detail=message)


def error_responses(*codes: int) -> dict:
    """The error answers a route declares in the OpenAPI (``responses=``): all ``{"detail": ...}``."""
    return {code: {"model": schemas.ErrorResponse, "description": ERROR_DESCRIPTIONS[code]} for code in codes}
