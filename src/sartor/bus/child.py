"""The embedded bus across two processes: `sartor serve` folds profiles in a child process.

Without Redis, `sartor serve` would fold profiles on a thread of its own process, where
folding (about as costly per event as storing it) and ingestion take turns holding one
interpreter lock: the server used one core whatever the machine had. Here the server
starts a child process that folds, and the two talk over a socket pair:

* server -> child: which ``(workspace, profile)`` pairs have new events (the writer's
  commits), erasures (the child forgets the person's hot state and cached fold state),
  which workspaces have live stream subscribers, and requests for a profile's hot state;
* child -> server: the profiles it changed (the server drops their cached
  recommendation lists and streams them to subscribers), the events it wrote (segment
  transitions) for subscribers, and the answers to requests.

Nothing is lost if the child dies or a message is dropped: the log is the truth, and the
child replays it past its checkpoint when it starts and every ``reconcile_seconds``
(as the in-process bus does). The server restarts a child that died; a child whose server
died (its end of the socket closed) stops.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from sartor.config import Settings

log = logging.getLogger("sartor.bus")

# Not `-m sartor.bus.child`: the engine imports this module, which would then run twice.
_CHILD_MAIN = "from sartor.bus.child import main; main()"
RESTART_DELAY = 1.0  # seconds before a child that died is started again
REQUEST_TIMEOUT = 5.0


class ChildProcessBus:
    """The server's side: notifications out, profile changes in."""

    def __init__(
        self,
        settings: Settings,
        on_changes: Callable[[list[tuple[str, str]], dict[str, list[dict[str, Any]]]], None],
        on_events: Callable[[str, list[dict[str, Any]]], None],
    ) -> None:
        self.settings = settings
        self.on_changes = on_changes
        self.on_events = on_events
        self._conn: Connection | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._send_lock = threading.Lock()
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None
        self._watched: set[str] = set()
        self._ids = itertools.count(1)
        self._replies: dict[int, tuple[threading.Event, list[Any]]] = {}
        self.restarts = 0

    # -- to the child -----------------------------------------------------------------------

    def notify(self, pairs: list[tuple[str, str]], max_seq: int) -> None:
        self._send(["n", pairs])

    def erase(self, ws: str, pid: str) -> None:
        self._send(["e", ws, pid])

    def watch(self, ws: str, present: bool) -> None:
        """Whether ``ws`` has live stream subscribers (the child sends their profile
        changes in full only then)."""
        if present:
            self._watched.add(ws)
        else:
            self._watched.discard(ws)
        self._send(["s", ws, present])

    def recent(self, ws: str, pid: str) -> list[dict[str, Any]] | None:
        """The profile's recent items in the child's hot state; None if it cannot say."""
        rid = next(self._ids)
        done, box = threading.Event(), list[Any]()
        self._replies[rid] = (done, box)
        try:
            if not self._send(["r", rid, ws, pid]) or not done.wait(REQUEST_TIMEOUT):
                return None
            return box[0] if box else None
        finally:
            self._replies.pop(rid, None)

    def _send(self, message: list[Any]) -> bool:
        data = orjson.dumps(message)
        with self._send_lock:
            conn = self._conn
            if conn is None:
                return False  # between children: the next one replays the log
            try:
                conn.send_bytes(data)
                return True
            except OSError:
                return False

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        if self._supervisor is None:
            self._spawn()
            self._supervisor = threading.Thread(
                target=self._supervise, name="sartor-fold-supervisor", daemon=True
            )
            self._supervisor.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stopping.set()
        with self._send_lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            _hang_up(conn)  # the child sees its end close, finishes its folds and exits
        proc = self._proc
        if proc is not None:
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        if self._supervisor is not None:
            self._supervisor.join(timeout)
            self._supervisor = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def _spawn(self) -> None:
        ours, theirs = socket.socketpair()
        proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD_MAIN, str(theirs.fileno())],
            pass_fds=(theirs.fileno(),),
            stdin=subprocess.DEVNULL,
        )
        theirs.close()
        conn = Connection(ours.detach())
        # The settings as this process resolved them (command-line options included); the
        # secret key goes over the socket, not through the environment.
        conn.send_bytes(self.settings.model_dump_json().encode())
        for ws in sorted(self._watched):
            conn.send_bytes(orjson.dumps(["s", ws, True]))
        with self._send_lock:
            self._conn, self._proc = conn, proc
        threading.Thread(
            target=self._receive, args=(conn,), name="sartor-fold-receiver", daemon=True
        ).start()

    def _supervise(self) -> None:
        while not self._stopping.is_set():
            proc = self._proc
            assert proc is not None
            code = proc.wait()
            if self._stopping.is_set():
                return
            log.error("profile folding process exited (code %s); starting another", code)
            with self._send_lock:
                conn, self._conn = self._conn, None
            if conn is not None:
                _hang_up(conn)
            if self._stopping.wait(RESTART_DELAY):
                return
            self.restarts += 1
            self._spawn()

    def _receive(self, conn: Connection) -> None:
        while True:
            try:
                message = orjson.loads(conn.recv_bytes())
            except (EOFError, OSError, TypeError):  # TypeError: closed while reading
                return
            try:
                self._dispatch(message)
            except Exception:
                log.exception("message from the profile folding process failed")

    def _dispatch(self, message: list[Any]) -> None:
        kind = message[0]
        if kind == "c":
            _, pairs, full = message
            self.on_changes([(ws, pid) for ws, pid in pairs], full)
        elif kind == "v":
            _, ws, items = message
            self.on_events(ws, items)
        elif kind == "r":
            _, rid, value = message
            waiting = self._replies.get(rid)
            if waiting is not None:
                waiting[1].append(value)
                waiting[0].set()


