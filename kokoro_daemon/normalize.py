"""Spell out what a phone agent writes as the words a caller should hear.

G2P front ends guess at digits and symbols, and on a phone line a misread
number is worse than silence, so every digit and money/percent/at/hash sign
becomes words before phonemization. Rules run in order, most specific first:
a phone number is read digit by digit before the range rule could turn its
dash into "to", and money is read before plain decimals.
"""
from __future__ import annotations

import re
from typing import Callable

from num2words import num2words

MONTHS = ("January", "February", "March", "April", "May", "June", "July",
          "August", "September", "October", "November", "December")
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def _name_pattern(names: tuple[str, ...]) -> str:
    """Full names and their usual short forms (Jan, Sept, Tues, Thurs), longest first."""
    forms = set(names) | {name[:3] for name in names} | {"Sept", "Tues", "Thur", "Thurs"}
    forms = {form for form in forms if any(name.startswith(form) for name in names)}
    return "|".join(sorted(forms, key=len, reverse=True))


def _full_name(short: str) -> str:
    return next(name for name in MONTHS + WEEKDAYS if name.startswith(short))


# Number words. num2words says "one hundred and five" and "one thousand, two
# hundred"; a US speaker says neither the "and" nor the pause.

def _us_style(words: str) -> str:
    return words.replace(" and ", " ").replace(",", "")


def _cardinal(n: int) -> str:
    return _us_style(num2words(n))


def _ordinal(n: int) -> str:
    return _us_style(num2words(n, to="ordinal"))


def _year(n: int) -> str:
    return _us_style(num2words(n, to="year")).replace("oh-", "oh ")


def _plural(words: str) -> str:
    """Decades: "nineteen ninety" -> "nineteen nineties", "twenty" -> "twenties"."""
    return words[:-1] + "ies" if words.endswith("y") else words + "s"


def _digits(digits: str) -> str:
    """Read digit by digit, the way people read codes and phone numbers back."""
    return " ".join(num2words(int(d)) for d in digits)


def _spell(code: str) -> str:
    """Digits as words, letters as capitals so G2P says the letter name."""
    return " ".join(_digits(c) if c.isdigit() else c.upper() for c in code)


def _number(text: str) -> str:
    """"1,250" -> cardinal; decimals read their digits one by one ("three point one four")."""
    whole, _, fraction = text.replace(",", "").partition(".")
    words = _cardinal(int(whole)) if whole else ""
    return f"{words} point {_digits(fraction)}".strip() if fraction else words


def _padded(match: re.Match, words: str) -> str:
    """Keep words apart from letters the digits were glued to ("5G" -> "five G")."""
    text, start, end = match.string, match.start(), match.end()
    before = " " if start > 0 and text[start - 1].isalpha() else ""
    after = " " if end < len(text) and text[end].isalpha() else ""
    return before + words + after


def _sentence_dot(match: re.Match) -> str:
    """An abbreviation's period that also ended the sentence must survive for prosody."""
    if match.group(0).endswith(".") and re.match(r"\s*$|\s+[A-Z]", match.string[match.end():]):
        return "."
    return ""


# URLs and e-mail addresses.

_SPOKEN_LABELS = {"com", "org", "net", "edu", "gov"}
_ADDRESS_SEPARATORS = {".": "dot", "/": "slash", "@": "at", "-": "dash", "_": "underscore", "+": "plus"}


def _say_label(label: str) -> str:
    """"com" stays a word; "www" and two-letter labels ("io", "uk") are spelled."""
    if label.lower() in _SPOKEN_LABELS:
        return label.lower()
    if label.lower() == "www" or (label.isalpha() and len(label) <= 2):
        return " ".join(label.upper())
    return re.sub(r"\d+", lambda m: f" {_digits(m.group())} ", label).strip()


def _say_address(match: re.Match) -> str:
    address = re.sub(r"^https?://", "", match.group(0), flags=re.I).rstrip("/")
    parts = re.split(r"([./@_+-])", address)
    return " ".join(_ADDRESS_SEPARATORS.get(part) or _say_label(part) for part in parts if part)


# Abbreviations.

def _opens_sentence(match: re.Match) -> bool:
    return re.search(r"(?:^|[.!?]\s+)$", match.string[:match.start()]) is not None


