"""Place names in the reader's language (placeid_edge.names), on the bundled Seoul catalog, which has Korean names."""

from __future__ import annotations

import json

from placeid.catalog import bundled_catalog_path
from placeid_edge.names import local_name, localized


def seoul(place_id: str) -> dict:
    return next(p for p in json.loads(bundled_catalog_path().read_text()) if p["place_id"] == place_id)


def test_the_first_preferred_language_the_catalog_has_wins_and_english_is_the_name():
    building = seoul("63-building")
    assert local_name(building, ["ko-KR", "en"]) == "63빌딩"
    assert local_name(building, ["fr", "ko"]) == "63빌딩"  # no French: the next preference
    assert local_name(building, ["en-US", "ko"]) == "63 Building"  # English first: the entry's own name
    assert local_name(building, ["fr"]) == local_name(building, []) == "63 Building"
    renamed = dict(building, name="Renamed")  # the catalog's name is the English one, whatever names.en says
    assert local_name(renamed, ["en"]) == local_name(renamed, []) == "Renamed"
    assert local_name({"name": "No names"}, ["ko"]) == "No names"


def test_a_place_and_its_nearby_sites_are_localized_together():
    building = seoul("63-building")
    korean = localized(building, ["ko"])
    assert korean["name"] == "63빌딩" and building["name"] == "63 Building"  # a copy
    assert [site["name"] for site in korean["nearby"]] == [site["names"]["ko"] for site in building["nearby"]]
    assert localized(building, ["en"])["nearby"] == building["nearby"]


def test_the_readers_languages_come_from_lang_then_accept_language_and_hostile_tags_go_nowhere():
    import flask
    import pytest

    from placeid.predict_http import PredictService
    from placeid_edge.errors import BadRequest

    app = flask.Flask("names")
    header = {"Accept-Language": "<script>, en-GB;q=0.8, ko;q=0.9, ../../etc;q=0.7, x;q=abc"}
    with app.test_request_context("/?lang=ko-KR", headers=header):
        assert PredictService._languages(flask.request) == ["ko-KR", "ko", "en-GB"]  # best first; junk ignored
    for hostile in ("<script>", "k" * 5000, "ko/../en", ""):
        with app.test_request_context("/", query_string={"lang": hostile}):
            with pytest.raises(BadRequest) as refused:
                PredictService._languages(flask.request)
            assert refused.value.http_status == 400 and len(refused.value.message) < 120
