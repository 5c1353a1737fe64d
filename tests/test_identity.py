"""Identity resolution: anonymousId <-> userId, alias, and no automatic merge of two users."""

from __future__ import annotations

from sqlalchemy import select

from sartor.engine import Engine
from sartor.storage.tables import events, identities, profiles


def _profile_of(engine: Engine, ws, any_id: str) -> str:  # type: ignore[no-untyped-def]
    return engine.export_user(ws, any_id)["profiles"][0]["profileId"]


def test_identify_links_the_anonymous_history_to_the_user(engine: Engine, workspace) -> None:  # type: ignore[no-untyped-def]
    ws = workspace.workspace
    engine.track(ws, "Product Viewed", anonymous_id="a1", properties={"product_id": "1"})
    engine.identify(ws, anonymous_id="a1", user_id="u1")
    engine.track(ws, "Order Completed", user_id="u1")
    rows = engine.events(ws)
    assert len({r["profileId"] for r in rows}) == 1
    assert _profile_of(engine, ws, "a1") == _profile_of(engine, ws, "u1")


def test_separate_profiles_merge_when_an_event_carries_both_ids(engine: Engine, workspace) -> None:  # type: ignore[no-untyped-def]
    ws = workspace.workspace
    engine.track(ws, "Product Viewed", anonymous_id="a2")
    engine.track(ws, "Product Viewed", user_id="u2")  # a separate, identified profile
    assert _profile_of(engine, ws, "a2") != _profile_of(engine, ws, "u2")
    engine.track(ws, "Product Added", anonymous_id="a2", user_id="u2")
    pid = _profile_of(engine, ws, "u2")
    assert _profile_of(engine, ws, "a2") == pid
    # Every stored event carries the canonical profile id, earlier ones included.
    assert {r["profileId"] for r in engine.events(ws)} == {pid}
    with engine.db.connect() as conn:
        assert conn.execute(select(profiles.c.profile_id)).scalars().all() == [pid]


def test_two_identified_users_are_never_merged_automatically(engine: Engine, workspace) -> None:  # type: ignore[no-untyped-def]
    ws = workspace.workspace
    engine.identify(ws, anonymous_id="shared-device", user_id="alice")
    engine.identify(ws, anonymous_id="shared-device", user_id="bob")
    alice, bob = _profile_of(engine, ws, "alice"), _profile_of(engine, ws, "bob")
    assert alice != bob
    assert _profile_of(engine, ws, "shared-device") == alice  # the first link stands
    engine.track(ws, "Product Viewed", anonymous_id="shared-device", user_id="bob")
    by_user = {
        r["userId"]: r["profileId"]
        for r in engine.events(ws)
        if r["type"] == "track" and not r["event"].startswith("Segment ")
    }
    assert by_user == {"bob": bob}


def test_alias_merges_previous_id_into_the_user(engine: Engine, workspace) -> None:  # type: ignore[no-untyped-def]
    ws = workspace.workspace
    engine.track(ws, "Product Viewed", anonymous_id="old-anon")
    engine.track(ws, "Product Viewed", user_id="new-user")
    result = engine.alias(ws, previous_id="old-anon", user_id="new-user")
    assert result.stored == 1
    assert _profile_of(engine, ws, "old-anon") == _profile_of(engine, ws, "new-user")


def test_alias_refuses_to_merge_two_identified_users(engine: Engine, workspace) -> None:  # type: ignore[no-untyped-def]
    ws = workspace.workspace
    engine.identify(ws, anonymous_id="x", user_id="carol")
    engine.identify(ws, user_id="dave")
    engine.identify(ws, anonymous_id="x2", user_id="erin")
    result = engine.alias(ws, previous_id="x", user_id="dave")  # x belongs to carol
    assert result.errors and result.errors[0]["field"] == "previousId"
    assert _profile_of(engine, ws, "carol") != _profile_of(engine, ws, "dave")
    # Renaming a user id (previousId is the old userId itself) is allowed.
    assert engine.alias(ws, previous_id="erin", user_id="erin-new").stored == 1
    assert _profile_of(engine, ws, "erin-new") == _profile_of(engine, ws, "x2")


