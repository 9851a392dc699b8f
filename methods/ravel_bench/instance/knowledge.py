"""Does a model's output state an entity's attribute value? Per-type answer checks.

Default rule (all types): normalize both strings (drop leading spaces and quotes, cut at the first
``"``, remove all whitespace, lower-case) and accept a prefix match in either direction; an empty
output or an empty ground truth is never correct. Whitespace is removed rather than only stripped
so that tokenizers that decode with spaces between tokens (``Europe / Copenhagen``) compare equal.

Overrides, per attribute (DESIGN.md section 3):

- city: Latitude/Longitude correct within ±2 on the integer part, sign ignored; Country "United
  States"/"United Kingdom" compare without a leading "the"; "South Korea" accepts "korea";
  Continent "North America" accepts "america"; Language "Mandarin" (also "Mandarin Chinese")
  accepts "chinese", and a comma-separated list of languages accepts any member; Timezone needs
  the whole IANA name (the output must start with it: "Asia" alone is not a timezone, though it
  prefixes "Asia/Tokyo").
- nobel_prize_winner: Award Year and Birth Year need the exact year: the output's first 4-digit
  number of its own ("3 May 1918" states 1918; "19180" states no year); Country of Birth uses
  the city Country rules; Field "Medicine" also accepts "physiology"; Gender "male" accepts
  he/him/his/man/male, "female" she/her/woman/female. Laureates with two prizes have
  comma-separated Award Years ("1980,1958") and Fields ("Physics,Chemistry"): any member is
  accepted.
- occupation and physical_object Category: plurals are ignored on both sides ("-s", and "-ies"
  for "-y": "factories" for "factory"; the release mixes "non-living thing" and "non-living
  things").
- physical_object Size: the release stores a unit (mm, cm, m, km) while templates ask for words;
  the unit itself or a size word mapped to it is accepted (mm: tiny, minuscule; cm: small,
  little, palm-sized; m: medium, large, big, tall; km: huge, enormous, gigantic, vast).
- verb Pronunciation: slashes are ignored.
"""

import re
from collections.abc import Callable

_NUMBER = re.compile(r"[-+−]?\d+")
_YEAR = re.compile(r"(?<!\d)\d{4}(?!\d)")  # a 4-digit number of its own
_SIZE_WORDS = {
    "mm": ("mm", "millimet", "tiny", "minuscule", "microscopic"),
    "cm": ("cm", "centimet", "small", "little", "palm", "hand"),
    "m": ("m", "met", "medium", "large", "big", "tall", "human"),
    "km": ("km", "kilomet", "huge", "enormous", "gigantic", "vast", "massive"),
}
_GENDER_WORDS = {
    "male": ("male", "he", "him", "his", "man", "men", "boy"),
    "female": ("female", "she", "her", "hers", "woman", "women", "girl"),
}


def normalize(text: str) -> str:
    """Normalize an answer: leading spaces/quotes dropped, cut at ``"``, no whitespace, lower."""
    text = text.lstrip(" \t\n'\"")
    text = text.split('"', 1)[0]
    return re.sub(r"\s+", "", text).strip("'").lower()


def prefix_match(output: str, truth: str) -> bool:
    """The default rule: normalized prefix match in either direction, both non-empty."""
    o, t = normalize(output), normalize(truth)
    return bool(o) and bool(t) and (o.startswith(t) or t.startswith(o))


def _first_number(text: str) -> int | None:
    match = _NUMBER.search(text.replace("−", "-"))
    return int(match.group()) if match else None


def _coordinate(output: str, truth: str) -> bool:
    o, t = _first_number(output), _first_number(truth)
    return o is not None and t is not None and abs(abs(o) - abs(t)) <= 2


def _members(truth: str) -> list[str]:
    """The values of a comma-separated ground truth ("Physics,Chemistry"), or the value itself."""
    return [m.strip() for m in truth.split(",") if m.strip()] or [truth]


def _year(output: str, truth: str) -> bool:
    match = _YEAR.search(output)  # the first year in the output ("3 May 1918": 1918)
    return match is not None and match.group() in _members(truth)


