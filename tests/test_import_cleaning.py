"""Cleaning functions of the importers: pure, checked against oracles on generated input."""

from __future__ import annotations

import calendar
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import phonenumbers
import pytest
from hypothesis import assume, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from sartor.importers import cleaning as c

# -- text ------------------------------------------------------------------------------------


@given(st.text())
def test_clean_text_trims_collapses_and_is_idempotent(value: str) -> None:
    out = c.clean_text(value)
    if out is None:
        assert not "".join(ch for ch in value if ch.isprintable() and not ch.isspace())
        return
    assert out == out.strip()
    assert "  " not in out
    assert "\x00" not in out
    assert all(ch == " " or not ch.isspace() for ch in out)
    assert c.clean_text(out) == out
    # Nothing but whitespace and invisible characters is lost.
    assert out.replace(" ", "") == "".join(
        ch for ch in value if ch.isprintable() and not ch.isspace()
    )


def test_clean_text_examples() -> None:
    assert c.clean_text("  deep \t\n  blue ") == "deep blue"
    assert c.clean_text("a\x00b\u200bc") == "abc"
    assert c.clean_text("   ") is None
    assert c.clean_text(123.0) == "123"
    assert c.clean_text(7) == "7"


# -- e-mail ------------------------------------------------------------------------------

_atom = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_+-",
    min_size=1,
    max_size=10,
)
_label = st.from_regex(r"[a-zA-Z0-9]([a-zA-Z0-9-]{0,8}[a-zA-Z0-9])?", fullmatch=True)
_tld = st.from_regex(r"[a-zA-Z]{2,6}", fullmatch=True)


@given(
    st.lists(_atom, min_size=1, max_size=3),
    st.lists(_label, min_size=1, max_size=3),
    _tld,
    st.sampled_from(["", " ", "\t", "  "]),
)
def test_valid_emails_come_out_lower_case(
    local: list[str], labels: list[str], tld: str, pad: str
) -> None:
    address = ".".join(local) + "@" + ".".join([*labels, tld])
    assert c.clean_email(pad + address + pad) == address.lower()
    assert c.clean_email(address.upper()) == address.lower()


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "plainaddress",
        "@example.com",
        "ann@",
        "ann@example",
        "ann@@example.com",
        "ann smith@example.com",
        "ann..smith@example.com",
        ".ann@example.com",
        "ann.@example.com",
        "ann@-example.com",
        "ann@example-.com",
        "ann@example.c0m1",
        "ann@exa_mple.com",
        '"ann"@example.com',
        "ann@example.com (Ann)",
        "a" * 65 + "@example.com",
        "ann@" + "a" * 250 + ".com",
    ],
)
def test_invalid_emails_are_refused(bad: str) -> None:
    with pytest.raises(c.CleaningError) as err:
        c.clean_email(bad)
    assert err.value.reason == "invalid_email"


def test_email_examples() -> None:
    assert c.clean_email(" Ann.Smith+news@Example.CO.UK ") == "ann.smith+news@example.co.uk"
    assert c.clean_email("mailto:Bob@x.io") == "bob@x.io"
    with pytest.raises(c.CleaningError):
        c.clean_email(42)


# -- phones ------------------------------------------------------------------------------

REGIONS = ["GB", "FR", "DE", "US", "ES", "IT", "NL", "BR", "IN", "JP", "AU"]


@pytest.mark.parametrize("region", REGIONS)
def test_phone_numbers_become_e164(region: str) -> None:
    example = phonenumbers.example_number(region)
    e164 = phonenumbers.format_number(example, phonenumbers.PhoneNumberFormat.E164)
    national = phonenumbers.format_number(example, phonenumbers.PhoneNumberFormat.NATIONAL)
    international = phonenumbers.format_number(
        example, phonenumbers.PhoneNumberFormat.INTERNATIONAL
    )
    assert c.clean_phone(national, region) == e164
    # A number with its country code reads the same whatever the default region.
    assert c.clean_phone(international, "GB" if region != "GB" else "FR") == e164
    assert c.clean_phone(f"  {international}  ", None) == e164


def test_phone_examples() -> None:
    assert c.clean_phone("07911 123456", "GB") == "+447911123456"
    assert c.clean_phone("0044 (0)7911-123456", "GB") == "+447911123456"
    assert c.clean_phone("+1 (650) 253-0000", "GB") == "+16502530000"
    for bad in ("123", "abc", "+44 12", "07911 123456 789 000"):
        with pytest.raises(c.CleaningError) as err:
            c.clean_phone(bad, "GB")
        assert err.value.reason == "invalid_phone"
    with pytest.raises(c.CleaningError):
        c.clean_phone("07911 123456", None)  # national number, no region to read it in
    assert c.check_region("gb") == "GB"
    assert c.check_region("") is None
    with pytest.raises(ValueError):
        c.check_region("XX")


