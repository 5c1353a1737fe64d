"""Fan-out of live events and profile changes to WebSocket subscribers.

Publishers run on any thread; subscribers are asyncio queues. With Redis, messages go
through pub/sub so a client connected to one API process sees what another process or a
worker published.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

import orjson

log = logging.getLogger("sartor.stream")

OUTBOX_LIMIT = 100_000  # messages waiting for Redis before new ones are dropped


class Broadcaster:
    def __init__(
        self, redis_client: Any | None = None, namespace: str = "sartor", queue_size: int = 1000
    ) -> None:
        self.redis = redis_client
        self.channel = f"{namespace}:stream:"
        self.queue_size = queue_size
        self._subs: dict[
            str, set[tuple[asyncio.AbstractEventLoop, asyncio.Queue[dict[str, Any]]]]
        ] = {}
        self._lock = threading.Lock()
        self._listener: threading.Thread | None = None
        self._pubsub: Any = None
        self._outbox: queue.SimpleQueue[tuple[str, dict[str, Any]] | None] = queue.SimpleQueue()
        self._sender: threading.Thread | None = None
        self._closed = False
        self.dropped = 0
        # Called with (workspace, True) when a workspace gets its first subscriber here and
        # (workspace, False) when its last one leaves (the folding process listens).
        self.watchers: list[Callable[[str, bool], None]] = []

    def publish(self, workspace_id: str, message: dict[str, Any]) -> None:
        self.publish_many(workspace_id, [message])

    def publish_many(self, workspace_id: str, messages: list[dict[str, Any]]) -> None:
        """Messages in order. With Redis they go to a sender thread that pipelines whatever
        has queued: a publisher (the writer, a fold batch) never waits for Redis."""
        if not messages:
            return
        if self.redis is None:
            self._deliver_many(workspace_id, messages)
            return
        with self._lock:
            if self._closed:
                self._send([(workspace_id, m) for m in messages])
                return
            if self._sender is None:
                self._sender = threading.Thread(
                    target=self._send_loop, name="sartor-stream-publish", daemon=True
                )
                self._sender.start()
        if self._outbox.qsize() > OUTBOX_LIMIT:  # Redis is down or far behind: shed load
            self.dropped += len(messages)
            return
        for message in messages:
            self._outbox.put((workspace_id, message))

    def _send_loop(self) -> None:
        while True:
            first = self._outbox.get()
            batch = [first]
            while len(batch) < 1000:
                try:
                    batch.append(self._outbox.get_nowait())
                except queue.Empty:
                    break
            items = [item for item in batch if item is not None]
            if items:
                self._send(items)
            if len(items) < len(batch):
                return

    def _send(self, items: list[tuple[str, dict[str, Any]]]) -> None:
        """One Redis message per workspace for what has queued: a JSON array of the
        messages, in order (one publish and, in every listening process, one message to
        receive and decode, instead of one per event and per profile change)."""
        by_ws: dict[str, list[dict[str, Any]]] = {}
        for workspace_id, message in items:
            by_ws.setdefault(workspace_id, []).append(message)
        try:
            assert self.redis is not None
            if len(by_ws) == 1:
                [(workspace_id, messages)] = by_ws.items()
                self.redis.publish(self.channel + workspace_id, orjson.dumps(messages))
            else:
                pipe = self.redis.pipeline(transaction=False)
                for workspace_id, messages in by_ws.items():
                    pipe.publish(self.channel + workspace_id, orjson.dumps(messages))
                pipe.execute()
        except Exception:
            log.warning("stream publish to Redis failed; delivering locally", exc_info=True)
            for workspace_id, messages in by_ws.items():
                self._deliver_many(workspace_id, messages)

    def _deliver_many(self, workspace_id: str, messages: list[dict[str, Any]]) -> None:
        """To each subscriber's loop, in one call for all the messages (waking an event
        loop from another thread costs a system call)."""
        with self._lock:
            subs = list(self._subs.get(workspace_id, ()))
        for loop, q in subs:
            try:
                loop.call_soon_threadsafe(_offer_many, q, messages)
            except RuntimeError:  # the subscriber's loop is closed
                pass

    def has_subscribers(self, workspace_id: str) -> bool:
        return bool(self._subs.get(workspace_id)) or self.redis is not None

    def subscribe(self, workspace_id: str) -> asyncio.Queue[dict[str, Any]]:
        q: asyncio.Queue[dict[str, Any]] = asyncio.Queue(self.queue_size)
        with self._lock:
            subs = self._subs.setdefault(workspace_id, set())
            first = not subs
            subs.add((asyncio.get_running_loop(), q))
        self._ensure_listener()
        if first:
            self._tell_watchers(workspace_id, True)
        return q

    def unsubscribe(self, workspace_id: str, q: asyncio.Queue[dict[str, Any]]) -> None:
        with self._lock:
            subs = self._subs.get(workspace_id, set())
            had = bool(subs)
            for item in [s for s in subs if s[1] is q]:
                subs.discard(item)
            last = had and not subs
        if last:
            self._tell_watchers(workspace_id, False)

    def _tell_watchers(self, workspace_id: str, present: bool) -> None:
        for watcher in self.watchers:
            try:
                watcher(workspace_id, present)
            except Exception:
                log.warning("subscriber watcher failed", exc_info=True)

    def _ensure_listener(self) -> None:
        if self.redis is None or self._listener is not None:
            return
        self._pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        self._pubsub.psubscribe(self.channel + "*")
        self._listener = threading.Thread(target=self._listen, name="sartor-stream", daemon=True)
        self._listener.start()

    def _listen(self) -> None:
        while self._pubsub is not None:
            try:
                msg = self._pubsub.get_message(timeout=1.0)
            except Exception:
                log.warning("stream subscription lost", exc_info=True)
                return
            if msg and msg.get("type") == "pmessage":
                channel = (
                    msg["channel"].decode() if isinstance(msg["channel"], bytes) else msg["channel"]
                )
                data = orjson.loads(msg["data"])
                # An array of messages (see _send), or one message (an older publisher).
                self._deliver_many(
                    channel[len(self.channel) :], data if isinstance(data, list) else [data]
                )

    def close(self) -> None:
        """Send what is queued, then stop listening."""
        with self._lock:
            self._closed = True
            sender, self._sender = self._sender, None
        if sender is not None:
            self._outbox.put(None)
            sender.join(10)
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            try:
                pubsub.close()
            except Exception:
                pass


def _offer(q: asyncio.Queue[dict[str, Any]], message: dict[str, Any]) -> None:
    if q.full():  # a slow client loses its oldest message, never blocks the engine
        q.get_nowait()
    q.put_nowait(message)


def _offer_many(q: asyncio.Queue[dict[str, Any]], messages: list[dict[str, Any]]) -> None:
    for message in messages:
        _offer(q, message)
