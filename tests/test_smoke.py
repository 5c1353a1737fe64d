from sartor.engine import Engine


def test_track_is_stored_once(engine: Engine, workspace) -> None:  # type: ignore[no-untyped-def]
    ws = workspace.workspace
    first = engine.track(ws, "view_item", user_id="u1", message_id="m-1")
    again = engine.track(ws, "view_item", user_id="u1", message_id="m-1")
    assert (first.stored, again.duplicates) == (1, 1)
    rows = engine.events(ws)
    assert [(r["messageId"], r["event"]) for r in rows] == [("m-1", "Product Viewed")]
