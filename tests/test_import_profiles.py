"""CRM and social imports on SQLite and PostgreSQL: cleaning, rejects, joining, consent."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from sartor.engine import Engine, NotFound
from sartor.importers import ImportConfigError, run_import
from sartor.importers.profiles import email_hash
from sartor.storage.tables import events

HEADER = [
    "Customer ID",
    "E-mail",
    "First Name",
    "Last Name",
    "Phone",
    "Loyalty Points",
    "LTV",
    "Customer Since",
    "Country",
    "Favourite colour",
]
GOOD = [
    [
        "c-1",
        "  Ann.Smith@Example.COM ",
        " Ann ",
        "Smith",
        "07911 123456",
        "1,200",
        "€1.234,56",
        "14/03/2021",
        "gb",
        "  deep   blue ",
    ],
    [
        "c-2",
        "bob@example.com",
        "Bob",
        "Jones",
        "+33 1 23 45 67 89",
        "10",
        "$99.90",
        "2020-01-31",
        "FR",
        "",
    ],
    ["c-3", "", "Cara", "", "", "0", "1 234.50", "1615766400", "DE", "red"],
]
BAD = [
    # (row, reason, field)
    (
        ["c-4", "dora(at)example.com", "Dora", "", "", "5", "10", "2021-01-01", "", ""],
        "invalid_email",
        "E-mail",
    ),
    (
        ["c-5", "eve@example.com", "Eve", "", "", "5", "10", "2021-02-30", "", ""],
        "invalid_date",
        "Customer Since",
    ),
    (
        ["c-6", "fay@example.com", "Fay", "", "", "5", "lots", "2021-01-01", "", ""],
        "invalid_number",
        "LTV",
    ),
    (
        ["c-1", "ann.other@example.com", "Ann", "Dup", "", "1", "1", "2021-01-01", "", ""],
        "duplicate_key",
        "user_id",
    ),
    (
        ["c-7", "gus@example.com", "Gus", "", "12", "5", "10", "2021-01-01", "", ""],
        "invalid_phone",
        "Phone",
    ),
    (
        ["c-8", "hal@example.com", "Hal", "", "", "5", "10", "01/02/2021", "", ""],
        "ambiguous_date",
        "Customer Since",
    ),
    (["", "", "Ivy", "", "", "5", "10", "2021-01-01", "", ""], "missing_id", None),
]


def write_csv(path: Path, rows: list[list[str]], header: list[str] = HEADER) -> Path:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows(rows)
    path.write_text(buf.getvalue(), encoding="utf-8")
    return path


def rejects_of(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def identify_count(engine: Engine, ws_id: str) -> int:
    """Identify messages in the log (folding also logs Sartor's own segment events)."""
    with engine.db.connect() as conn:
        return int(
            conn.execute(
                select(func.count())
                .select_from(events)
                .where(events.c.workspace_id == ws_id, events.c.type == "identify")
            ).scalar_one()
        )


def test_crm_cleaning_rejects_and_imports(engine: Engine, tmp_path: Path) -> None:
    """The acceptance test: malformed rows land in rejects with their reason; the good rows
    are imported with cleaned traits (PII kept in clear here so the cleaning shows)."""
    ws = engine.create_workspace("crm", settings={"pii_policy": "keep"}).workspace
    rows = [GOOD[0], BAD[0][0], GOOD[1], BAD[1][0], BAD[2][0], BAD[3][0], GOOD[2]]
    rows += [b[0] for b in BAD[4:]]
    source = write_csv(tmp_path / "crm.csv", rows)
    summary = run_import(engine, ws, source, "profiles")

    assert summary.read == len(GOOD) + len(BAD)
    assert summary.imported == len(GOOD)
    expected = {reason for _, reason, _ in BAD}
    assert dict(summary.rejected) == {reason: 1 for reason in expected}
    rejects = rejects_of(tmp_path / "crm.csv.rejects.jsonl")
    by_reason = {r["reason"]: r for r in rejects}
    assert set(by_reason) == expected
    for row, reason, field in BAD:
        got = by_reason[reason]
        assert got["field"] == field
        assert got["row"]["Customer ID"] == row[0]
        assert got["line"] == rows.index(row) + 2  # the header is line 1
    # Rows are refused whole: nothing of them reached the log.
    for user in ("c-4", "c-5", "c-6", "c-7", "c-8"):
        with pytest.raises(NotFound):
            engine.profile(ws, user)

    ann = engine.profile(ws, "c-1")["traits"]
    assert ann == {
        "email": "ann.smith@example.com",
        "firstName": "Ann",
        "lastName": "Smith",
        "phone": "+447911123456",
        "loyaltyPoints": 1200,
        "lifetimeValue": 1234.56,
        "currency": "EUR",
        "customerSince": "2021-03-14",
        "country": "GB",
        "Favourite colour": "deep blue",
    }
    assert isinstance(ann["loyaltyPoints"], int)
    bob = engine.profile(ws, "bob@example.com")  # found by e-mail too
    assert bob["traits"]["phone"] == "+33123456789"
    assert bob["traits"]["lifetimeValue"] == 99.9
    assert bob["traits"]["currency"] == "USD"
    assert bob["traits"]["customerSince"] == "2020-01-31"
    assert "Favourite colour" not in bob["traits"]  # an empty cell sets nothing
    cara = engine.profile(ws, "c-3")["traits"]
    assert cara["lifetimeValue"] == 1234.5
    assert cara["customerSince"] == "2021-03-15T00:00:00Z"  # epoch seconds
    assert "email" not in cara and "currency" not in cara


def test_reimporting_the_same_file_changes_nothing(engine: Engine, tmp_path: Path) -> None:
    ws = engine.create_workspace("crm").workspace
    source = write_csv(tmp_path / "crm.csv", [*GOOD, BAD[0][0]])
    first = run_import(engine, ws, source, "profiles")
    assert (first.imported, first.rejected_total) == (3, 1)
    before = identify_count(engine, ws.id)
    traits = engine.profile(ws, "c-1")["traits"]
    # Column order and a renamed file do not matter: the messageId is the row's content.
    reordered = tmp_path / "again.csv"
    write_csv(
        reordered,
        [[r[i] for i in (1, 0, *range(2, 10))] for r in GOOD],
        [HEADER[1], HEADER[0], *HEADER[2:]],
    )
    again = run_import(engine, ws, reordered, "profiles")
    assert (again.imported, again.duplicates) == (0, 3)
    assert identify_count(engine, ws.id) == before
    assert engine.profile(ws, "c-1")["traits"] == traits
    # A changed row is a new identify, and its traits win.
    changed = write_csv(tmp_path / "changed.csv", [[*GOOD[0][:5], "1,500", *GOOD[0][6:]]])
    assert run_import(engine, ws, changed, "profiles").imported == 1
    assert engine.profile(ws, "c-1")["traits"]["loyaltyPoints"] == 1500
    assert engine.rebuild(ws) >= 1
    assert engine.profile(ws, "c-1")["traits"]["loyaltyPoints"] == 1500


def test_rows_join_by_email_hashed_when_pii_hashing_is_on(engine: Engine, tmp_path: Path) -> None:
    ws = engine.create_workspace("crm").workspace  # pii_policy: hash (the default)
    engine.identify(ws, user_id="u-9", traits={"email": "Known@Example.com"})
    source = write_csv(
        tmp_path / "crm.csv",
        [
            ["", " KNOWN@example.com", "Kim", "", "", "7", "", "", "", ""],
            ["", "new@example.com", "Nia", "", "", "3", "", "", "", ""],
        ],
    )
    summary = run_import(engine, ws, source, "profiles")
    assert summary.imported == 2
    known = engine.profile(ws, "u-9")
    assert known["traits"]["firstName"] == "Kim"  # joined the existing profile
    assert known["traits"]["loyaltyPoints"] == 7
    # The stored e-mail is the keyed hash of the cleaned address, never the address.
    h = email_hash(engine, ws, "known@example.com")
    assert known["traits"]["email"] == f"hmac-sha256:{h}"
    assert len(engine.profiles(ws)[0]) == 2

    new = engine.profile(ws, "new@example.com")
    h_new = email_hash(engine, ws, "new@example.com")
    assert {"kind": "anonymous_id", "value": f"email:{h_new}"} in new["identities"]
    assert all(i["kind"] != "user_id" for i in new["identities"])
    assert "new@example.com" not in orjson.dumps(new).decode()

    # Later the CRM knows her user id: the e-mail-only profile becomes hers (one profile).
    later = write_csv(
        tmp_path / "later.csv",
        [["u-20", "New@Example.com", "Nia", "Noor", "", "4", "", "", "", ""]],
    )
    assert run_import(engine, ws, later, "profiles").imported == 1
    merged = engine.profile(ws, "u-20")
    assert merged["profileId"] == engine.profile(ws, "new@example.com")["profileId"]
    assert merged["traits"]["lastName"] == "Noor"
    assert len(engine.profiles(ws)[0]) == 2


def test_mapping_file_key_and_options(engine: Engine, tmp_path: Path) -> None:
    ws = engine.create_workspace("crm", settings={"pii_policy": "keep"}).workspace
    source = write_csv(
        tmp_path / "export.csv",
        [
            ["A@x.io", "01/02/2021", "yes", "12,5", "secret", "FR 06 12 34 56 78"],
            ["a@X.io", "03/02/2021", "no", "1", "secret", ""],
            ["b@x.io", "13/02/2021", "maybe", "1", "", ""],
        ],
        ["Mail", "Joined", "Newsletter", "Spend", "Internal", "Mobile"],
    )
    mapping = tmp_path / "crm.yaml"
    mapping.write_text(
        "columns:\n  Mail: email\n  Joined: customer_since\n  Spend: lifetime_value\n"
        "  Internal: null\n  Mobile: phone\n"
        "types:\n  Newsletter: boolean\n"
        "key: email\nday_first: true\ndecimal_comma: true\nregion: FR\ncurrency: EUR\n"
    )
    summary = run_import(engine, ws, source, "profiles", mapping=mapping)
    assert summary.imported == 1
    assert dict(summary.rejected) == {"duplicate_key": 1, "invalid_boolean": 1}
    traits = engine.profile(ws, "a@x.io")["traits"]
    assert traits == {
        "email": "a@x.io",
        "customerSince": "2021-02-01",
        "Newsletter": True,
        "lifetimeValue": 12.5,
        "currency": "EUR",
        "phone": "+33612345678",
    }
    with pytest.raises(ImportConfigError, match="day_frist"):
        run_import(engine, ws, source, "profiles", mapping={"day_frist": True, "key": "email"})
    with pytest.raises(ImportConfigError, match="key"):
        run_import(engine, ws, source, "profiles", options={"key": "phone"})


def test_jsonl_records_keep_their_types(engine: Engine, tmp_path: Path) -> None:
    ws = engine.create_workspace("crm").workspace
    source = tmp_path / "crm.jsonl"
    source.write_bytes(
        b'{"user_id": 17, "points": 3.0, "address": {"city": "Leeds"}, "vip": true}\n'
        b"not json\n"
        b'{"user_id": "u-2", "ltv": "12,50 EUR", "currency": "GBP"}\n'
    )
    summary = run_import(engine, ws, source, "profiles")
    assert summary.imported == 1
    reasons = {r["reason"] for r in rejects_of(tmp_path / "crm.jsonl.rejects.jsonl")}
    assert "invalid_currency" in reasons  # an amount in EUR for a GBP customer
    assert len(reasons) == 2  # and the line that is not JSON
    traits = engine.profile(ws, "17")["traits"]
    assert traits == {"loyaltyPoints": 3, "address": {"city": "Leeds"}, "vip": True}


# -- social signals ------------------------------------------------------------------------


def social_file(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    return path


def consent(granted: bool) -> dict[str, Any]:
    return {"consent": {"categoryPreferences": {"social": granted}}}


def test_social_signals_respect_consent(engine: Engine, tmp_path: Path) -> None:
    ws = engine.create_workspace("social", consent_mode="opt_in").workspace
    engine.identify(ws, user_id="yes", context=consent(True))
    engine.identify(ws, user_id="no", context=consent(False))
    engine.identify(ws, user_id="silent")  # opt-in: no statement is no consent
    engine.identify(ws, user_id="mail", traits={"email": "Mo@Example.com"}, context=consent(True))
    records = [
        {
            "id": "10",
            "userId": "yes",
            "interests": [{"name": " Hiking ", "category": "Outdoors"}, {"name": "hiking"}],
            "likes": {"data": [{"name": "Patagonia", "category": "Clothing", "id": "p1"}]},
        },
        {"id": "11", "userId": "no", "interests": [{"name": "Chess", "category": "Games"}]},
        {"id": "12", "userId": "silent", "interests": [{"name": "Golf"}]},
        {"id": "13", "email": "mo@example.COM", "interests": ["Cooking", "Travel"]},
        {"id": "14", "userId": "yes", "interests": [{"category": "no name"}]},
    ]
    source = social_file(tmp_path / "fb.jsonl", records)
    summary = run_import(engine, ws, source, "social", options={"source": "Facebook"})
    assert summary.imported == 2
    assert dict(summary.rejected) == {"dropped: consent": 2, "invalid_signal": 1}

    social = engine.profile(ws, "yes")["traits"]["social"]
    assert [(i["name"], i.get("category"), i["source"]) for i in social["interests"]] == [
        ("Hiking", "Outdoors", "facebook")
    ]
    assert social["likes"][0]["name"] == "Patagonia" and social["likes"][0]["id"] == "p1"
    assert social["accounts"] == {"facebook": "10"}
    assert social["interests"][0]["importedAt"].endswith("Z")
    for person in ("no", "silent"):
        assert "social" not in engine.profile(ws, person)["traits"]
    mo = engine.profile(ws, "mail")["traits"]["social"]  # joined by e-mail
    assert [i["name"] for i in mo["interests"]] == ["Cooking", "Travel"]
    # Nothing about the refused people is in the log either; the stored signals are filed
    # under the social category (what consent withdrawal and exports go by).
    refused = [e for e in engine.events(ws, user="no") if e["type"] == "identify"]
    assert len(refused) == 1 and "social" not in refused[0].get("traits", {})
    stored = [e for e in engine.events(ws, user="yes") if "social" in e.get("traits", {})]
    assert [e["consentCategory"] for e in stored] == ["social"]

    # A second source adds to the first; re-running a file stores nothing.
    ig = social_file(
        tmp_path / "ig.jsonl", [{"userId": "yes", "interests": [{"name": "Climbing"}]}]
    )
    assert run_import(engine, ws, ig, "social", options={"source": "instagram"}).imported == 1
    assert run_import(engine, ws, ig, "social", options={"source": "instagram"}).duplicates == 1
    names = [
        (i["name"], i["source"]) for i in engine.profile(ws, "yes")["traits"]["social"]["interests"]
    ]
    assert names == [("Hiking", "facebook"), ("Climbing", "instagram")]
    # Derived state: a rebuild from the log gives the same traits.
    before = engine.profile(ws, "yes")["traits"]
    engine.rebuild(ws)
    assert engine.profile(ws, "yes")["traits"] == before


def test_social_opt_out_workspace_drops_only_those_who_declined(
    engine: Engine, tmp_path: Path
) -> None:
    ws = engine.create_workspace("social", consent_mode="opt_out").workspace
    engine.identify(ws, user_id="declined", context=consent(False))
    engine.identify(ws, user_id="quiet")
    source = social_file(
        tmp_path / "s.jsonl",
        [
            {"userId": "declined", "interests": ["Chess"]},
            {"userId": "quiet", "interests": ["Golf"]},
            {"userId": "two-sources", "interests": ["Tennis"], "source": "twitter"},
            {"userId": "two-sources", "interests": ["Squash"]},
        ],
    )
    summary = run_import(engine, ws, source, "social", options={"source": "facebook"})
    assert summary.imported == 3
    assert dict(summary.rejected) == {"dropped: consent": 1}
    assert "social" not in engine.profile(ws, "declined")["traits"]
    assert engine.profile(ws, "quiet")["traits"]["social"]["interests"][0]["name"] == "Golf"
    # Two sources for one person in one file: each sees the other.
    both = engine.profile(ws, "two-sources")["traits"]["social"]["interests"]
    assert sorted((i["name"], i["source"]) for i in both) == [
        ("Squash", "facebook"),
        ("Tennis", "twitter"),
    ]
    with pytest.raises(ImportConfigError, match="unknown key"):
        run_import(engine, ws, source, "social", mapping={"sauce": "x"})
    no_source = run_import(engine, ws, source, "social")
    assert dict(no_source.rejected) == {"missing_source": 3}  # the twitter row has its own


def test_cli_import_profiles_and_social(tmp_path: Path) -> None:
    from sartor.cli import app

    runner = CliRunner()
    home = ["--home", str(tmp_path / "home")]
    created = runner.invoke(
        app, [*home, "workspace", "create", "shop", "--consent-mode", "opt_out"]
    )
    assert created.exit_code == 0, created.output
    source = write_csv(tmp_path / "crm.csv", [*GOOD, BAD[5][0]])
    result = runner.invoke(
        app, [*home, "import", "profiles", str(source), "-w", "shop", "--day-first", "--json"]
    )
    assert result.exit_code == 0, result.output
    doc = orjson.loads(result.stdout.strip().splitlines()[-1])
    assert (doc["read"], doc["imported"], doc["rejected"]) == (4, 4, 0)  # day-first: no ambiguity
    signals = social_file(tmp_path / "s.jsonl", [{"userId": "c-1", "interests": ["Hiking"]}])
    result = runner.invoke(
        app,
        [*home, "import", "social", str(signals), "-w", "shop", "--source", "facebook", "--json"],
    )
    assert result.exit_code == 0, result.output
    assert orjson.loads(result.stdout.strip().splitlines()[-1])["imported"] == 1
    bad = runner.invoke(
        app, [*home, "import", "profiles", str(source), "-w", "shop", "--key", "phone"]
    )
    assert bad.exit_code == 2
    assert "key" in bad.output