def _country(output: str, truth: str) -> bool:
    o = re.sub(r"^\s*the\s+", "", output.lstrip(" '\""), flags=re.IGNORECASE)
    t = re.sub(r"^\s*the\s+", "", truth, flags=re.IGNORECASE)
    if prefix_match(o, t):
        return True
    return normalize(t) == "southkorea" and normalize(o).startswith("korea")


def _continent(output: str, truth: str) -> bool:
    if prefix_match(output, truth):
        return True
    return normalize(truth) == "northamerica" and normalize(output).startswith("america")


def _language(output: str, truth: str) -> bool:
    for member in _members(truth):
        if prefix_match(output, member):
            return True
        if normalize(member).startswith("mandarin") and normalize(output).startswith("chinese"):
            return True
    return False


def _timezone(output: str, truth: str) -> bool:
    o, t = normalize(output), normalize(truth)
    return bool(t) and o.startswith(t)


def _field(output: str, truth: str) -> bool:
    for member in _members(truth):
        if prefix_match(output, member):
            return True
        if normalize(member) == "medicine" and normalize(output).startswith("physiology"):
            return True
    return False


def _gender(output: str, truth: str) -> bool:
    words = _GENDER_WORDS.get(normalize(truth))
    first = re.findall(r"[a-z]+", output.lower())
    return words is not None and bool(first) and first[0] in words


def _plural_insensitive(output: str, truth: str) -> bool:
    o, t = normalize(output), normalize(truth)
    if not o or not t:
        return False
    o, t = _singular(o), _singular(t)
    return o.startswith(t) or t.startswith(o)


def _singular(word: str) -> str:
    """``factories`` -> ``factory``, ``doctors`` -> ``doctor`` (normalized text)."""
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    return word.removesuffix("s")


def _size(output: str, truth: str) -> bool:
    words = _SIZE_WORDS.get(normalize(truth))
    first = re.findall(r"[a-z]+", output.lower())
    if words is None or not first:
        return False
    word = first[0]
    return word == words[0] or any(word.startswith(w) for w in words[1:])


def _pronunciation(output: str, truth: str) -> bool:
    return prefix_match(output.replace("/", ""), truth.replace("/", ""))


Checker = Callable[[str, str], bool]
_RULES: dict[tuple[str, str], Checker] = {
    ("city", "Latitude"): _coordinate,
    ("city", "Longitude"): _coordinate,
    ("city", "Country"): _country,
    ("city", "Continent"): _continent,
    ("city", "Language"): _language,
    ("city", "Timezone"): _timezone,
    ("nobel_prize_winner", "Award Year"): _year,
    ("nobel_prize_winner", "Birth Year"): _year,
    ("nobel_prize_winner", "Country of Birth"): _country,
    ("nobel_prize_winner", "Field"): _field,
    ("nobel_prize_winner", "Gender"): _gender,
    ("occupation", "Duty"): _plural_insensitive,
    ("occupation", "Industry"): _plural_insensitive,
    ("occupation", "Work Location"): _plural_insensitive,
    ("physical_object", "Category"): _plural_insensitive,
    ("physical_object", "Size"): _size,
    ("verb", "Pronunciation"): _pronunciation,
}


def answer_is_correct(entity_type: str, attribute: str, output: str, truth: str) -> bool:
    """Return whether ``output`` states ``truth`` for this entity type and attribute.

    Example:
        >>> answer_is_correct("city", "Latitude", " -35 degrees", "37")
        True
        >>> answer_is_correct("city", "Country", " the United States", "United States")
        True
        >>> answer_is_correct("city", "Language", " Catalan", "Spanish, Catalan")
        True
        >>> answer_is_correct("city", "Country", " Japan", "China")
        False
        >>> answer_is_correct("city", "Timezone", " Asia", "Asia/Tokyo")
        False
    """
    if not truth.strip():
        return False
    return _RULES.get((entity_type, attribute), prefix_match)(output, truth)