def _abbreviation(words: str, may_end_sentence: bool) -> Callable[[re.Match], str]:
    def say(match: re.Match) -> str:
        capitalize = match.group(0)[0].isupper() and _opens_sentence(match)
        spoken = words[0].upper() + words[1:] if capitalize else words
        return spoken + (_sentence_dot(match) if may_end_sentence else "")
    return say


_ABBREVIATIONS = [
    # (pattern, words, whether it can be the last word of a sentence)
    (r"\bMr\.?(?=\s+[A-Z])", "Mister", False),
    (r"\bMrs\.?(?=\s+[A-Z])", "Missus", False),
    (r"\bMs\.?(?=\s+[A-Z])", "Miz", False),
    (r"\bProf\.(?=\s+[A-Z])", "Professor", False),
    (r"\bJr\.", "Junior", True),
    (r"\bSr\.", "Senior", True),
    (r"\bAve\.", "Avenue", True),
    (r"\bBlvd\.", "Boulevard", True),
    (r"\bRd\.", "Road", True),
    (r"\bLn\.", "Lane", True),
    (r"\bApt\.?(?=\s*#?\s*\d)", "Apartment", False),
    (r"\bSte\.?(?=\s*#?\s*\d)", "Suite", False),
    (r"\b[Ee]\.g\.", "for example", False),
    (r"\b[Ii]\.e\.", "that is", False),
    (r"\betc\.", "et cetera", True),
    (r"\bvs\.?(?=\s)", "versus", False),
    (r"\bapprox\.", "approximately", False),
    (r"\b[Nn]o\.(?=\s*\d)", "number", False),
    (r"\bext\.(?=\s*\d)", "extension", False),
    (r"\bref\.(?=\s*#?\s*\d)", "reference", False),
    (r"\bw/o\b", "without", False),
    (r"\bw/(?=\s)", "with", False),
    (r"\bN/A\b", "not applicable", False),
]

_PLACE_OR_TITLE = {"St": ("Saint", "Street"), "Dr": ("Doctor", "Drive")}


def _place_or_title(match: re.Match) -> str:
    """"Main St." / "5th St." is a street, "St. Louis" / "Dr. Lee" a title before a name.

    A capitalized word that opens a sentence ("Visit St. Louis") is not a street name.
    """
    title, place = _PLACE_OR_TITLE[match.group(1)]
    words = match.string[:match.start()].split()
    previous = words[-1] if words else ""
    opens_sentence = len(words) < 2 or words[-2].endswith((".", "!", "?"))
    after_address = previous[:1].isdigit() or (previous[:1].isupper() and not opens_sentence)
    if not after_address and re.match(r"\s+[A-Z]", match.string[match.end():]):
        return title
    return place + _sentence_dot(match)


# Numbers that are identifiers, read digit by digit.

def _say_phone(match: re.Match) -> str:
    """Digit groups read digit by digit, a comma (a short pause) between groups."""
    number = match.group(0)
    groups = re.findall(r"\d+", number)
    if re.fullmatch(r"\d{3}-\d{4}", number) and all(int(g) % 100 == 0 for g in groups):
        return number  # "500-1000" is a range, not a phone number
    spoken = ", ".join(_digits(g) for g in groups)
    return "plus " + spoken if number.startswith("+") else spoken


_CODE_CUES = (
    r"(?:order|case|card|member|customer|booking|reservation|invoice|policy|claim|account"
    r"|reference|tracking|ticket|confirmation|serial)\s*(?:number|#|id)"
    r"|account|ticket|confirmation(?:\s+code)?|reference|tracking|invoice|policy|booking"
    r"|reservation|pin|passcode|code|extension|zip(?:\s+code)?|ending\s+in|flight|routing|serial"
)


def _say_code(match: re.Match) -> str:
    """Order numbers, PINs, ZIP codes...: digit by digit, each dash- or space-separated part a pause."""
    cue, code = match.group(1) + match.group(2), match.group(3)
    if code.isdigit() and len(code) < 3:
        return match.group(0)  # "code is 12 characters" counts, it doesn't identify
    cue = re.sub(r"\s*#\s*", " number ", cue).rstrip()
    return f"{cue} " + ", ".join(_spell(part) for part in re.split(r"[-\s]", code))


# Dates.

