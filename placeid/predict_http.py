"""The predict function's HTTP surface: placeid's JSON API, TensorFlow Serving's REST shape, and a small page.

Routes: ``POST /`` (multipart ``image`` or a raw ``image/*`` body), ``POST /v1/models/placeid:predict``
(``{"instances": [{"b64": ...}, ...]}``), ``GET /v1/models/placeid`` (status + metadata),
``GET /v1/models/placeid/metadata``, ``GET /`` (HTML). Every error is JSON with the status its type carries.
Place names follow ``?lang=`` or ``Accept-Language`` where the catalog has them, else English.

The page's offline mode: ``GET /v1/models/placeid/bundle`` (what the browser needs to answer as the served bundle
does), ``GET /v1/models/placeid/bundle/<file>?v=<version>`` (the bundle's files, checked by the browser against the
manifest's sha256), ``/sw.js`` and ``/assets/...`` (the page's scripts and LiteRT.js, placeid.web_assets).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import logging
import re
import threading
import time
from importlib import resources

import flask
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from placeid.config import Settings
from placeid.logs import get_logger, log
from placeid.serving import ModelCache, PlaceDirectory
from placeid.registry import Registry
from placeid.web_assets import static_files
from placeid_edge.errors import BadRequest, NotFound, PlaceidError, TooLarge, UnsupportedMediaType
from placeid_edge.names import LANGUAGE_TAG, local_name, localized
from placeid_edge.imaging import body_budget, configure_decode_budget
from placeid_edge.preprocess import budget_bytes

logger = get_logger("placeid.predict")
MODEL_NAME = "placeid"
MODEL_PATH = f"/v1/models/{MODEL_NAME}"
BUNDLE_PATH = f"{MODEL_PATH}/bundle"
RAW_TYPES = ("image/", "application/octet-stream")
#: A photo upload has one file field; a multipart body with more parts than this is refused.
MAX_FORM_PARTS = 8
#: Bytes a request body may hold in memory per byte sent: a multipart file is spooled (to /tmp, which is memory
#: on Cloud Functions) and then read; a JSON body and its parsed text; base64 images decode to 3/4 of their text.
BODY_COPIES = 2
#: Request bodies of this many of the largest allowed size may be held at once (PLACEID_BODY_BUDGET_MB unless set):
#: one 10 MB body, or several photos of a few MB; others wait for room (PLACEID_DECODE_WAIT_S, then 503).
BODIES_IN_FLIGHT = 1
#: On every answer: no MIME sniffing, no framing, no referrer.
SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer"}


class MethodNotAllowed(PlaceidError):
    http_status = 405
    code = "method_not_allowed"


class VersionChanged(PlaceidError):
    """A bundle file asked for a version that is no longer served (a promote happened): fetch the description
    again."""

    http_status = 409
    code = "version_changed"


def _page() -> str:
    return (resources.files("placeid") / "data" / "predict.html").read_text(encoding="utf-8")


def page_csp(page: str) -> str:
    """A page's Content-Security-Policy: its inline scripts (an import map included) and styles by hash, scripts
    from itself when it loads any (then WebAssembly may compile too: LiteRT.js), requests to itself, images from
    itself or the chosen photo (blob:), the OpenStreetMap embed as its only frame when it loads scripts (the
    predict page's map), nothing else, and no framing of the page."""
    def hashes(tag: str, attributes: str = "") -> list[str]:
        blocks = re.findall(rf"<{tag}{attributes}>(.*?)</{tag}>", page, re.S)
        return [f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'" for b in blocks]

    loads_scripts = re.search(r"<script[^>]*\ssrc=", page) is not None
    scripts = (["'self'", "'wasm-unsafe-eval'"] if loads_scripts else []) + hashes("script") + hashes(
        "script", ' type="importmap"')
    frames = "worker-src 'self'; frame-src https://www.openstreetmap.org; " if loads_scripts else ""
    return (f"default-src 'none'; script-src {' '.join(scripts)}; style-src {' '.join(hashes('style'))}; "
            f"img-src 'self' blob: data:; connect-src 'self'; {frames}base-uri 'none'; form-action 'self'; "
            "frame-ancestors 'none'")


class PredictService:
    """Answers predict requests. One per process; thread-safe."""

    def __init__(self, settings: Settings, models: ModelCache, places: PlaceDirectory):
        self.settings = settings
        configure_decode_budget(settings.decode_budget_mb, settings.decode_wait_s,  # shared by every request
                                auto_bytes=budget_bytes(settings.max_pixels), body_mb=settings.body_budget_mb,
                                body_auto_bytes=BODIES_IN_FLIGHT * BODY_COPIES * settings.max_request_bytes)
        self.models = models
        self.places = places
        self._page = _page()
        self._page_csp = page_csp(self._page)
        self._static = static_files()

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> "PredictService":
        settings = settings or Settings.from_env()
        registry = Registry.from_settings(settings)
        return cls(settings, ModelCache(settings, registry), PlaceDirectory(registry.db, settings.places_ttl_s))

    # -- routing ---------------------------------------------------------------------------------------------
    def handle(self, request: flask.Request) -> flask.Response:
        """Route one request; never raises."""
        started = time.perf_counter()
        fields: dict = {}
        try:
            if request.method == "OPTIONS":
                response = flask.Response(status=204)
            else:
                with body_budget.reserve(self._body_estimate(request), "the request body"):
                    response = self._route(request, fields)
        except PlaceidError as exc:
            response = self._json(exc.to_json(), exc.http_status)
            fields["error"] = exc.message
        except RequestEntityTooLarge:
            response = self._json(TooLarge(self._too_large_message()).to_json(), 413)
        except HTTPException as exc:  # malformed multipart and the like
            error = PlaceidError(exc.description or exc.name)
            error.http_status, error.code = exc.code or 400, "bad_request"
            response = self._json(error.to_json(), error.http_status)
        except Exception as exc:  # noqa: BLE001 - a stack trace never reaches the client
            logger.exception("predict failed", extra={"fields": {"path": request.path}})
            response = self._json({"error": {"code": "internal", "message": "internal error", "status": 500}}, 500)
            fields["error"] = repr(exc)
        request.max_content_length = None
        if response.status_code in (413, 503):
            # The rest of a refused body (too large, or no room to hold it) is never read: functions-framework
            # reads what is left of every body after the response (get_data), so it gets an empty stream, and
            # the connection is closed.
            request.__dict__["stream"] = io.BytesIO()
            response.headers["Connection"] = "close"
        response.headers.update(SECURITY_HEADERS)
        self._cors(request, response)
        log(logger, logging.INFO if response.status_code < 500 else logging.ERROR, "request",
            method=request.method, path=request.path, status=response.status_code,
            latency_ms=round((time.perf_counter() - started) * 1000, 2), **fields)
        return response

    def _route(self, request: flask.Request, fields: dict) -> flask.Response:
        path = request.path.rstrip("/") or "/"
        routes = {
            "/": {"GET": lambda: flask.Response(self._page, mimetype="text/html",
                                                headers={"Content-Security-Policy": self._page_csp}),
                  "POST": lambda: self._predict_one(request, fields)},
            MODEL_PATH: {"GET": lambda: self._json(self._status())},
            f"{MODEL_PATH}/metadata": {"GET": lambda: self._json(self._metadata())},
            f"{MODEL_PATH}:predict": {"POST": lambda: self._predict_instances(request, fields)},
            BUNDLE_PATH: {"GET": lambda: self._json(self._offline_description(), headers={"Cache-Control": "no-cache"})},
        }
        if path in self._static:
            routes[path] = {"GET": lambda: self._static_file(request, path)}
        elif path.startswith(f"{BUNDLE_PATH}/"):
            routes[path] = {"GET": lambda: self._bundle_file(request, path.removeprefix(f"{BUNDLE_PATH}/"))}
        methods = routes.get(path)
        if methods is None:
            raise NotFound(f"no route {request.path}; see GET / and {MODEL_PATH}")
        if request.method not in methods:
            raise MethodNotAllowed(f"{request.method} {path} is not supported (use {', '.join(methods)})")
        return methods[request.method]()

    # -- endpoints -------------------------------------------------------------------------------------------
    def _predict_one(self, request: flask.Request, fields: dict) -> flask.Response:
        image = self._image_from(request)
        languages = self._languages(request)
        bundle = self.models.bundle()
        prediction = bundle.predict(image, top_k=self._top_k(request), lookup=self.places.lookup)
        fields.update(model_version=bundle.version, images=1, unknown=prediction.unknown,
                      place_id=prediction.place["place_id"] if prediction.place else None,
                      inference_ms=prediction.timing_ms["total"])
        return self._json(_localized_answer(prediction.to_json(), bundle, languages))

    def _offline_description(self) -> dict:
        """The served bundle's description for the page (Bundle.offline_description), with what this service answers
        with that the bundle does not say: top-k, and the limits a photo must keep to (the page leaves the others to
        the service, which says why it refuses them)."""
        settings = self.settings
        return {**self.models.bundle().offline_description(), "top_k": settings.top_k,
                "limits": {"max_bytes": settings.max_request_bytes, "max_pixels": settings.max_pixels,
                           "min_side": settings.min_side, "max_aspect_ratio": settings.max_aspect_ratio}}

    def _static_file(self, request: flask.Request, path: str) -> flask.Response:
        """One of the page's fixed files (placeid.web_assets): gzipped when the file has a ``.gz`` twin and the
        client accepts gzip; revalidated by ETag on every use."""
        file, mimetype = self._static[path]
        if not file.is_file():
            raise NotFound(f"{path} is not installed here: the page's offline mode needs `python -m "
                           "placeid.web_assets` (make web) at build time")
        packed = file.with_name(f"{file.name}.gz")
        has_gzip = packed.is_file()
        gzipped = has_gzip and request.accept_encodings["gzip"] > 0
        response = flask.send_file(packed if gzipped else file, mimetype=mimetype, conditional=True, etag=True,
                                   max_age=0)
        if gzipped:
            response.headers["Content-Encoding"] = "gzip"
        if has_gzip:
            response.vary.add("Accept-Encoding")
        response.headers["Cache-Control"] = "no-cache"
        if path == "/sw.js":
            response.headers["Service-Worker-Allowed"] = "/"
        return response

    def _bundle_file(self, request: flask.Request, name: str) -> flask.Response:
        """A file of the served bundle for the page to keep: only the bundle's fixed part names, only for the
        version served now (``?v=``), immutable under that URL."""
        bundle = self.models.bundle()
        data = bundle.part_files.get(name)
        if data is None:
            raise NotFound(f"the served bundle has no file {name[:80]!r}; see GET {BUNDLE_PATH}")
        if request.args.get("v") != bundle.version:
            raise VersionChanged(f"model {(request.args.get('v') or '')[:80]!r} is no longer served (now "
                                 f"{bundle.version}); read GET {BUNDLE_PATH} again")
        mimetype = "application/json" if name.endswith(".json") else "application/octet-stream"
        return flask.Response(data, mimetype=mimetype, headers={
            "Cache-Control": "public, max-age=31536000, immutable",
            "ETag": f'"{(bundle.manifest.get("files") or {}).get(name, "")}"'})

    def _predict_instances(self, request: flask.Request, fields: dict) -> flask.Response:
        self._check_length(request)
        try:
            payload = json.loads(self._read_body(request))
        except (ValueError, RecursionError):  # malformed, not UTF-8, or nested deeper than any real request
            payload = None
        if not isinstance(payload, dict):
            raise BadRequest('expected a JSON body {"instances": [{"b64": "..."}]}')
        if payload.get("signature_name", "serving_default") != "serving_default":
            raise BadRequest(f"unknown signature {payload['signature_name']!r}; only serving_default exists")
        instances = payload.get("instances", payload.get("inputs"))
        if not isinstance(instances, list) or not instances:
            raise BadRequest('"instances" must be a non-empty list of {"b64": "..."} objects')
        if len(instances) > self.settings.max_batch:
            raise BadRequest(f"{len(instances)} instances in one request; at most {self.settings.max_batch}")
        images = [_decode_instance(instance, index) for index, instance in enumerate(instances)]
        bundle, top_k, languages = self.models.bundle(), self._top_k(request), self._languages(request)
        predictions = []
        for index, image in enumerate(images):
            try:
                prediction = bundle.predict(image, top_k=top_k, lookup=self.places.lookup)
            except PlaceidError as exc:
                exc.message = f"instances[{index}]: {exc.message}"
                raise
            body = _localized_answer(prediction.to_json(), bundle, languages)
            body["scores"] = body.pop("probabilities")
            body["classes"] = bundle.labels
            predictions.append(body)
        fields.update(model_version=bundle.version, images=len(images))
        return self._json({"predictions": predictions, "model_version": bundle.version})

    def _status(self) -> dict:
        bundle = self.models.bundle()
        return {"model_version_status": [{"version": bundle.version, "state": "AVAILABLE",
                                          "status": {"error_code": "OK", "error_message": ""}}],
                "metadata": bundle.metadata()}

    def _metadata(self) -> dict:
        bundle = self.models.bundle()
        size = bundle.input_size
        signature = {"inputs": {"images": {"dtype": "DT_UINT8", "tensor_shape": [-1, size, size, 3],
                                           "encoding": "JPEG/PNG/WebP/HEIC bytes as {'b64': ...}"}},
                     "outputs": {"scores": {"dtype": "DT_FLOAT", "tensor_shape": [-1, len(bundle.labels)]},
                                 "classes": {"dtype": "DT_STRING", "tensor_shape": [len(bundle.labels)]}},
                     "method_name": "tensorflow/serving/predict"}
        return {"model_spec": {"name": MODEL_NAME, "version": bundle.version, "signature_name": ""},
                "metadata": {"signature_def": {"signature_def": {"serving_default": signature}},
                             "placeid": bundle.metadata()}}

    # -- request parsing -------------------------------------------------------------------------------------
    def _too_large_message(self) -> str:
        return f"request body larger than the limit of {self.settings.max_request_bytes} bytes"

    def _body_estimate(self, request: flask.Request) -> int:
        """What the body may hold in memory, reserved before a byte of it is read and kept until the answer is
        made: BODY_COPIES x its declared length, or x the limit when it is sent chunked (a declared length above
        the limit is refused by _check_length without reading)."""
        if request.method != "POST":
            return 0
        declared = request.content_length
        if declared is not None and declared > self.settings.max_request_bytes:
            return 0
        return BODY_COPIES * (declared if declared is not None else self.settings.max_request_bytes)

    def _check_length(self, request: flask.Request) -> None:
        request.max_content_length = self.settings.max_request_bytes
        if request.content_length is not None and request.content_length > self.settings.max_request_bytes:
            raise TooLarge(self._too_large_message())

    def _image_from(self, request: flask.Request) -> bytes:
        self._check_length(request)
        mimetype = request.mimetype or ""
        if mimetype == "multipart/form-data":
            request.max_form_parts = MAX_FORM_PARTS
            try:
                upload = request.files.get("image")
            except RequestEntityTooLarge:
                if request.content_length is not None and request.content_length <= self.settings.max_request_bytes:
                    raise BadRequest(f"multipart body with more than {MAX_FORM_PARTS} parts; send one 'image' "
                                     "file field") from None
                raise
            if upload is None:
                raise BadRequest("multipart request without an 'image' file field")
            data = upload.read()
        elif mimetype.startswith(RAW_TYPES):
            data = self._read_body(request)
        else:
            raise UnsupportedMediaType(f"content type {mimetype or '(none)'} is not accepted: send "
                                       "multipart/form-data with an 'image' field, or a raw image/* body")
        if not data:
            raise BadRequest("empty image")
        return data

    def _read_body(self, request: flask.Request) -> bytes:
        """The raw body, never more than the limit: by its declared length, or in chunks when it is sent
        chunked (one big read would reserve the whole limit up front, per request)."""
        if request.content_length is not None:
            return request.get_data(cache=False)
        chunks, size = [], 0
        while chunk := request.stream.read(1 << 20):
            size += len(chunk)
            if size > self.settings.max_request_bytes:
                raise TooLarge(self._too_large_message())
            chunks.append(chunk)
        return b"".join(chunks)

    def _top_k(self, request: flask.Request) -> int:
        raw = request.args.get("top_k")
        if raw is None:
            return self.settings.top_k
        try:
            value = int(raw)
        except ValueError:
            raise BadRequest(f"top_k must be an integer, got {raw!r}") from None
        if not 1 <= value <= 100:
            raise BadRequest("top_k must be within 1..100")
        return value

    @staticmethod
    def _languages(request: flask.Request) -> list[str]:
        """The reader's languages, best first: ``?lang=`` (a language tag, else 400), then ``Accept-Language``."""
        preferred = []
        raw = request.args.get("lang")
        if raw is not None:
            if not LANGUAGE_TAG.match(raw):
                raise BadRequest(f"lang must be a language tag such as 'ko' or 'en-GB', got {raw[:40]!r}")
            preferred.append(raw)
        preferred += [tag for tag, _ in request.accept_languages if LANGUAGE_TAG.match(tag)]
        return preferred

    # -- responses -------------------------------------------------------------------------------------------
    @staticmethod
    def _json(body: dict, status: int = 200, headers: dict | None = None) -> flask.Response:
        return flask.Response(flask.json.dumps(body), status=status, mimetype="application/json", headers=headers)

    def _cors(self, request: flask.Request, response: flask.Response) -> None:
        origin = request.headers.get("Origin")
        allowed = self.settings.allowed_origins
        if not origin or not ("*" in allowed or origin in allowed):
            return
        response.headers["Access-Control-Allow-Origin"] = "*" if "*" in allowed else origin
        response.vary.add("Origin")
        if request.method == "OPTIONS":
            response.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
            response.headers["Access-Control-Allow-Headers"] = "Content-Type, Authorization"
            response.headers["Access-Control-Max-Age"] = "3600"


def _localized_answer(body: dict, bundle, languages: list[str]) -> dict:
    """An answer's place, nearby sites and candidates named in the reader's language (placeid_edge.names)."""
    if body.get("place"):
        body["place"] = localized(body["place"], languages)
    for candidate in body.get("top_k", []):
        entry = bundle.places.get(candidate["place_id"])
        if entry:
            candidate["name"] = local_name(entry, languages)
    return body


def _decode_instance(instance, index: int) -> bytes:
    """The image bytes of one TF-Serving instance: ``{"b64": ...}`` or ``{"<input>": {"b64": ...}}``."""
    if isinstance(instance, dict) and len(instance) == 1 and "b64" not in instance:
        instance = next(iter(instance.values()))
    if not isinstance(instance, dict) or not isinstance(instance.get("b64"), str):
        raise BadRequest(f'instances[{index}]: expected {{"b64": "<base64 image>"}}')
    text = instance["b64"]
    try:
        data = base64.b64decode(text, altchars=b"-_" if ("-" in text or "_" in text) else None, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"instances[{index}]: b64 is not valid base64") from None
    if not data:
        raise BadRequest(f"instances[{index}]: empty image")
    return data


_service: PredictService | None = None
_service_lock = threading.Lock()


def service() -> PredictService:
    """The process-wide service, made on first use (not at import: a cold start must not crash on a fault)."""
    global _service
    with _service_lock:
        if _service is None:
            _service = PredictService.from_settings()
        return _service