# -- dates -------------------------------------------------------------------------------

dates = st.dates(min_value=date(1900, 1, 1), max_value=date(2200, 12, 31))


@given(dates)
def test_unambiguous_formats_give_the_date(d: date) -> None:
    assert c.parse_date(d.isoformat()) == d
    assert c.parse_date(d.strftime("%Y/%m/%d")) == d
    assert c.parse_date(d.strftime("%Y%m%d")) == d
    assert c.parse_date(d.strftime("%d.%m.%Y")) == d
    assert c.parse_date(d.strftime("%d %b %Y")) == d
    assert c.parse_date(d.strftime("%B %d, %Y")) == d
    assert c.parse_date(f"{d.day}/{d.month}/{d.year}", day_first=True) == d
    assert c.parse_date(f"{d.month}/{d.day}/{d.year}", day_first=False) == d
    assert c.parse_date(d.strftime("%d-%m-%Y"), day_first=True) == d
    assert c.iso_date(c.parse_date(d.isoformat())) == d.isoformat()


@given(dates)
def test_slash_dates_are_ambiguous_only_when_both_readings_differ(d: date) -> None:
    text = d.strftime("%d/%m/%Y")
    if d.day > 12 or d.day == d.month:
        assert c.parse_date(text) == d  # only one reading is a date (or both are the same)
        return
    with pytest.raises(c.CleaningError) as err:
        c.parse_date(text)
    assert err.value.reason == "ambiguous_date"


@given(st.integers(1900, 2200), st.integers(1, 12), st.integers(1, 4))
def test_impossible_dates_are_refused(year: int, month: int, past_end: int) -> None:
    day = calendar.monthrange(year, month)[1] + past_end
    assume(day <= 31 or past_end == 1)
    for text in (
        f"{year:04d}-{month:02d}-{day:02d}",
        f"{day:02d}.{month:02d}.{year:04d}",
        f"{year:04d}/{month:02d}/{day:02d}",
    ):
        with pytest.raises(c.CleaningError) as err:
            c.parse_date(text)
        assert err.value.reason == "invalid_date"


