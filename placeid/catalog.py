"""The place catalog in Firestore (``places``, ``sites``) and distance queries over geohashes."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import pygeohash
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from placeid_edge.errors import BadRequest
from placeid_edge.geo import haversine_km
from placeid.store import PLACES, SITES

GEOHASH_PRECISION = 9  # ~5 m cells: fine enough for any radius a user asks for
SITE_KINDS = ("attraction", "restaurant", "lodging")
#: What a place id looks like: also a path segment (raw/<place_id>/) and a Firestore document id.
PLACE_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
#: The raw/ folder of unlabelled uploads (raw/inbox/<file>: the serving model labels them): never a place id.
INBOX = "inbox"


def _check_point(lat: float, lng: float) -> None:
    if not (-90 <= lat <= 90 and -180 <= lng <= 180):
        raise BadRequest(f"invalid coordinates: lat={lat}, lng={lng}")


def _cell_size_km(precision: int, lat: float) -> tuple[float, float]:
    lat_bits = (5 * precision) // 2
    lng_bits = 5 * precision - lat_bits
    height = 180 / 2**lat_bits * 111.32
    width = 360 / 2**lng_bits * 111.32 * max(math.cos(math.radians(lat)), 0.01)
    return height, width


def geohash_cover(lat: float, lng: float, radius_km: float) -> list[str]:
    """Geohash prefixes whose cells together cover the circle: the centre cell and its 8 neighbours,
    at the finest precision whose cells are at least ``radius_km`` on each side."""
    _check_point(lat, lng)
    if radius_km <= 0:
        raise BadRequest("radius must be positive")
    precision = 1
    for candidate in range(GEOHASH_PRECISION, 0, -1):
        if min(_cell_size_km(candidate, lat)) >= radius_km:
            precision = candidate
            break
    if precision == 1 and min(_cell_size_km(1, lat)) < radius_km:
        return [""]  # the circle is larger than a top-level cell: every geohash qualifies
    height_km, width_km = _cell_size_km(precision, lat)
    dlat, dlng = height_km / 111.32, width_km / (111.32 * max(math.cos(math.radians(lat)), 0.01))
    cells = set()
    for i in (-1, 0, 1):
        for j in (-1, 0, 1):
            cell_lat = min(max(lat + i * dlat, -89.999999), 89.999999)
            cell_lng = (lng + j * dlng + 180) % 360 - 180
            cells.add(pygeohash.encode(cell_lat, cell_lng, precision=precision))
    return sorted(cells)


@dataclass(frozen=True)
class NearbyHit:
    """A document found by a distance query, with its distance from the query point."""

    id: str
    distance_km: float
    data: dict


def within(db: firestore.Client, collection: str, lat: float, lng: float, radius_km: float,
           kind: str | None = None) -> list[NearbyHit]:
    """Documents of ``collection`` (with ``geohash`` and ``location``) within ``radius_km``, nearest first.

    One range query per covering geohash prefix, then an exact great-circle filter."""
    hits: dict[str, NearbyHit] = {}
    for prefix in geohash_cover(lat, lng, radius_km):
        query = db.collection(collection)
        if kind:  # composite index (kind, geohash): placeid/store.py COMPOSITE_INDEXES
            query = query.where(filter=FieldFilter("kind", "==", kind))
        query = query.order_by("geohash")
        if prefix:
            query = query.start_at([prefix]).end_at([prefix + "~"])
        for snap in query.stream():
            data = snap.to_dict()
            loc = data["location"]
            distance = haversine_km(lat, lng, loc.latitude, loc.longitude)
            if distance <= radius_km:
                hits[snap.id] = NearbyHit(snap.id, round(distance, 4), data)
    return sorted(hits.values(), key=lambda hit: hit.distance_km)


def places_within(db: firestore.Client, lat: float, lng: float, radius_km: float) -> list[NearbyHit]:
    """Known places within ``radius_km`` of a point, nearest first."""
    return within(db, PLACES, lat, lng, radius_km)


def sites_within(db: firestore.Client, lat: float, lng: float, radius_km: float,
                 kind: str | None = None) -> list[NearbyHit]:
    """Nearby sites (attractions, restaurants, lodging) within ``radius_km`` of a point, nearest first."""
    if kind is not None and kind not in SITE_KINDS:
        raise BadRequest(f"unknown site kind {kind!r}; expected one of {', '.join(SITE_KINDS)}")
    return within(db, SITES, lat, lng, radius_km, kind)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60] or "site"


def _geo(location: dict) -> tuple[firestore.GeoPoint, str]:
    lat, lng = float(location["lat"]), float(location["lng"])
    _check_point(lat, lng)
    return firestore.GeoPoint(lat, lng), pygeohash.encode(lat, lng, precision=GEOHASH_PRECISION)


def site_id(site: dict) -> str:
    """A real site's one document id, whichever places list it: its name and where it is (a geohash cell of about
    150 m), e.g. ``four-seasons-hotel-seoul--wydm9qy``."""
    return f"{_slug(site['name'])}--{site['geohash'][:7]}"


def normalize_place(raw: dict, order: int) -> tuple[dict, list[tuple[str, dict]]]:
    """Validate one catalog entry; returns the ``places`` document (its ``nearby`` list: each site with its
    distance from this place) and its sites as (site id, entry) pairs."""
    place_id = raw.get("place_id", "")
    if not PLACE_ID.match(place_id):
        raise BadRequest(f"invalid place_id {place_id!r}: lowercase letters, digits and '-' only")
    if place_id == INBOX:
        raise BadRequest(f"{INBOX!r} cannot be a place id: raw/{INBOX}/ holds unlabelled uploads")
    if "name" not in raw or "location" not in raw:
        raise BadRequest(f"place {place_id!r} needs a name and a location")
    point, geohash = _geo(raw["location"])
    nearby, sites = [], []
    for item in raw.get("nearby", []):
        kind = item.get("kind", "attraction")
        if kind not in SITE_KINDS:
            raise BadRequest(f"place {place_id!r}: nearby {item.get('name')!r} has unknown kind {kind!r}")
        site_point, site_hash = _geo(item["location"])
        site = {
            "name": item["name"],
            "names": item.get("names", {"en": item["name"]}),
            "kind": kind,
            "location": site_point,
            "geohash": site_hash,
            "place_id": place_id,
            "distance_km": round(haversine_km(point.latitude, point.longitude,
                                              site_point.latitude, site_point.longitude), 3),
        }
        nearby.append(site)
        sites.append((site_id(site), site))
    nearby.sort(key=lambda site: site["distance_km"])  # nearest first, as answers list them
    place = {
        "place_id": place_id,
        "order": int(raw.get("paper_index", order)),
        "name": raw["name"],
        "names": raw.get("names", {"en": raw["name"]}),
        "city": raw.get("city"),
        "country": raw.get("country"),
        "address": raw.get("address"),
        "category": raw.get("category"),
        "location": point,
        "geohash": geohash,
        "nearby": nearby,
    }
    return place, sites


def read_catalog(path: Path | str) -> list[dict]:
    """Read a catalog JSON file: a list of places (or ``{"places": [...]}``)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    places = data["places"] if isinstance(data, dict) else data
    if not isinstance(places, list):
        raise BadRequest(f"{path}: expected a list of places")
    return places


