"""Distances on the globe and the GPS position an image's EXIF may carry."""

from __future__ import annotations

import math

from PIL import Image

EARTH_RADIUS_KM = 6371.0088
_GPS_IFD = 0x8825
_GPS_LATITUDE_REF, _GPS_LATITUDE, _GPS_LONGITUDE_REF, _GPS_LONGITUDE = 1, 2, 3, 4


def haversine_km(lat1: float, lng1: float, lat2: float, lng2: float) -> float:
    """Great-circle distance in kilometres."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lng2 - lng1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(math.sqrt(a))


def _degrees(dms, ref) -> float:
    degrees, minutes, seconds = (float(part) for part in dms)
    value = degrees + minutes / 60 + seconds / 3600
    ref = ref.decode() if isinstance(ref, bytes) else str(ref or "")
    return -value if ref.strip().upper() in ("S", "W") else value


def exif_gps(image: Image.Image) -> tuple[float, float] | None:
    """``(lat, lng)`` from the image's EXIF GPS block, or None when absent, partial or out of range."""
    try:
        gps = image.getexif().get_ifd(_GPS_IFD)
        lat = _degrees(gps[_GPS_LATITUDE], gps.get(_GPS_LATITUDE_REF))
        lng = _degrees(gps[_GPS_LONGITUDE], gps.get(_GPS_LONGITUDE_REF))
    except Exception:  # noqa: BLE001 - missing or malformed GPS tags simply mean "no position"
        return None
    if not (-90 <= lat <= 90 and -180 <= lng <= 180) or math.isnan(lat) or math.isnan(lng):
        return None
    return lat, lng
