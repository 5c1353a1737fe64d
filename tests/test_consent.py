"""Consent is enforced where data enters (DESIGN invariant 4)."""

from __future__ import annotations

import pytest

from sartor.engine import Engine, NotFound
from sartor.privacy.consent import allowed, apply_consent, consent_statements, merge_consent
from sartor.privacy.pii import apply_location_policy, truncate_ip

CATS = ("necessary", "analytics", "personalization", "marketing", "location", "social")


def test_opt_in_and_opt_out_rules() -> None:
    assert allowed({}, "necessary", "opt_in")
    assert not allowed({}, "analytics", "opt_in")
    assert allowed({}, "analytics", "opt_out")
    granted = apply_consent({}, {"analytics": True}, 10, "test")
    declined = apply_consent({}, {"analytics": False}, 10, "test")
    assert allowed(granted, "analytics", "opt_in")
    assert not allowed(declined, "analytics", "opt_out")


def test_newer_statement_wins_whatever_the_arrival_order() -> None:
    newer = apply_consent({}, {"analytics": False}, 200, "a")
    assert apply_consent(newer, {"analytics": True}, 100, "b")["analytics"]["granted"] is False
    older = apply_consent({}, {"analytics": True}, 100, "b")
    merged = merge_consent(older, newer)
    assert merged == merge_consent(newer, older)
    assert merged["analytics"]["granted"] is False


def test_statement_sources() -> None:
    ctx = {"consent": {"categoryPreferences": {"Analytics": True, "Advertising": False}}}
    assert consent_statements(ctx, None, None, "x", CATS) == (
        {"analytics": True},
        "context.consent",
    )
    props = {"categoryPreferences": {"marketing": "granted"}}
    assert consent_statements(None, props, None, "Segment Consent Preference Updated", CATS) == (
        {"marketing": True},
        "event",
    )
    assert consent_statements(None, None, {"consent": {"location": False}}, None, CATS) == (
        {"location": False},
        "traits.consent",
    )
    # `necessary` cannot be declined, and unknown or unparseable values are ignored.
    assert (
        consent_statements(
            {"consent": {"categoryPreferences": {"necessary": False}}}, None, None, "x", CATS
        )
        is None
    )


def test_ip_truncation_and_location_policy() -> None:
    assert truncate_ip("203.0.113.77") == "203.0.113.0"
    assert truncate_ip("2001:db8:abcd:12::1") == "2001:db8:abcd::"
    assert truncate_ip("not-an-ip") is None
    ctx = {"ip": "203.0.113.77", "location": {"city": "Lyon"}, "locale": "fr"}
    assert apply_location_policy(ctx, False, "truncate") == {"locale": "fr"}
    assert apply_location_policy(ctx, True, "truncate")["ip"] == "203.0.113.0"
    assert apply_location_policy(ctx, True, "keep")["ip"] == "203.0.113.77"
    assert "ip" not in apply_location_policy(ctx, True, "drop")


def _behavioural(engine: Engine, ws, user: str) -> list[dict]:  # type: ignore[no-untyped-def]
    return [
        e for e in engine.events(ws, user=user, limit=1000) if e["consentCategory"] != "necessary"
    ]


def test_opt_in_stores_nothing_behavioural_until_granted_and_stops_after_revoke(
    engine: Engine,
) -> None:
    ws = engine.create_workspace("strict", consent_mode="opt_in").workspace
    user = "anon-1"
    for i in range(3):
        r = engine.track(ws, "Product Viewed", anonymous_id=user, properties={"product_id": str(i)})
        assert r.dropped == {"consent": 1}
    r = engine.page(ws, anonymous_id=user, name="Home")
    assert r.dropped == {"consent": 1}
    assert _behavioural(engine, ws, user) == []
    with pytest.raises(NotFound):  # not even a profile or an identity link
        engine.export_user(ws, user)

    # Grant analytics through Segment's consent context on an ordinary event: that event is
    # already allowed, because consent is applied before the gate.
    grant = {"consent": {"categoryPreferences": {"analytics": True}}}
    r = engine.track(
        ws, "Product Viewed", anonymous_id=user, context=grant, properties={"product_id": "p"}
    )
    assert r.stored == 1
    engine.track(ws, "Product Added", anonymous_id=user, properties={"product_id": "p"})
    assert len(_behavioural(engine, ws, user)) == 2

    # Revoke with a consent event: it is stored (necessary), the next behaviour is not.
    r = engine.track(
        ws,
        "Segment Consent Preference Updated",
        anonymous_id=user,
        properties={"categoryPreferences": {"analytics": False}},
    )
    assert r.stored == 1
    r = engine.track(ws, "Product Viewed", anonymous_id=user, properties={"product_id": "q"})
    assert r.dropped == {"consent": 1}
    assert len(_behavioural(engine, ws, user)) == 2
    profile = engine.export_user(ws, user)["profiles"][0]
    assert profile["consent"]["analytics"]["granted"] is False
    assert profile["consent"]["analytics"]["source"] == "event"


