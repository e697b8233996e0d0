"""Cloud Function (2nd gen, HTTPS) answering which place a photo shows.

A thin adapter: the routes, request parsing and responses are ``placeid.predict_http``; inference is the
edge package (``placeid_edge``: TFLite, no TensorFlow); the model is the bundle the registry's serving pointer
names, re-checked every PLACEID_MODEL_REFRESH_S seconds."""

from __future__ import annotations

import flask
import functions_framework

from placeid.predict_http import service


@functions_framework.http
def predict(request: flask.Request) -> flask.Response:
    """Route one HTTP request (see placeid/predict_http.py for the API)."""
    return service().handle(request)
