"""Cleaning and standardization of imported values. Pure functions: no I/O, no clock.

Each cleaner takes one raw cell (a string from CSV; any JSON or Parquet value) and returns
the standard form, or raises :class:`CleaningError` whose ``reason`` is the rejects-file
reason (``invalid_email``, ``invalid_date``, ...). Empty cells are the caller's business:
:func:`clean_text` turns them into ``None`` and the importers leave such traits out.

Choices, each documented in the README:

* e-mails are lower-cased whole (local part too: mail providers treat it case-blind in
  practice, and the identity hash must not depend on how a clerk typed it) and checked
  against an RFC 5322 "dot-atom" subset, ASCII only;
* phone numbers become E.164 through ``phonenumbers``; national numbers use a default region;
* an ambiguous ``01/02/2021`` is refused (``ambiguous_date``) unless ``day_first`` says how
  to read it; a date is ambiguous only when both readings are valid and differ;
* ``1,234`` (one separator, three digits after) reads the English way (1234) unless
  ``decimal_comma`` is set; every other spelling is unambiguous;
* within one file, the first row of a key wins; later rows with the same key are rejected
  as ``duplicate_key`` (:class:`KeyDeduplicator`).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

import phonenumbers

INVALID_EMAIL = "invalid_email"
INVALID_PHONE = "invalid_phone"
INVALID_DATE = "invalid_date"
AMBIGUOUS_DATE = "ambiguous_date"
INVALID_NUMBER = "invalid_number"
INVALID_CURRENCY = "invalid_currency"
INVALID_BOOLEAN = "invalid_boolean"
DUPLICATE_KEY = "duplicate_key"


class CleaningError(ValueError):
    """A value that cannot be cleaned; ``reason`` is the machine-readable rejects reason."""

    def __init__(self, reason: str, message: str, field: str | None = None) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.reason = reason
        self.message = message
        self.field = field

    def on(self, field: str) -> CleaningError:
        """The same error, naming the field it came from."""
        return CleaningError(self.reason, self.message, field)


# -- text -------------------------------------------------------------------------------


def clean_text(value: Any) -> str | None:
    """Trimmed, inner whitespace runs collapsed to one space, control and zero-width
    characters removed (NUL cannot be stored by PostgreSQL); ``None`` when nothing is left.

    Scalars that are not strings (a JSON number, a Parquet integer) are written as text.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, float) and value.is_integer():
        text = str(int(value))  # an id that went through a float column: 123.0 -> "123"
    elif isinstance(value, str | int | float | Decimal):
        text = str(value)
    else:
        raise CleaningError("invalid_text", f"expected text, got {type(value).__name__}")
    if not text.isprintable():
        # isprintable() is False for any whitespace but the space too, so tabs and newlines
        # are kept here and collapsed below; everything else non-printable goes.
        text = "".join(ch for ch in text if ch.isprintable() or ch.isspace())
    text = " ".join(text.split())
    return text or None


# -- e-mail -----------------------------------------------------------------------------

_ATOM = r"[a-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
# Top-level domains are letters only, or an IDNA "xn--" label.
_TLD = r"(?:[a-z]{2,63}|xn--[a-z0-9-]{1,59})"
_EMAIL_RE = re.compile(rf"^(?P<local>{_ATOM}(?:\.{_ATOM})*)@(?P<domain>(?:{_LABEL}\.)+{_TLD})$")


def clean_email(value: Any) -> str:
    """A lower-case address, checked against a strict RFC 5322 subset: a dot-atom local part
    (no quoted strings, no comments, no leading, trailing or doubled dots) of at most 64
    characters, and a domain of at least two DNS labels whose last is letters (or ``xn--``);
    254 characters at most. A ``mailto:`` prefix is dropped."""
    if not isinstance(value, str):
        raise CleaningError(INVALID_EMAIL, "an e-mail address must be text")
    text = value.strip().lower()
    if text.startswith("mailto:"):
        text = text[7:].strip()
    if not text:
        raise CleaningError(INVALID_EMAIL, "the e-mail address is empty")
    match = _EMAIL_RE.match(text)
    if match is None or len(text) > 254 or len(match.group("local")) > 64:
        raise CleaningError(INVALID_EMAIL, f"{_show(value)} is not a valid e-mail address")
    return text