def bundled_catalog_path(name: str = "seoul12.json") -> Path:
    """Path of a catalog shipped with the library (the paper's 12 Seoul places)."""
    return Path(str(resources.files("placeid") / "data" / name))


def load_catalog(db: firestore.Client, places: list[dict]) -> int:
    """Upsert places and their nearby sites; re-running it is harmless. Returns the number of places. A site
    listed by several places is one ``sites`` document whose ``place_ids`` names them all."""
    normalized = [normalize_place(raw, order) for order, raw in enumerate(places)]
    batch, pending = db.batch(), 0
    for place, sites in normalized:
        writes = [(db.collection(PLACES).document(place["place_id"]), place, False)]
        for key, site in sites:
            shared = {k: v for k, v in site.items() if k not in ("place_id", "distance_km")}  # per place: not here
            writes.append((db.collection(SITES).document(key),
                           dict(shared, place_ids=firestore.ArrayUnion([place["place_id"]])), True))
        for ref, doc, merge in writes:
            batch.set(ref, doc, merge=merge)
            pending += 1
            if pending >= 400:
                batch.commit()
                batch, pending = db.batch(), 0
    if pending:
        batch.commit()
    return len(normalized)


def get_place(db: firestore.Client, place_id: str) -> dict | None:
    """One place document, or None."""
    snap = db.collection(PLACES).document(place_id).get()
    return snap.to_dict() if snap.exists else None


def list_places(db: firestore.Client) -> list[dict]:
    """All places in catalog order."""
    return [snap.to_dict() for snap in db.collection(PLACES).order_by("order").stream()]



def to_json(document: dict) -> dict:
    """A place or site document with GeoPoints as ``{"lat", "lng"}``: JSON for bundles and responses."""
    def convert(value):
        if isinstance(value, firestore.GeoPoint):
            return {"lat": value.latitude, "lng": value.longitude}
        if isinstance(value, dict):
            return {k: convert(v) for k, v in value.items()}
        if isinstance(value, list):
            return [convert(v) for v in value]
        return value

    return convert(document)


def catalog_snapshot(places: list[dict]) -> list[dict]:
    """JSON snapshot of catalog entries (raw catalog-file dicts), as stored in Firestore."""
    return [to_json(normalize_place(raw, order)[0]) for order, raw in enumerate(places)]