def test_identity_in_one_batch_matches_identity_across_batches(engine: Engine) -> None:
    calls = [
        {"type": "track", "event": "Product Viewed", "anonymousId": "a"},
        {"type": "track", "event": "Product Viewed", "userId": "u"},
        {"type": "identify", "anonymousId": "a", "userId": "u"},
        {"type": "track", "event": "Order Completed", "anonymousId": "a"},
    ]
    one = engine.create_workspace("one-batch").workspace
    many = engine.create_workspace("many-batches").workspace
    engine.ingest(one, [dict(c, messageId=f"m{i}") for i, c in enumerate(calls)])
    for i, c in enumerate(calls):
        engine.ingest(many, [dict(c, messageId=f"m{i}")])

    def shape(ws) -> list[tuple[str, int]]:  # type: ignore[no-untyped-def]
        rows = engine.events(ws)
        first = {}
        for r in rows:
            first.setdefault(r["profileId"], len(first))
        return [(r["messageId"], first[r["profileId"]]) for r in rows]

    assert shape(one) == shape(many) == [("m0", 0), ("m1", 0), ("m2", 0), ("m3", 0)]
    with engine.db.connect() as conn:
        for ws in (one, many):
            n = conn.execute(select(identities).where(identities.c.workspace_id == ws.id)).all()
            assert len(n) == 2
            pids = conn.execute(
                select(events.c.profile_id).where(events.c.workspace_id == ws.id).distinct()
            ).all()
            assert len(pids) == 1


def test_a_full_batch_resolves_known_new_and_duplicate_ids_at_once(
    engine: Engine,
    workspace,  # type: ignore[no-untyped-def]
) -> None:
    """2,500 items in one group: every lookup list (ids, profiles, messageIds) is far past
    the 900 values a statement once took, and each item still gets its own answer."""
    ws = workspace.workspace
    known = engine.batch(
        ws,
        {
            "batch": [
                {
                    "type": "identify",
                    "messageId": f"k-{i}",
                    "anonymousId": f"a-{i}",
                    "userId": f"u-{i}",
                }
                for i in range(1200)
            ]
        },
    )
    assert known.stored == 1200
    items = []
    for i in range(2500):
        if i < 300:  # redelivered
            items.append({"type": "identify", "messageId": f"k-{i}", "anonymousId": f"a-{i}"})
        elif i < 1200:  # a known visitor, by either id
            who = {"anonymousId": f"a-{i}"} if i % 2 else {"userId": f"u-{i}"}
            items.append({"type": "track", "event": "Product Viewed", "messageId": f"n-{i}", **who})
        else:  # a new visitor
            items.append(
                {
                    "type": "track",
                    "event": "Product Viewed",
                    "messageId": f"n-{i}",
                    "anonymousId": f"a-{i}",
                }
            )
    result = engine.batch(ws, {"batch": items})
    assert (result.stored, result.duplicates, result.errors) == (2200, 300, [])
    with engine.db.connect() as conn:
        links = dict(
            conn.execute(
                select(identities.c.value, identities.c.profile_id).where(
                    identities.c.workspace_id == ws.id, identities.c.kind == "anonymous_id"
                )
            ).all()
        )
        stored = dict(
            conn.execute(
                select(events.c.message_id, events.c.profile_id).where(
                    events.c.workspace_id == ws.id, events.c.message_id.like("n-%")
                )
            ).all()
        )
        n_profiles = len(conn.execute(select(profiles.c.profile_id)).all())
    assert len(stored) == 2200
    for i in range(300, 2500):
        assert stored[f"n-{i}"] == links[f"a-{i}"], i  # the visitor's one profile
    assert n_profiles == 1200 + 1300  # the known ones, and one per new visitor