# -- phone ------------------------------------------------------------------------------


def check_region(region: str | None) -> str | None:
    """A default phone region as ``phonenumbers`` knows it (``GB``, ``FR``), or None."""
    if region is None or region == "":
        return None
    code = region.strip().upper()
    if code not in phonenumbers.SUPPORTED_REGIONS:
        raise ValueError(f"{region!r} is not a known ISO 3166 region code (such as GB or FR)")
    return code


def clean_phone(value: Any, region: str | None = "GB") -> str:
    """The number in E.164 (``+447911123456``). Numbers written without a country code are
    read as numbers of ``region``; ``00`` and other international prefixes are understood.
    Numbers that cannot exist (wrong length or range for the country) are refused."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise CleaningError(INVALID_PHONE, "a phone number must be text")
    text = clean_text(value)
    if text is None:
        raise CleaningError(INVALID_PHONE, "the phone number is empty")
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        where = f" (default region {region})" if region else " (and no default region is set)"
        raise CleaningError(INVALID_PHONE, f"{_show(value)} is not a phone number{where}") from None
    if not phonenumbers.is_valid_number(number):
        raise CleaningError(INVALID_PHONE, f"{_show(value)} is not a valid phone number")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


# -- dates ------------------------------------------------------------------------------

_ISO_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_ISO_DATETIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d")
_YMD_RE = re.compile(r"^(\d{4})[/.](\d{1,2})[/.](\d{1,2})$")
_BASIC_RE = re.compile(r"^(\d{4})(\d{2})(\d{2})$")
_EPOCH_RE = re.compile(r"^-?\d{9,}(?:\.\d+)?$")
_DMY_RE = re.compile(
    r"^(\d{1,2})([/.-])(\d{1,2})\2(\d{4})"
    r"(?:[ T](\d{1,2}):(\d{2})(?::(\d{2})(?:\.(\d{1,6}))?)?)?$"
)
_NAMED_FORMATS = ("%d %b %Y", "%d %B %Y", "%b %d %Y", "%B %d %Y", "%d-%b-%Y")
_FOUR_DIGIT_YEAR_RE = re.compile(r"\d{4}$")


def _from_epoch(number: float) -> datetime:
    """Seconds, milliseconds or microseconds since 1970, told apart by magnitude: 1e11 s
    is the year 5138, and 1e11 ms is 1973, so the bands do not overlap for real data."""
    magnitude = abs(number)
    if magnitude < 1e11:
        seconds = number
    elif magnitude < 1e14:
        seconds = number / 1e3
    elif magnitude < 1e17:
        seconds = number / 1e6
    else:
        raise CleaningError(INVALID_DATE, f"{number} is too large for an epoch time")
    try:
        return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=seconds)
    except OverflowError:
        raise CleaningError(INVALID_DATE, f"{number} is out of range for a date") from None


def _make(y: int, m: int, d: int, raw: Any) -> date:
    try:
        return date(y, m, d)
    except ValueError as exc:
        raise CleaningError(INVALID_DATE, f"{_show(raw)} is not a real date ({exc})") from None


def parse_date(value: Any, *, day_first: bool | None = None) -> date | datetime:
    """A date, or a UTC datetime when the value has a time.

    Accepted: ISO 8601 (``2021-03-14``, ``2021-03-14T10:30:00Z``, with an offset, or with a
    space), ``YYYY/MM/DD``, ``YYYYMMDD``, ``DD.MM.YYYY``, ``DD/MM/YYYY`` and ``MM/DD/YYYY``
    (also with ``-``, and with an ``HH:MM[:SS]`` time), ``14 Mar 2021``, ``March 14, 2021``,
    epoch seconds, milliseconds or microseconds (numbers, or digit strings of 9+ digits),
    and date/datetime values. A slash date whose two readings are both real and differ is
    ``ambiguous_date`` unless ``day_first`` is given. Times without an offset are UTC.
    """
    if isinstance(value, bool):
        raise CleaningError(INVALID_DATE, "a boolean is not a date")
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    if isinstance(value, date):
        return value
    if isinstance(value, int) and 10_000_101 <= value <= 99_991_231:
        # An 8-digit number is a basic ISO date (20210314); as epoch seconds it would be 1970.
        return _make(value // 10_000, value // 100 % 100, value % 100, value)
    if isinstance(value, int | float | Decimal):
        if isinstance(value, float | Decimal) and not math.isfinite(value):
            raise CleaningError(INVALID_DATE, f"{value} is not a date")
        return _from_epoch(float(value))
    if not isinstance(value, str):
        raise CleaningError(INVALID_DATE, f"expected a date, got {type(value).__name__}")
    text = clean_text(value)
    if text is None:
        raise CleaningError(INVALID_DATE, "the date is empty")
    if _ISO_DATE_RE.match(text):
        return _make(int(text[:4]), int(text[5:7]), int(text[8:10]), value)
    if _ISO_DATETIME_RE.match(text):
        try:
            parsed = datetime.fromisoformat(text.replace("z", "Z"))
        except ValueError:
            raise CleaningError(INVALID_DATE, f"{_show(value)} is not a real date-time") from None
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    if match := _YMD_RE.match(text):
        return _make(int(match[1]), int(match[2]), int(match[3]), value)
    if match := _BASIC_RE.match(text):
        return _make(int(match[1]), int(match[2]), int(match[3]), value)
    if _EPOCH_RE.match(text):
        return _from_epoch(float(text))
    if match := _DMY_RE.match(text):
        return _slash_date(match, value, day_first)
    named = text.replace(",", "")
    if _FOUR_DIGIT_YEAR_RE.search(named):  # strptime's %Y would take "21" as the year 21
        for fmt in _NAMED_FORMATS:
            try:
                return datetime.strptime(named, fmt).date()
            except ValueError:
                continue
    raise CleaningError(INVALID_DATE, f"{_show(value)} is not a date in a known format")


def _slash_date(match: re.Match[str], raw: Any, day_first: bool | None) -> date | datetime:
    a, sep, b, year = int(match[1]), match[2], int(match[3]), int(match[4])
    if sep == ".":
        day, month = a, b  # DD.MM.YYYY: nobody writes month-first with dots
    elif a > 12 and b > 12:
        raise CleaningError(INVALID_DATE, f"{_show(raw)}: neither {a} nor {b} is a month")
    elif a > 12:
        day, month = a, b
    elif b > 12:
        day, month = b, a
    elif a == b:
        day, month = a, b
    elif day_first is None:
        raise CleaningError(
            AMBIGUOUS_DATE,
            f"{_show(raw)} reads as day/month or month/day; set day_first to choose",
        )
    elif day_first:
        day, month = a, b
    else:
        day, month = b, a
    d = _make(year, month, day, raw)
    if match[5] is None:
        return d
    hour, minute = int(match[5]), int(match[6])
    second = int(match[7] or 0)
    micro = int((match[8] or "0").ljust(6, "0"))
    try:
        return datetime(d.year, d.month, d.day, hour, minute, second, micro, tzinfo=UTC)
    except ValueError as exc:
        raise CleaningError(INVALID_DATE, f"{_show(raw)} has an impossible time ({exc})") from None


def iso_date(value: date | datetime) -> str:
    """``2021-03-14`` for a date; ``2021-03-14T10:30:00Z`` (milliseconds when present) for a
    datetime, always in UTC."""
    if isinstance(value, datetime):
        utc = value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
        spec = "milliseconds" if utc.microsecond else "seconds"
        return utc.isoformat(timespec=spec).replace("+00:00", "Z")
    return value.isoformat()


# -- numbers and money ------------------------------------------------------------------

# ISO 4217 codes in use (2025). Codes outside this list are refused as currencies.
ISO_CURRENCIES = frozenset(
    """
    AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD BND BOB BRL BSD BTN
    BWP BYN BZD CAD CDF CHF CLP CNY COP CRC CUP CVE CZK DJF DKK DOP DZD EGP ERN ETB EUR FJD
    FKP GBP GEL GHS GIP GMD GNF GTQ GYD HKD HNL HTG HUF IDR ILS INR IQD IRR ISK JMD JOD JPY
    KES KGS KHR KMF KPW KRW KWD KYD KZT LAK LBP LKR LRD LSL LYD MAD MDL MGA MKD MMK MNT MOP
    MRU MUR MVR MWK MXN MYR MZN NAD NGN NIO NOK NPR NZD OMR PAB PEN PGK PHP PKR PLN PYG QAR
    RON RSD RUB RWF SAR SBD SCR SDG SEK SGD SHP SLE SLL SOS SRD SSP STN SVC SYP SZL THB TJS
    TMT TND TOP TRY TTD TWD TZS UAH UGX USD UYU UZS VES VND VUV WST XAF XCD XCG XOF XPF YER
    ZAR ZMW ZWG ZWL
    """.split()
)

# Symbols as people write them. A bare "$" is the US dollar and a bare "¥" the yen, the
# common readings; prefixed forms (C$, A$, CN¥) say otherwise. "kr" is refused: it is the
# Swedish, Norwegian, Danish and Icelandic crown alike.
CURRENCY_SYMBOLS: dict[str, str] = {
    "€": "EUR",
    "$": "USD",
    "us$": "USD",
    "£": "GBP",
    "¥": "JPY",
    "jp¥": "JPY",
    "cn¥": "CNY",
    "rmb": "CNY",
    "元": "CNY",
    "₹": "INR",
    "rs": "INR",
    "₩": "KRW",
    "₽": "RUB",
    "₺": "TRY",
    "₴": "UAH",
    "₪": "ILS",
    "₫": "VND",
    "฿": "THB",
    "₦": "NGN",
    "₱": "PHP",
    "₡": "CRC",
    "₲": "PYG",
    "₸": "KZT",
    "₾": "GEL",
    "zł": "PLN",
    "kč": "CZK",
    "ft": "HUF",
    "lei": "RON",
    "r$": "BRL",
    "c$": "CAD",
    "ca$": "CAD",
    "a$": "AUD",
    "au$": "AUD",
    "nz$": "NZD",
    "hk$": "HKD",
    "s$": "SGD",
    "mx$": "MXN",
    "nt$": "TWD",
    "fr": "CHF",
    "fr.": "CHF",
    "euro": "EUR",
    "euros": "EUR",
}
_AMBIGUOUS_SYMBOLS = frozenset({"kr", "kr.", "r"})


def clean_currency(value: Any) -> str:
    """The ISO 4217 code of a code (any case) or a symbol: ``€`` -> ``EUR``, ``usd`` ->
    ``USD``, ``C$`` -> ``CAD``; anything else is ``invalid_currency``."""
    text = clean_text(value) if isinstance(value, str) else None
    if text is None:
        raise CleaningError(INVALID_CURRENCY, "a currency must be a code such as EUR or a symbol")
    upper = text.upper()
    if upper in ISO_CURRENCIES:
        return upper
    lower = text.lower()
    if lower in CURRENCY_SYMBOLS:
        return CURRENCY_SYMBOLS[lower]
    if lower in _AMBIGUOUS_SYMBOLS:
        raise CleaningError(
            INVALID_CURRENCY, f"{_show(value)} names several currencies; write the ISO code"
        )
    raise CleaningError(INVALID_CURRENCY, f"{_show(value)} is not a known currency")


_GROUPING_SPACES = " \u00a0\u202f\u2009'’"
_MINUS = "-\u2212"
_PLAIN_RE = re.compile(r"^(\d*)(?:([.,])(\d+))?$")
_SCIENTIFIC_RE = re.compile(r"^(?:\d+\.?\d*|\.\d+)[eE][+-]?\d+$")
_CURRENCY_HEAD = re.compile(r"^([^\d\s.,+\-\u2212()]+)\s*")
_CURRENCY_TAIL = re.compile(r"\s*([^\d\s.,+\-\u2212()]+\.?)$")


def _grouped(int_part: str, group_chars: str) -> str | None:
    """The digits of an integer part with thousands separators, if every group after the
    first has exactly three digits (``1,234,567``, ``1 234``), else None."""
    parts = re.split(f"[{re.escape(group_chars)}]", int_part)
    if not parts[0] or len(parts[0]) > 3 or not all(p.isdigit() for p in parts):
        return None
    if any(len(p) != 3 for p in parts[1:]):
        return None
    return "".join(parts)


def _number_body(body: str, decimal_comma: bool | None, raw: Any) -> str:
    """The canonical ``1234.56`` form of a number written with separators."""
    bad = CleaningError(INVALID_NUMBER, f"{_show(raw)} is not a number")
    if not body or not (body[0].isdigit() or body[0] in ".,"):
        raise bad
    if _SCIENTIFIC_RE.match(body):
        return body
    has_space = any(ch in body for ch in _GROUPING_SPACES)
    dots, commas = body.count("."), body.count(",")
    if dots and commas:
        decimal = "." if body.rfind(".") > body.rfind(",") else ","
    elif dots + commas == 0:
        decimal = ""
    else:
        sep = "." if dots else ","
        count = dots or commas
        head, _, tail = body.rpartition(sep)
        head_digits = head.strip(_GROUPING_SPACES)
        if count > 1:
            decimal = ""  # 1,234,567 or 1.234.567: only thousands separators
        elif len(tail) != 3 or head_digits in ("", "0") or has_space:
            # 12,50 / 0,125 / 1 234,567: only a decimal separator reads right
            decimal = sep
        elif sep == ",":
            # 1,234: thousands the English way, unless the file says decimal commas
            decimal = "," if decimal_comma else ""
        else:
            # 1.234: a decimal point the English way, thousands with decimal commas
            decimal = "" if decimal_comma else "."
    if decimal:
        if body.count(decimal) != 1:
            raise bad
        int_part, frac = body.split(decimal)
        if not frac.isdigit():
            raise bad
    else:
        int_part, frac = body, ""
    group = ",.".replace(decimal, "") + _GROUPING_SPACES if decimal else ",." + _GROUPING_SPACES
    if int_part == "":
        digits = "0"
    elif int_part.isdigit():
        digits = int_part
    else:
        grouped = _grouped(int_part, group)
        if grouped is None:
            raise bad
        digits = grouped
    return f"{digits}.{frac}" if frac else digits


def parse_money(value: Any, *, decimal_comma: bool | None = None) -> tuple[Decimal, str | None]:
    """A number and the currency written with it (``€12,50`` -> ``(12.50, "EUR")``).

    Understood: thousands separators ``,`` ``.`` space, narrow no-break space and ``'``
    (groups of three); the decimal separator is the last of ``.``/``,`` when both appear,
    a lone ``,`` or ``.`` not followed by exactly three digits, and for ``1,234`` /
    ``1.234`` the English reading (1234 / 1.234) unless ``decimal_comma=True``; a sign or
    accounting parentheses; a currency symbol or ISO code before or after; ``1.5e3``.
    """
    if isinstance(value, bool):
        raise CleaningError(INVALID_NUMBER, "a boolean is not a number")
    if isinstance(value, int):
        return Decimal(value), None
    if isinstance(value, float | Decimal):
        if not math.isfinite(value):
            raise CleaningError(INVALID_NUMBER, f"{value} is not a finite number")
        return (value if isinstance(value, Decimal) else Decimal(repr(value))), None
    if not isinstance(value, str):
        raise CleaningError(INVALID_NUMBER, f"expected a number, got {type(value).__name__}")
    text = clean_text(value)
    if text is None:
        raise CleaningError(INVALID_NUMBER, "the number is empty")
    negative = False
    if text.startswith("(") and text.endswith(")"):
        negative, text = True, text[1:-1].strip()
    currency: str | None = None
    signed = False
    for _ in range(2):  # a sign and a currency, in either order: -€5, €-5
        if not signed and text and (text[0] in _MINUS or text[0] == "+"):
            negative ^= text[0] in _MINUS
            signed = True
            text = text[1:].strip()
        head = _CURRENCY_HEAD.match(text)
        if head and currency is None:
            currency = _currency_of(head.group(1), value)
            text = text[head.end() :]
    tail = _CURRENCY_TAIL.search(text)
    if tail and currency is None:
        currency = _currency_of(tail.group(1), value)
        text = text[: tail.start()]
    if text.endswith("-") and not negative:  # SAP-style trailing minus: 12.50-
        negative, text = True, text[:-1]
    canonical = _number_body(text.strip(), decimal_comma, value)
    try:
        number = Decimal(canonical)
    except InvalidOperation:
        raise CleaningError(INVALID_NUMBER, f"{_show(value)} is not a number") from None
    if not number.is_finite():
        raise CleaningError(INVALID_NUMBER, f"{_show(value)} is not a finite number")
    return (-number if negative else number), currency


def _currency_of(token: str, raw: Any) -> str:
    try:
        return clean_currency(token)
    except CleaningError:
        raise CleaningError(INVALID_NUMBER, f"{_show(raw)} is not a number") from None


def parse_decimal(value: Any, *, decimal_comma: bool | None = None) -> Decimal:
    """:func:`parse_money` without the currency."""
    return parse_money(value, decimal_comma=decimal_comma)[0]


def parse_integer(value: Any, *, decimal_comma: bool | None = None) -> int:
    """A whole number (``1,200`` -> 1200); ``12.5`` is ``invalid_number``."""
    number = parse_decimal(value, decimal_comma=decimal_comma)
    if number != number.to_integral_value():
        raise CleaningError(INVALID_NUMBER, f"{_show(value)} is not a whole number")
    return int(number)


def to_json_number(number: Decimal) -> int | float:
    """An int when whole, else a float: JSON (and the profile traits) have no decimal type."""
    if number == number.to_integral_value() and abs(number) < 2**63:
        return int(number)
    return float(number)


# -- booleans ---------------------------------------------------------------------------

_TRUE = frozenset({"true", "t", "yes", "y", "1", "on", "oui", "ja", "si", "sí"})
_FALSE = frozenset({"false", "f", "no", "n", "0", "off", "non", "nein"})


def parse_bool(value: Any) -> bool:
    """``true/false``, ``yes/no``, ``y/n``, ``1/0``, ``on/off`` in any case (and ``oui``,
    ``ja``, ``si``/``non``, ``nein``); anything else is ``invalid_boolean``."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    raise CleaningError(INVALID_BOOLEAN, f"{_show(value)} is not yes/no, true/false or 1/0")


# -- de-duplication ---------------------------------------------------------------------


class KeyDeduplicator:
    """Remembers the keys of one file so later rows with a seen key can be refused.

    Keys are kept as 128-bit digests (about 80 bytes each in a set, whatever the key's
    length): a million customers cost some 80 MB. A false "duplicate" needs a 128-bit
    collision, which does not happen in practice.
    """

    def __init__(self) -> None:
        self._seen: set[int] = set()

    def __len__(self) -> int:
        return len(self._seen)

    def add(self, key: str) -> bool:
        """True the first time ``key`` is seen, False for every later time."""
        digest = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=16).digest(), "big")
        if digest in self._seen:
            return False
        self._seen.add(digest)
        return True


def first_of_each_key(keys: Iterable[str]) -> list[bool]:
    """For each key in order: True if it is the first with that key (kept), else False."""
    dedupe = KeyDeduplicator()
    return [dedupe.add(k) for k in keys]


def _show(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