@given(st.datetimes(min_value=datetime(1975, 1, 1), max_value=datetime(2200, 1, 1)))
def test_epochs_and_iso_datetimes(moment: datetime) -> None:
    moment = moment.replace(microsecond=moment.microsecond // 1000 * 1000, tzinfo=UTC)
    ms = int((moment - datetime(1970, 1, 1, tzinfo=UTC)) / timedelta(milliseconds=1))
    assert c.parse_date(ms) == moment
    assert c.parse_date(str(ms)) == moment
    seconds = moment.replace(microsecond=0)
    assert c.parse_date(int(seconds.timestamp())) == seconds
    assert c.parse_date(seconds.isoformat().replace("+00:00", "Z")) == seconds
    shifted = moment.astimezone(UTC).isoformat().replace("+00:00", "+02:00")
    assert c.parse_date(shifted) == moment - timedelta(hours=2)


def test_date_examples() -> None:
    assert c.parse_date("2021-02-28") == date(2021, 2, 28)
    assert c.iso_date(c.parse_date("12/1/2010 8:26", day_first=False)) == "2010-12-01T08:26:00Z"
    assert c.iso_date(c.parse_date("2021-03-14 10:30:00.250")) == "2021-03-14T10:30:00.250Z"
    assert c.parse_date(20210314) == date(2021, 3, 14)
    for bad, reason in [
        ("2021-02-30", "invalid_date"),
        ("2021-13-01", "invalid_date"),
        ("31/31/2020", "invalid_date"),
        ("14 Mar 21", "invalid_date"),  # two-digit years are refused, not guessed
        ("yesterday", "invalid_date"),
        ("01/02/2021", "ambiguous_date"),
        ("12/1/2010 25:00", "ambiguous_date"),
        ("13/1/2010 25:00", "invalid_date"),
    ]:
        with pytest.raises(c.CleaningError) as err:
            c.parse_date(bad)
        assert err.value.reason == reason, bad
    with pytest.raises(c.CleaningError):
        c.parse_date(True)


# -- numbers and money -------------------------------------------------------------------

amounts = st.decimals(
    min_value=Decimal("-99999999.99"),
    max_value=Decimal("99999999.99"),
    places=2,
    allow_nan=False,
    allow_infinity=False,
)


def _german(english: str) -> str:
    return english.replace(",", "_").replace(".", ",").replace("_", ".")


@given(amounts, st.sampled_from(["", "€", "$", "£", "EUR ", "USD "]))
def test_amounts_in_english_and_continental_spelling(amount: Decimal, symbol: str) -> None:
    english = f"{abs(amount):,.2f}"
    sign = "-" if amount < 0 else ""
    expected_currency = c.clean_currency(symbol.strip()) if symbol else None
    assert c.parse_money(f"{sign}{symbol}{english}") == (amount, expected_currency)
    assert c.parse_money(f"{sign}{_german(english)} {symbol.strip()}".strip()) == (
        amount,
        expected_currency,
    )
    spaced = english.replace(",", " ")
    assert c.parse_decimal(f"{sign}{spaced}") == amount
    assert c.parse_decimal(f"({english})") == -abs(amount)


@given(st.integers(min_value=-(10**12), max_value=10**12))
def test_grouped_integers(n: int) -> None:
    assert c.parse_integer(f"{n:,}") == n
    assert c.parse_integer(_german(f"{n:,}"), decimal_comma=True) == n
    assert c.parse_integer(str(n)) == n
    assert c.parse_integer(n) == n


@given(st.floats(allow_nan=False, allow_infinity=False, width=64))
def test_json_numbers_pass_through(x: float) -> None:
    assert float(c.parse_decimal(x)) == x


@pytest.mark.parametrize(
    ("text", "number", "currency"),
    [
        ("1,234.56", "1234.56", None),
        ("1.234,56", "1234.56", None),
        ("€12,50", "12.50", "EUR"),
        ("$1 234.56", "1234.56", "USD"),
        ("12,50 €", "12.50", "EUR"),
        ("1\u202f234,5 EUR", "1234.5", "EUR"),
        ("CHF 1'234.50", "1234.50", "CHF"),
        ("C$ 10", "10", "CAD"),
        ("-€5", "-5", "EUR"),
        ("€-5", "-5", "EUR"),
        ("12.50-", "-12.50", None),
        ("1,234", "1234", None),
        ("1.234", "1.234", None),
        ("0,125", "0.125", None),
        (",5", "0.5", None),
        ("1.5e3", "1500", None),
    ],
)
def test_money_examples(text: str, number: str, currency: str | None) -> None:
    assert c.parse_money(text) == (Decimal(number), currency)


def test_decimal_comma_reads_the_ambiguous_spellings_the_other_way() -> None:
    assert c.parse_decimal("1,234", decimal_comma=True) == Decimal("1.234")
    assert c.parse_decimal("1.234", decimal_comma=True) == Decimal("1234")
    assert c.parse_decimal("12.50", decimal_comma=True) == Decimal("12.50")  # not 3 digits


@pytest.mark.parametrize(
    "bad", ["lots", "N/A", "12abc", "1,23,456", "1.2.3,4,5", "€", "--5", "1,234.5.6", "nan", "inf"]
)
def test_text_in_a_number_is_refused(bad: str) -> None:
    with pytest.raises(c.CleaningError) as err:
        c.parse_decimal(bad)
    assert err.value.reason == "invalid_number"


def test_integers_refuse_fractions_and_json_numbers_stay_numbers() -> None:
    with pytest.raises(c.CleaningError) as err:
        c.parse_integer("12.5")
    assert err.value.reason == "invalid_number"
    assert c.to_json_number(Decimal("1234.56")) == 1234.56
    assert isinstance(c.to_json_number(Decimal("1200")), int)


def test_currencies() -> None:
    for code in c.ISO_CURRENCIES:
        assert c.clean_currency(code.lower()) == code
    assert c.clean_currency("€") == "EUR"
    assert c.clean_currency("£") == "GBP"
    assert c.clean_currency("US$") == "USD"
    assert c.clean_currency("A$") == "AUD"
    for bad in ("kr", "XYZ", "dollars?", "", "12"):
        with pytest.raises(c.CleaningError) as err:
            c.clean_currency(bad)
        assert err.value.reason == "invalid_currency"


# -- booleans and duplicates ---------------------------------------------------------------


def test_booleans() -> None:
    for yes in (True, 1, "true", "TRUE", " yes ", "Y", "1", "on", "oui"):
        assert c.parse_bool(yes) is True
    for no in (False, 0, "false", "No", "n", "0", "OFF", "nein"):
        assert c.parse_bool(no) is False
    for bad in ("maybe", 2, "", None, 1.5):
        with pytest.raises(c.CleaningError) as err:
            c.parse_bool(bad)
        assert err.value.reason == "invalid_boolean"


@hsettings(max_examples=200)
@given(st.lists(st.text(max_size=5), max_size=60))
def test_first_of_each_key_matches_a_set(keys: list[str]) -> None:
    seen: set[str] = set()
    expected = []
    for key in keys:
        expected.append(key not in seen)
        seen.add(key)
    assert c.first_of_each_key(keys) == expected