def test_opt_in_user_who_never_granted_has_zero_events(engine: Engine) -> None:
    ws = engine.create_workspace("strict2", consent_mode="opt_in").workspace
    batch = [
        {
            "type": "track",
            "event": "Product Viewed",
            "userId": "never",
            "properties": {"product_id": str(i)},
        }
        for i in range(20)
    ] + [{"type": "page", "userId": "never", "name": "Home"}]
    r = engine.ingest(ws, batch)
    assert r.dropped == {"consent": 21} and r.stored == 0
    assert engine.events(ws, user="never") == []


def test_opt_out_stores_until_declined(engine: Engine) -> None:
    ws = engine.create_workspace("relaxed", consent_mode="opt_out").workspace
    assert engine.track(ws, "Product Viewed", user_id="u").stored == 1
    engine.identify(ws, user_id="u", traits={"consent": {"analytics": False}})
    assert engine.track(ws, "Product Viewed", user_id="u").dropped == {"consent": 1}


def test_location_is_dropped_without_location_consent(engine: Engine) -> None:
    ws = engine.create_workspace("geo", consent_mode="opt_in").workspace
    ctx = {
        "ip": "198.51.100.23",
        "location": {"city": "Oslo"},
        "consent": {"categoryPreferences": {"analytics": True}},
    }
    engine.track(ws, "Product Viewed", user_id="u", context=ctx, message_id="no-loc")
    ctx["consent"] = {"categoryPreferences": {"analytics": True, "location": True}}
    engine.track(ws, "Product Viewed", user_id="u", context=ctx, message_id="with-loc")
    by_id = {e["messageId"]: e["context"] for e in engine.events(ws)}
    assert "ip" not in by_id["no-loc"] and "location" not in by_id["no-loc"]
    assert by_id["with-loc"]["ip"] == "198.51.100.0"
    assert by_id["with-loc"]["location"] == {"city": "Oslo"}


def test_dropped_events_are_counted_by_reason_in_the_response(client, engine: Engine) -> None:  # type: ignore[no-untyped-def]
    created = engine.create_workspace("counted", consent_mode="opt_in")
    r = client.post(
        "/v1/batch",
        auth=(created.keys["write"], ""),
        json={
            "batch": [
                {"type": "track", "event": "Product Viewed", "userId": "u1"},
                {"type": "identify", "userId": "u1", "traits": {"plan": "pro"}},
                {"type": "page", "userId": "u1"},
            ]
        },
    )
    assert r.status_code == 200
    body = r.json()
    assert body["stored"] == 1 and body["dropped"] == {"consent": 2}
    assert [i["status"] for i in body["items"]] == ["dropped", "stored", "dropped"]
    metrics = client.get("/metrics").text
    assert 'sartor_events_dropped_total{reason="consent"}' in metrics


@pytest.mark.parametrize("mode", ["opt_in", "opt_out"])
def test_event_category_map_is_configurable(engine: Engine, mode: str) -> None:
    ws = engine.create_workspace(f"map-{mode}", consent_mode=mode).workspace
    ws = engine.update_workspace_settings(ws, {"event_categories": {"Heartbeat": "necessary"}})
    assert engine.track(ws, "Heartbeat", user_id="u").stored == 1