def _hang_up(conn: Connection) -> None:
    """Close a connection that a thread may be reading: shut the socket down first (a
    bare close leaves it open until that read returns, and the peer never sees the end)."""
    try:
        sock = socket.socket(fileno=conn.fileno())
    except OSError:
        return  # already closed
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        sock.detach()  # the connection owns the descriptor
    conn.close()


class _Forwarder:
    """The child's broadcaster: what the child publishes goes to the server, which has the
    subscribers. Profile changes are gathered per fold batch and sent in one message."""

    def __init__(self, send: Callable[[list[Any]], None]) -> None:
        self.send = send
        self.watched: set[str] = set()
        self._lock = threading.Lock()
        self._changed: list[tuple[str, str]] = []
        self._full: dict[str, list[dict[str, Any]]] = {}

    def has_subscribers(self, workspace_id: str) -> bool:
        return workspace_id in self.watched

    def publish(self, workspace_id: str, message: dict[str, Any]) -> None:
        self.publish_many(workspace_id, [message])

    def publish_many(self, workspace_id: str, messages: list[dict[str, Any]]) -> None:
        """Events the child's writer stored (profile changes come through
        :meth:`changed`)."""
        if messages:
            self.send(["v", workspace_id, messages])

    def changed(self, change: Any) -> None:
        """A profile listener: gathered until :meth:`flush`."""
        with self._lock:
            self._changed.append((change.workspace_id, change.profile_id))
            if change.workspace_id in self.watched:
                self._full.setdefault(change.workspace_id, []).append(change.as_dict())

    def flush(self, _changes: Any = None) -> None:
        """A batch listener: runs after each fold batch's listeners."""
        with self._lock:
            changed, self._changed = self._changed, []
            full, self._full = self._full, {}
        if changed:
            self.send(["c", changed, full])

    def close(self) -> None:
        self.flush()


def run_child(conn: Connection) -> None:
    """The child: an engine that folds what the server tells it about, and nothing else
    (no scheduler, no imports, no HTTP)."""
    from sartor.config import Settings
    from sartor.engine import Engine
    from sartor.logs import configure_logging
    from sartor.runtime import tune_gc

    settings = Settings.model_validate_json(conn.recv_bytes())
    configure_logging(settings.log_level, settings.log_json)
    send_lock = threading.Lock()

    def send(message: list[Any]) -> None:
        data = orjson.dumps(message)
        with send_lock:
            try:
                conn.send_bytes(data)
            except OSError:
                pass  # the server is gone; the loop below ends on its own

    engine = Engine.open(settings=settings, migrate=False)
    forwarder = _Forwarder(send)
    engine.broadcaster.close()
    engine.broadcaster = forwarder  # type: ignore[assignment]
    engine.updater.listeners.append(forwarder.changed)
    engine.updater.batch_listeners.append(forwarder.flush)
    bus = engine.bus
    bus.start()
    tune_gc()
    try:
        while True:
            try:
                message = orjson.loads(conn.recv_bytes())
            except (EOFError, OSError):
                return  # the server closed its end (stopped, or died)
            kind = message[0]
            if kind == "n":
                bus.notify([(ws, pid) for ws, pid in message[1]], 0)
            elif kind == "e":
                _, ws, pid = message
                engine.hot.erase(ws, pid)
                engine.updater.docs.forget(ws, pid)
            elif kind == "s":
                _, ws, present = message
                if present:
                    forwarder.watched.add(ws)
                else:
                    forwarder.watched.discard(ws)
            elif kind == "r":
                _, rid, ws, pid = message
                send(["r", rid, engine.hot.recent(ws, pid)])
    finally:
        # The folds in progress, the segment transitions they write, the last changes.
        engine.close()


def main() -> None:
    conn = Connection(int(sys.argv[1]))
    started = time.monotonic()
    try:
        run_child(conn)
    except Exception:
        log.exception("profile folding process failed after %.0f s", time.monotonic() - started)
        os._exit(1)
