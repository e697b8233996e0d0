"""The review page: an operator's local web page over :class:`placeid.review.Reviewer` (``placeid review serve``).

Routes: ``GET /`` (the page), ``GET /api/records`` (photos waiting for review, with the model's suggestion),
``GET /api/places`` (place ids and names, for relabelling), ``GET /api/records/<id>/thumbnail`` (a small JPEG of
the photo), ``POST /api/records/<id>/<action>`` with a JSON body (``apply``: do as the model suggested;
``accept``: ``{"place_id": optional}``; ``reject``: ``{"reason": ...}``). Every error is JSON with its status.

It binds to 127.0.0.1 and acts with the operator's credentials, so it trusts no other origin: a request must
name this server in ``Host`` (no DNS rebinding), and a change must be a JSON POST (a cross-site form cannot send
one without the browser asking first, and no CORS header is ever given)."""

from __future__ import annotations

import io
import re
from importlib import resources

import flask

from placeid.catalog import list_places
from placeid.logs import get_logger
from placeid.predict_http import SECURITY_HEADERS, page_csp
from placeid.review import REVIEWABLE, Reviewer
from placeid_edge.errors import BadRequest, NotFound, PlaceidError, UnsupportedMediaType

logger = get_logger("placeid.review_http")
IMAGE_ID = re.compile(r"^[0-9a-f]{32}$")
THUMBNAIL_SIDE = 256
#: The largest request body the page accepts (413 above it).
MAX_BODY_BYTES = 16 * 1024
#: What the page shows of a record.
FIELDS = ("image_id", "status", "place_id", "label_source", "reason", "duplicate_of", "file_name")


def _page() -> str:
    return (resources.files("placeid") / "data" / "review.html").read_text(encoding="utf-8")


def create_review_app(reviewer: Reviewer, allowed_hosts: set[str]) -> flask.Flask:
    """The review page's Flask app; ``allowed_hosts``: the ``host:port`` names it answers to."""
    app = flask.Flask("placeid.review")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES  # a change is a small JSON object: anything larger is refused
    page = _page()
    csp = page_csp(page)

    def record_view(record: dict) -> dict:
        vetting = record.get("vetting") or {}
        return {**{key: record.get(key) for key in FIELDS}, "suggestion": vetting.get("suggestion"),
                "top_k": vetting.get("top_k"), "model_version": vetting.get("model_version")}

    def image_id_of(value: str) -> str:
        if not IMAGE_ID.match(value):
            raise NotFound(f"no image {value[:40]!r}")
        return value

    def body() -> dict:
        if flask.request.mimetype != "application/json":
            raise UnsupportedMediaType("send changes as application/json")
        data = flask.request.get_json(silent=True)
        if not isinstance(data, dict):
            raise BadRequest("the body must be a JSON object")
        return data

    @app.before_request
    def check_host():
        if flask.request.host not in allowed_hosts:
            raise BadRequest(f"this server answers to {', '.join(sorted(allowed_hosts))} only")

    @app.get("/")
    def index():
        return flask.Response(page, mimetype="text/html", headers={"Content-Security-Policy": csp})

    @app.get("/api/records")
    def records():
        statuses = tuple(filter(None, flask.request.args.get("status", ",".join(REVIEWABLE)).split(",")))
        limit = flask.request.args.get("limit", "100")
        if not limit.isdigit():
            raise BadRequest("limit must be a whole number")
        return {"records": [record_view(r) for r in reviewer.list(statuses, min(int(limit), 500))]}

    @app.get("/api/places")
    def places():
        return {"places": [{"place_id": p["place_id"], "name": p.get("name", p["place_id"])}
                           for p in list_places(reviewer.db)]}

    @app.get("/api/records/<image_id>/thumbnail")
    def thumbnail(image_id: str):
        image = reviewer.image(reviewer.get(image_id_of(image_id)))
        image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
        out = io.BytesIO()
        image.save(out, "JPEG", quality=85)
        return flask.Response(out.getvalue(), mimetype="image/jpeg", headers={"Cache-Control": "private, max-age=300"})

    @app.post("/api/records/<image_id>/<action>")
    def act(image_id: str, action: str):
        image_id = image_id_of(image_id)
        data = body()
        if action == "apply":
            record = reviewer.apply_suggestion(image_id, str(data.get("note", "")))
        elif action == "accept":
            record = reviewer.accept(image_id, data.get("place_id") or None, str(data.get("note", "")))
        elif action == "reject":
            record = reviewer.reject(image_id, str(data.get("reason", "")).strip())
        else:
            raise NotFound(f"no action {action[:20]!r}: apply, accept or reject")
        return record_view(record)

    @app.errorhandler(PlaceidError)
    def placeid_error(exc: PlaceidError):
        return flask.Response(flask.json.dumps(exc.to_json()), exc.http_status, mimetype="application/json")

    @app.errorhandler(404)
    @app.errorhandler(405)
    @app.errorhandler(413)
    def http_error(exc):
        error = PlaceidError(exc.description or exc.name)
        error.http_status = exc.code
        error.code = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}[exc.code]
        return placeid_error(error)

    @app.errorhandler(Exception)
    def internal(exc: Exception):
        logger.exception("review request failed", extra={"fields": {"path": flask.request.path}})
        return flask.Response(flask.json.dumps({"error": {"code": "internal", "message": "internal error",
                                                          "status": 500}}), 500, mimetype="application/json")

    @app.after_request
    def headers(response: flask.Response):
        response.headers.update(SECURITY_HEADERS)
        return response

    return app
