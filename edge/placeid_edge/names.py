"""Place names in the reader's language: a catalog entry's ``name`` is its English (default) name, and its
``names`` (``{"en": "63 Building", "ko": "63빌딩"}``) may add others. The first preferred language (``?lang=``,
``Accept-Language``, the browser's) that is English or that ``names`` has decides; with none, English. The page does
the same in JavaScript (placeid/data/web/page.js)."""

from __future__ import annotations

import re
from collections.abc import Sequence

FALLBACK = "en"
#: A language tag as clients send it: ``ko``, ``en-GB``, ``zh-Hant-TW``; anything else is ignored.
LANGUAGE_TAG = re.compile(r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8}){0,3}$")


def primary(tag: str) -> str:
    """``ko-KR`` -> ``ko``."""
    return tag.split("-", 1)[0].lower()


def local_name(entry: dict, preferred: Sequence[str]) -> str:
    """An entry's (place or nearby site) name in the first preferred language it has; English is its ``name``."""
    names = entry.get("names") or {}
    have = {primary(tag): tag for tag in names}
    for tag in preferred:
        if primary(tag) == FALLBACK:
            break
        if primary(tag) in have:
            return names[have[primary(tag)]]
    return entry.get("name") or names.get(FALLBACK, "")


def localized(place: dict, preferred: Sequence[str]) -> dict:
    """A copy of a place (as answers carry it) with its name and its nearby sites' names in the reader's
    language."""
    copy = dict(place, name=local_name(place, preferred))
    if isinstance(place.get("nearby"), list):
        copy["nearby"] = [dict(site, name=local_name(site, preferred)) if isinstance(site, dict) else site
                          for site in place["nearby"]]
    return copy