def _say_date(month: int, day: int, year: int | None = None) -> str:
    date = f"{MONTHS[month - 1]} {_ordinal(day)}"
    return f"{date}, {_year(year)}" if year else date


def _iso_date(match: re.Match) -> str:
    year, month, day = (int(g) for g in match.groups())
    return _say_date(month, day, year) if 1 <= month <= 12 and 1 <= day <= 31 else match.group(0)


_FRACTIONS = {2: "half", 3: "third", 4: "quarter"}


def _slash_date(match: re.Match) -> str:
    """US month/day[/year]; the common small fractions (1/2, 2/3, 3/4) stay fractions."""
    first, second, year = match.group(1), match.group(2), match.group(3)
    a, b = int(first), int(second)
    if not year and len(first) == len(second) == 1 and b in _FRACTIONS and a < b:
        return f"{_cardinal(a)} {_FRACTIONS[b]}{'s' if a > 1 else ''}"
    if not (1 <= a <= 12 and 1 <= b <= 31):
        return f"{_cardinal(a)} {_cardinal(b)}"  # "50/50", "20/20"
    full_year = int(year) + 2000 if year and len(year) == 2 else int(year or 0)
    return _say_date(a, b, full_year or None)


def _month_date(match: re.Match) -> str:
    """"June 9th", "Jun 9-12", "June 9, 2026"."""
    month, day, last_day, year = match.groups()
    if not 1 <= int(day) <= 31:
        return match.group(0)
    date = f"{_full_name(month)} {_ordinal(int(day))}"
    if last_day:
        date += f" to {_ordinal(int(last_day))}"
    return f"{date}, {_year(int(year))}" if year else date


# Clock times.

def _time(match: re.Match) -> str:
    """"10:15 AM" -> "ten fifteen AM"; 12:00 pm is "twelve noon"; 24-hour "14:30" -> "fourteen thirty"."""
    hour, minute = int(match.group("hour")), int(match.groupdict().get("minute") or 0)
    half = (match.group("half") or "").upper()
    if hour == 0 and not half:
        hour, half = 12, "A"
    if minute > 59 or hour > (12 if half else 23) or hour == 0:
        return match.group(0)
    if hour == 12 and minute == 0 and half:
        return ("twelve noon" if half == "P" else "twelve midnight") + _sentence_dot(match)
    words = _cardinal(hour)
    if minute:
        words += f" oh {_cardinal(minute)}" if minute < 10 else f" {_cardinal(minute)}"
    elif not half:
        words += " o'clock" if hour <= 12 else " hundred"
    return words + (f" {half}M" if half else "") + _sentence_dot(match)


# Money, percentages and units.

_CURRENCIES = {
    "$": ("dollar", "dollars", "cent", "cents"),
    "€": ("euro", "euros", "cent", "cents"),
    "£": ("pound", "pounds", "penny", "pence"),
}
_CURRENCY_WORDS = {"dollar": "$", "euro": "€"}
_SCALES = {"k": "thousand", "K": "thousand", "M": "million", "B": "billion", "bn": "billion"}


def _say_money(symbol: str, amount: str, scale: str | None = None) -> str:
    """"$42.50" -> "forty-two dollars and fifty cents"; "$3.5 million" -> "three point five million dollars"."""
    one, many, sub_one, sub_many = _CURRENCIES[symbol]
    whole, _, fraction = amount.replace(",", "").partition(".")
    if scale or len(fraction) > 2:
        return " ".join(filter(None, (_number(amount), scale, many)))
    main, sub = int(whole or 0), int(fraction.ljust(2, "0") or 0)
    parts = []
    if main or not sub:
        parts.append(f"{_cardinal(main)} {one if main == 1 else many}")
    if sub:
        parts.append(f"{_cardinal(sub)} {sub_one if sub == 1 else sub_many}")
    return " and ".join(parts)


