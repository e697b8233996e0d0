"""Place names in the reader's language: a catalog entry's ``names`` (``{"en": "63 Building", "ko": "63빌딩"}``)
picked by a list of preferred languages (``?lang=``, ``Accept-Language``, the browser's), falling back to English,
then to the entry's own ``name``. The page does the same in JavaScript (placeid/data/web/page.js)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

FALLBACK = "en"
#: A language tag as clients send it: ``ko``, ``en-GB``, ``zh-Hant-TW``; anything else is ignored.
LANGUAGE_TAG = re.compile(r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8}){0,3}$")


def primary(tag: str) -> str:
    """``ko-KR`` -> ``ko``."""
    return tag.split("-", 1)[0].lower()


def pick_language(available: Iterable[str], preferred: Sequence[str]) -> str | None:
    """The first of ``preferred`` (tags, best first) that ``available`` has, by primary subtag; else English when
    available; else None."""
    have = {primary(tag): tag for tag in available}
    for tag in [*preferred, FALLBACK]:
        if primary(tag) in have:
            return have[primary(tag)]
    return None


def local_name(entry: dict, preferred: Sequence[str]) -> str:
    """An entry's (place or nearby site) name in the first preferred language it has."""
    names = entry.get("names") or {}
    language = pick_language(names, preferred)
    return names[language] if language else entry.get("name", "")


def localized(place: dict, preferred: Sequence[str]) -> dict:
    """A copy of a place (as answers carry it) with its name and its nearby sites' names in the reader's
    language."""
    copy = dict(place, name=local_name(place, preferred))
    if isinstance(place.get("nearby"), list):
        copy["nearby"] = [dict(site, name=local_name(site, preferred)) if isinstance(site, dict) else site
                          for site in place["nearby"]]
    return copy
