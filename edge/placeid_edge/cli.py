"""``placeid-edge``: recognise places in photos offline, with a model bundle on disk."""

from __future__ import annotations

import argparse
import json
import os
import sys

from placeid_edge.bundle import Bundle, Prediction
from placeid_edge.errors import PlaceidError

#: Where the CLI looks for a bundle (folder or .zip) when ``--bundle`` is not given.
BUNDLE_ENV = "PLACEID_BUNDLE"


def _format(photo: str, prediction: Prediction) -> str:
    lines = []
    if prediction.unknown:
        lines.append(f"{photo}: unknown place (no known landmark; {prediction.rejection['rule']} "
                     f"{prediction.rejection['score']:.3f} < {prediction.rejection['threshold']:.3f})")
    else:
        place = prediction.place
        where = ", ".join(part for part in (place.get("city"), place.get("country")) if part)
        location = place.get("location") or {}
        lines.append(f"{photo}: {place['name']}" + (f" ({where})" if where else "") +
                     f"  p={place['probability']:.3f}" +
                     (f"  at {location['lat']:.5f}, {location['lng']:.5f}" if location else ""))
        if place.get("map_url"):
            lines.append(f"  map     {place['map_url']}")
        for site in place.get("nearby", [])[:5]:
            lines.append(f"  nearby  {site.get('kind', ''):<10} {site['name']}"
                         + (f"  {site['distance_km']:.2f} km" if site.get("distance_km") is not None else ""))
    lines.append("  top     " + "   ".join(f"{c['name']} {c['probability']:.3f}" for c in prediction.top_k))
    if prediction.gps:
        nearest = ", ".join(f"{p['name']} {p['distance_km']:.1f} km" for p in prediction.gps["nearest_places"])
        lines.append(f"  GPS     {prediction.gps['lat']:.5f}, {prediction.gps['lng']:.5f} (EXIF); nearest known: "
                     f"{nearest}")
    lines.append(f"  model   {prediction.model_version}  {prediction.timing_ms['total']:.1f} ms")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="placeid-edge", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    predict = commands.add_parser("predict", help="which place each photo shows")
    predict.add_argument("photos", nargs="+", metavar="PHOTO")
    predict.add_argument("--bundle", default=os.environ.get(BUNDLE_ENV),
                         help=f"model bundle folder or .zip (default: ${BUNDLE_ENV})")
    predict.add_argument("--json", action="store_true", help="one JSON document per photo, one per line")
    predict.add_argument("--top-k", type=int, default=3)
    args = parser.parse_args(argv)

    if not args.bundle:
        parser.error(f"no bundle: pass --bundle DIR|ZIP or set {BUNDLE_ENV}")
    if args.top_k < 1:
        parser.error("--top-k must be at least 1")
    try:
        bundle = Bundle.load(args.bundle)
    except PlaceidError as exc:
        print(f"placeid-edge: {exc.message}", file=sys.stderr)
        return 2
    failed = 0
    for photo in args.photos:
        try:
            prediction = bundle.predict(photo, top_k=args.top_k)
        except (PlaceidError, OSError) as exc:
            failed += 1
            error = exc.to_json() if isinstance(exc, PlaceidError) else {"error": {"code": "io", "message": str(exc)}}
            print(json.dumps({"photo": photo, **error}) if args.json else f"{photo}: error: "
                  f"{error['error']['message']}", file=None if args.json else sys.stderr)
            continue
        print(json.dumps({"photo": photo, **prediction.to_json()}, ensure_ascii=False) if args.json
              else _format(photo, prediction))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