_UNITS = {
    "kg": ("kilogram", "kilograms"), "g": ("gram", "grams"), "mg": ("milligram", "milligrams"),
    "lb": ("pound", "pounds"), "lbs": ("pound", "pounds"), "oz": ("ounce", "ounces"),
    "km": ("kilometer", "kilometers"), "cm": ("centimeter", "centimeters"),
    "mm": ("millimeter", "millimeters"), "mi": ("mile", "miles"), "ft": ("foot", "feet"),
    "mph": ("mile per hour", "miles per hour"), "km/h": ("kilometer per hour", "kilometers per hour"),
    "kph": ("kilometer per hour", "kilometers per hour"),
    "ml": ("milliliter", "milliliters"), "mL": ("milliliter", "milliliters"),
    "KB": ("kilobyte", "kilobytes"), "MB": ("megabyte", "megabytes"),
    "GB": ("gigabyte", "gigabytes"), "TB": ("terabyte", "terabytes"),
    "ms": ("millisecond", "milliseconds"), "sec": ("second", "seconds"), "secs": ("second", "seconds"),
    "min": ("minute", "minutes"), "mins": ("minute", "minutes"),
    "hr": ("hour", "hours"), "hrs": ("hour", "hours"), "kWh": ("kilowatt hour", "kilowatt hours"),
}  # "in" and "m" are left out: after a number they are as often words as units.


def _say_quantity(amount: str, one: str, many: str) -> str:
    return f"{_number(amount)} {one if amount == '1' else many}"


def _unit(match: re.Match) -> str:
    return _say_quantity(match.group(1), *_UNITS[match.group(2)]) + _sentence_dot(match)


def _degrees(match: re.Match) -> str:
    scale = {"F": " Fahrenheit", "C": " Celsius"}.get(match.group(2), "")
    return _say_quantity(match.group(1), "degree", "degrees") + scale


# The rules, in the order they run.

_NUM = r"((?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)"
_HALF_DAY = r"\s?(?P<half>[AaPp])\.?[Mm]\b\.?"
_MONTH = _name_pattern(MONTHS)
_DAY_OR_MONTH = _name_pattern(MONTHS + WEEKDAYS)

