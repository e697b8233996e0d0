"""The place catalog in the Firestore emulator: the paper's 12 Seoul places and world30, with distance
queries checked against a brute-force great-circle scan."""

from __future__ import annotations

import json
import random

import pytest

from placeid.catalog import (
    bundled_catalog_path,
    geohash_cover,
    list_places,
    load_catalog,
    places_within,
    read_catalog,
    sites_within,
)
from placeid_edge.errors import BadRequest
from placeid_edge.geo import haversine_km

PAPER_TABLE_2 = ["63-building", "seoul-city-hall", "yi-sun-shin-statue", "king-sejong-statue", "geunjeongjeon",
                 "olympic-park", "lotte-world-tower", "myeongdong-cathedral", "namsan-tower", "seokchon-lake",
                 "seodaemun-prison", "seoul-station"]


def test_seoul_catalog_in_paper_order_with_names_and_sites(db):
    places = read_catalog(bundled_catalog_path())
    assert load_catalog(db, places) == 12
    stored = list_places(db)
    assert [p["place_id"] for p in stored] == PAPER_TABLE_2
    for place in stored:
        assert place["names"]["en"] and place["names"]["ko"] and place["address"] and place["category"]
        assert 37.4 < place["location"].latitude < 37.7 and 126.8 < place["location"].longitude < 127.2
        assert len(place["nearby"]) >= 3
        assert {s["kind"] for s in place["nearby"]} <= {"attraction", "restaurant", "lodging"}
        assert all(s["distance_km"] < 3 for s in place["nearby"])
    kinds = {s["kind"] for p in stored for s in p["nearby"]}
    assert kinds == {"attraction", "restaurant", "lodging"}


def test_world30_catalog_loads_the_same_way(db, data_dir):
    path = data_dir / "world30" / "places.json"
    assert load_catalog(db, read_catalog(path)) == 30
    eiffel = db.collection("places").document("eiffel-tower").get().to_dict()
    assert eiffel["city"] == "Paris" and eiffel["geohash"].startswith("u09t")
    assert load_catalog(db, read_catalog(path)) == 30  # idempotent
    assert len(list(db.collection("places").stream())) == 30


def test_distance_queries_match_brute_force(catalog):
    db = catalog
    all_sites = list(db.collection("sites").stream())
    rng = random.Random(7)
    queries = [(37.5663, 126.9779, 0.5), (37.5126, 127.1025, 1.0), (37.55, 126.98, 3.0), (48.8584, 2.2945, 2.0)]
    queries += [(rng.uniform(37.50, 37.58), rng.uniform(126.93, 127.13), rng.uniform(0.2, 4)) for _ in range(6)]
    for lat, lng, radius in queries:
        hits = sites_within(db, lat, lng, radius)
        expected = {s.id for s in all_sites
                    if haversine_km(lat, lng, s.get("location").latitude, s.get("location").longitude) <= radius}
        assert {h.id for h in hits} == expected, (lat, lng, radius)
        assert [h.distance_km for h in hits] == sorted(h.distance_km for h in hits)
    restaurants = sites_within(db, 37.5663, 126.9779, 2.0, kind="restaurant")
    assert restaurants and all(h.data["kind"] == "restaurant" for h in restaurants)
    nearest = places_within(db, 48.8584, 2.2945, 5)
    assert nearest[0].id == "eiffel-tower" and nearest[0].distance_km < 0.1


def test_bad_catalog_input_is_a_clear_error(db, scratch_dir):
    bad = scratch_dir / "bad.json"
    bad.write_text(json.dumps([{"place_id": "Bad Id", "name": "x", "location": {"lat": 0, "lng": 0}}]))
    with pytest.raises(BadRequest, match="invalid place_id"):
        load_catalog(db, read_catalog(bad))
    bad.write_text(json.dumps([{"place_id": "inbox", "name": "x", "location": {"lat": 0, "lng": 0}}]))
    with pytest.raises(BadRequest, match="holds unlabelled uploads"):
        load_catalog(db, read_catalog(bad))
    bad.write_text(json.dumps([{"place_id": "ok", "name": "x", "location": {"lat": 91, "lng": 0}}]))
    with pytest.raises(BadRequest, match="invalid coordinates"):
        load_catalog(db, read_catalog(bad))
    with pytest.raises(BadRequest):
        sites_within(db, 37.5, 127.0, 1.0, kind="casino")
    with pytest.raises(BadRequest):
        geohash_cover(37.5, 127.0, 0)


def test_nearby_sites_are_listed_nearest_first(catalog):
    places = list_places(catalog)
    assert len(places) == 42
    for place in places:
        distances = [site["distance_km"] for site in place["nearby"]]
        assert distances == sorted(distances), place["place_id"]


def test_a_site_near_several_places_is_one_document_linked_to_them(catalog):
    """Four Seasons Hotel Seoul is near three of the paper's places: one document, linked to all three, listed
    once by a distance query around Seoul City Hall; each place still lists it with its own distance."""
    db = catalog
    hotels = [s for s in db.collection("sites").stream() if s.get("name") == "Four Seasons Hotel Seoul"]
    assert len(hotels) == 1
    assert set(hotels[0].get("place_ids")) == {"yi-sun-shin-statue", "king-sejong-statue", "geunjeongjeon"}
    hits = [h for h in sites_within(db, 37.5663, 126.9779, 1.0) if h.data["name"] == "Four Seasons Hotel Seoul"]
    assert len(hits) == 1
    distances = {p.id: next(s["distance_km"] for s in p.get("nearby") if s["name"] == "Four Seasons Hotel Seoul")
                 for p in db.collection("places").stream() if p.id in hotels[0].get("place_ids")}
    assert len(distances) == 3 and len(set(distances.values())) > 1
    names = [s.get("name") for s in db.collection("sites").stream()]
    assert len(names) == len(set(names))  # no real site stored twice (world30's Livraria Lello too)