_RULES: list[tuple[re.Pattern, str | Callable[[re.Match], str]]] = [
    # Addresses first: their dots, slashes and digits are not sentences or numbers.
    (re.compile(r"\b[\w.+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+\b"), _say_address),
    (re.compile(r"(?:\bhttps?://(?:[\w-]+\.)+[a-z]{2,}|\b(?:[\w-]+\.)+"
                r"(?:com|org|net|edu|gov|io|ai|co|us|uk|ca|app|dev|info|biz))\b"
                r"(?:/[\w./?=&%~+-]*[\w/])?", re.I), _say_address),
    (re.compile(r"\b24/7\b"), "twenty-four seven"),
    *[(re.compile(pattern), _abbreviation(words, may_end)) for pattern, words, may_end in _ABBREVIATIONS],
    (re.compile(r"\b(St|Dr)\."), _place_or_title),
    # Identifiers before anything that would read them as quantities.
    (re.compile(r"\b(\d{4})-(\d{1,2})-(\d{1,2})\b"), _iso_date),
    (re.compile(r"(?<![\w+$.])(?:(?:\+?1[ .-]?)?(?:\(\d{3}\)\s?|\d{3}[ .-])\d{3}[ .-]\d{4}"
                r"|\+\d{1,3}(?:[ .-]\d{1,4}){2,5}|\d{3}-\d{4})(?![\w-])"), _say_phone),
    (re.compile(rf"(?i:\b({_CODE_CUES})(?![a-z])((?:\s*(?::|#|\bis\b))*\s*))"
                r"((?=[A-Za-z\d-]*\d)[A-Za-z\d]+(?:-[A-Za-z\d]+|\s\d{3,})*)(?![\w$])"),
     _say_code),
    (re.compile(r"(?<![\w/.])(\d{1,2})/(\d{1,2})(?:/(\d{4}|\d{2}))?(?![\w/]|\.\d)"), _slash_date),
    (re.compile(rf"\b({_MONTH})\.?\s+(\d{{1,2}})(?:st|nd|rd|th)?"
                rf"(?:\s?[-–]\s?(\d{{1,2}})(?:st|nd|rd|th)?)?\b(?:,?\s+(1[1-9]\d\d|20\d\d)\b)?"), _month_date),
    # Ranges: a dash between two numbers or two day/month names reads "to".
    (re.compile(r"(?:(?<=\d)|(?<=\d[AaPp][Mm])|(?<=\d [AaPp][Mm])|(?<=[AaPp]\.[Mm]\.))"
                r"\s?[-–—]\s?(?=[$€£]?\d)"), " to "),
    (re.compile(rf"\b({_DAY_OR_MONTH})\.?\s?[-–—]\s?({_DAY_OR_MONTH})\b\.?"),
     lambda m: f"{_full_name(m.group(1))} to {_full_name(m.group(2))}"),
    (re.compile(r"(?<![\w)\]])[-−](?=[$€£]?\.?\d)"), "minus "),
    # Clock times, then ratios ("16:9") that are not times.
    (re.compile(r"\b(?P<hour>\d{1,2}):(?P<minute>\d{2})(?!\d)(?:" + _HALF_DAY + ")?"), _time),
    (re.compile(r"\b(?P<hour>\d{1,2})" + _HALF_DAY), _time),
    (re.compile(r"(?<=\d):(?=\d)"), " to "),
    # Quantities.
    (re.compile(r"([$€£])\s?" + _NUM + r"(?:\s?(thousand|million|billion|trillion)\b|(k|K|M|B|bn)\b)?"),
     lambda m: _say_money(m.group(1), m.group(2), m.group(3) or _SCALES.get(m.group(4)))),
    (re.compile(r"\b((?:\d{1,3}(?:,\d{3})+|\d+)\.\d{1,2})\s?(dollar|euro)s?\b"),
     lambda m: _say_money(_CURRENCY_WORDS[m.group(2)], m.group(1))),
    (re.compile(r"\b(\d+)\s?¢"), lambda m: _say_quantity(m.group(1), "cent", "cents")),
    (re.compile(_NUM + r"\s?%"), lambda m: f"{_number(m.group(1))} percent"),
    (re.compile(_NUM + r"\s?°(?:\s?([FC])\b)?"), _degrees),
    (re.compile(_NUM + r"\s?(" + "|".join(sorted(map(re.escape, _UNITS), key=len, reverse=True))
                + r")(?![\w/])\.?"), _unit),
    (re.compile(r"\b(\d{1,3}(?:,\d{3})+|\d+)(?:st|nd|rd|th)\b"),
     lambda m: _padded(m, _ordinal(int(m.group(1).replace(",", ""))))),
    (re.compile(r"(?<![\w.])\d+(?:\.\d+){2,}(?!\.?\d)"),  # versions, IP addresses
     lambda m: " dot ".join(_cardinal(int(part)) for part in m.group(0).split("."))),
    (re.compile(r"(?<![\w.])((?:\d{1,3}(?:,\d{3})+|\d+)?\.\d+)(?!\.?\d)"), lambda m: _number(m.group(1))),
    (re.compile(r"(?<![\w,.])(1[1-9]\d\d|20\d\d)(s?)(?!,\d|\.\d|\w)"),
     lambda m: _plural(_year(int(m.group(1)))) if m.group(2) else _year(int(m.group(1)))),
    (re.compile(r"(?<![\w'])'?([1-9]0)s\b"), lambda m: _plural(_cardinal(int(m.group(1))))),
    (re.compile(r"(?<![\d,.])\d{5,}(?!,\d|\.\d|\d)"), lambda m: _padded(m, _digits(m.group(0)))),
    (re.compile(r"\d{1,3}(?:,\d{3})+|\d+"), lambda m: _padded(m, _cardinal(int(m.group(0).replace(",", ""))))),
    # Symbols left over once the numbers are words.
    (re.compile(r"\s*&\s*"), " and "),
    (re.compile(r"\s*@\s*"), " at "),
    (re.compile(r"#\s*"), "number "),
    (re.compile(r"\s*\+\s*"), " plus "),
    (re.compile(r"\s*=\s*"), " equals "),
    (re.compile(r"\s?%"), " percent"),
    (re.compile(r"\s?°"), " degrees"),
    (re.compile(r"~\s*(?=\w)"), "about "),
    (re.compile(r"\band/or\b"), "and or"),
    (re.compile(r"(?<=[A-Za-z])/(?=[A-Za-z])"), " or "),
    # Tidy the spaces the rules above left behind.
    (re.compile(r"[ \t]{2,}"), " "),
    (re.compile(r" +(?=[,.?!;:](?:\s|$))"), ""),
]


def normalize_english(text: str) -> str:
    """Spell out what a phone agent writes (times, money, dates, numbers, units, abbreviations, URLs, symbols) as the words a person would say."""
    for pattern, replacement in _RULES:
        text = pattern.sub(replacement, text)
    return text.strip()
