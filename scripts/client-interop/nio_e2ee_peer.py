#!/usr/bin/env python3
"""matrix-nio[e2e] peer for the end-to-end encryption interop steps, driven by js/e2ee.mjs.

Usage (started by e2ee.mjs, not by hand):
    nio_e2ee_peer.py --url URL --store DIR [--http-log FILE]

Reads one JSON command per line on stdin and answers each with one JSON line on stdout
({"id", "ok": true, "result"} or {"id", "ok": false, "error"}); nothing else is written to stdout.
Commands:
  register {username, password}   register (m.login.dummy) with encryption on (olm account in DIR),
                                  start sync_forever (which uploads keys, queries and claims them,
                                  sends queued to-device messages), wait for the device keys upload
                                  (its failure is returned as upload_error, not raised)
  join {room_id}                  wait for the invite via sync, join, wait until nio knows the room
                                  is encrypted (m.room.encryption in its state)
  wait_message {room_id, body}    wait until a message with this body arrives decrypted; fails with
                                  the undecryptable event's details when one came instead
  send {room_id, body}            room_send(ignore_unverified_devices=True): shares the Megolm
                                  session over Olm to-device messages and sends m.room.encrypted;
                                  answers how many room-key to-device requests succeeded so far
  quit                            stop syncing, close, answer with the HTTP requests that failed
                                  and the distinct endpoints called
Requests answered with 4xx/5xx are recorded with their bodies (same recorder as nio_interop.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
import traceback
from typing import Any

from nio import (
    AsyncClientConfig,
    ErrorResponse,
    KeysUploadError,
    KeysUploadResponse,
    MegolmEvent,
    RoomMessageText,
    SyncResponse,
)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from nio_interop import Recorder, RecordingClient, strip_ids  # noqa: E402

WAIT_S = 30.0


class Peer:
    def __init__(self, url: str, store: str) -> None:
        self.url = url
        self.store = store
        self.recorder = Recorder()
        self.client: RecordingClient | None = None
        self.sync_task: asyncio.Task[Any] | None = None
        self.sync_error: str | None = None
        self.changed = asyncio.Event()
        self.messages: list[tuple[str, RoomMessageText]] = []
        self.undecryptable: list[tuple[str, MegolmEvent]] = []
        self.keys_uploaded = False
        self.upload_errors: list[str] = []
        self.to_device_count = 0

    def _notify(self) -> None:
        self.changed.set()

    async def wait(self, pred: Any, what: str, timeout: float = WAIT_S) -> Any:
        """Re-evaluates pred after every sync until it returns a truthy value."""
        end = time.monotonic() + timeout
        while True:
            v = pred()
            if v:
                return v
            if self.sync_error:
                raise RuntimeError(f"sync_forever stopped: {self.sync_error}")
            left = end - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), timeout=min(left, 1.0))
            except asyncio.TimeoutError:
                pass

    async def register(self, username: str, password: str) -> dict[str, Any]:
        cfg = AsyncClientConfig(
            max_limit_exceeded=0, max_timeouts=2, request_timeout=30, encryption_enabled=True,
            store_sync_tokens=False,
        )
        c = RecordingClient(self.url, who="nio-e2ee", recorder=self.recorder, config=cfg, store_path=self.store)
        self.client = c
        resp = await c.register(username, password, device_name="nio e2ee")
        if isinstance(resp, ErrorResponse):
            raise RuntimeError(f"register -> {resp.status_code} {resp.message}")
        if c.olm is None:
            raise RuntimeError("nio loaded no olm account after register (encryption support missing?)")

        async def on_message(room: Any, event: RoomMessageText) -> None:
            self.messages.append((room.room_id, event))
            self._notify()

        async def on_megolm(room: Any, event: MegolmEvent) -> None:
            self.undecryptable.append((room.room_id, event))
            self._notify()

        async def on_upload(resp: Any) -> None:
            if isinstance(resp, KeysUploadResponse):
                self.keys_uploaded = True
            else:
                self.upload_errors.append(f"{type(resp).__name__}: {getattr(resp, 'message', resp)}")
            self._notify()

        async def on_sync(resp: Any) -> None:
            self.to_device_count += len(getattr(resp, "to_device_events", None) or [])
            self._notify()

        c.add_event_callback(on_message, RoomMessageText)
        c.add_event_callback(on_megolm, MegolmEvent)
        c.add_response_callback(on_upload, (KeysUploadResponse, KeysUploadError))
        c.add_response_callback(on_sync, SyncResponse)

        async def run_sync() -> None:
            try:
                await c.sync_forever(timeout=1000, full_state=True)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - reported to the driver
                self.sync_error = f"{type(e).__name__}: {e}"
                self._notify()

        self.sync_task = asyncio.create_task(run_sync())
        # the device keys upload is reported, not raised: the steps after it still run
        upload_error = None
        try:
            await self.wait(lambda: self.keys_uploaded or self.upload_errors, "POST /keys/upload")
        except RuntimeError as e:
            upload_error = str(e)
        if self.upload_errors:
            upload_error = self.upload_errors[0]
        if upload_error:
            upload_error += f" ({self.last_call('POST', '/keys/upload')})"
        keys = c.olm.account.identity_keys
        return {
            "user_id": c.user_id, "device_id": c.device_id, "ed25519": keys["ed25519"], "curve25519": keys["curve25519"],
            "keys_uploaded": self.keys_uploaded, "upload_error": upload_error,
        }

    def last_call(self, method: str, path_suffix: str) -> str:
        """The last recorded request like "POST /path -> 404 M_UNRECOGNIZED", for failure messages."""
        for r in reversed(self.recorder.records):
            path = r.path.split("?")[0]
            if r.method == method and path.endswith(path_suffix):
                try:
                    errcode = json.loads(r.response_body).get("errcode", "") if r.response_body else ""
                except ValueError:
                    errcode = ""
                return f"{method} {path} -> {r.status} {errcode}".strip()
        return f"no {method} …{path_suffix} request was made"

    async def join(self, room_id: str) -> dict[str, Any]:
        c = self._c()
        await self.wait(lambda: room_id in c.invited_rooms or room_id in c.rooms, f"the invite to {room_id}")
        resp = await c.join(room_id)
        if isinstance(resp, ErrorResponse):
            raise RuntimeError(f"join -> {resp.status_code} {resp.message}")

        def joined_and_encrypted() -> bool:
            room = c.rooms.get(room_id)
            return room is not None and room_id not in c.invited_rooms and room.encrypted

        try:
            await self.wait(joined_and_encrypted, "the joined room with m.room.encryption in nio's state")
        except RuntimeError as e:
            room = c.rooms.get(room_id)
            raise RuntimeError(f"{e} (room known: {room is not None}, encrypted: {getattr(room, 'encrypted', None)})")
        return {"encrypted": True, "members": sorted(c.rooms[room_id].users)}

    async def wait_message(self, room_id: str, body: str, timeout: float = WAIT_S) -> dict[str, Any]:
        def found() -> Any:
            for rid, e in self.messages:
                if e.body == body and rid == room_id:
                    return e
            return None

        try:
            e = await self.wait(found, f"a decrypted message {body!r}", timeout)
        except RuntimeError as err:
            bad = [
                f"{u.event_id} from {u.sender} (session {u.session_id}, device {u.device_id}): "
                f"{getattr(u, 'decryption_error', None) or 'no room key'}"
                for rid, u in self.undecryptable
                if rid == room_id
            ]
            raise RuntimeError(
                f"{err}; undecryptable events seen: {bad or 'none'}; "
                f"{self.last_call('POST', '/keys/upload')}; to-device events received: {self.to_device_count}"
            )
        return {
            "event_id": e.event_id,
            "sender": e.sender,
            "decrypted": bool(getattr(e, "decrypted", False)),
            "verified": bool(getattr(e, "verified", False)),
            "session_id": getattr(e, "session_id", None),
        }

    async def send(self, room_id: str, body: str) -> dict[str, Any]:
        c = self._c()
        resp = await c.room_send(
            room_id, "m.room.message", {"msgtype": "m.text", "body": body}, ignore_unverified_devices=True
        )
        if isinstance(resp, ErrorResponse):
            raise RuntimeError(
                f"room_send -> {resp.status_code} {resp.message} ({self.last_call('POST', '/keys/query')}; "
                f"{self.last_call('POST', '/keys/claim')})"
            )
        sent = [r for r in self.recorder.records if r.method == "PUT" and "/send/" in r.path]
        wire = strip_ids(sent[-1].path).split("/send/")[1].split("/")[0] if sent else None
        to_device = [
            r for r in self.recorder.records
            if r.method == "PUT" and "/sendToDevice/m.room.encrypted/" in r.path and r.status == 200
        ]
        return {
            "event_id": resp.event_id, "wire_type": wire, "room_key_to_device_ok": len(to_device),
            "keys_query": self.last_call("POST", "/keys/query"), "keys_claim": self.last_call("POST", "/keys/claim"),
        }

    async def quit(self) -> dict[str, Any]:
        if self.sync_task:
            self.sync_task.cancel()
            try:
                await self.sync_task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
        if self.client:
            await self.client.close()
        errors = [r.__dict__ for r in self.recorder.records if r.status >= 400]
        statuses: dict[str, set[int]] = {}
        for r in self.recorder.records:
            statuses.setdefault(f"{r.method} {strip_ids(r.path)}", set()).add(r.status)
        return {
            "requests": len(self.recorder.records),
            "errors": errors,
            "endpoints": {k: sorted(v) for k, v in sorted(statuses.items())},
        }

    def _c(self) -> RecordingClient:
        if self.client is None:
            raise RuntimeError("not registered")
        return self.client


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", required=True)
    ap.add_argument("--store", required=True, help="directory for nio's olm/megolm store")
    ap.add_argument("--http-log", default=None)
    args = ap.parse_args()
    # nio logs through the logging module: keep it off stdout (the command channel), and say each
    # distinct message once (sync_forever retries a failing keys upload on every loop)
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    seen: set[str] = set()

    def once(record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if msg in seen:
            return False
        seen.add(msg)
        return True

    for h in logging.getLogger().handlers:
        h.addFilter(once)
    os.makedirs(args.store, exist_ok=True)
    peer = Peer(args.url.rstrip("/"), args.store)

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    def answer(msg: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(msg) + "\n")
        sys.stdout.flush()

    handlers = {
        "register": lambda a: peer.register(a["username"], a["password"]),
        "join": lambda a: peer.join(a["room_id"]),
        "wait_message": lambda a: peer.wait_message(a["room_id"], a["body"], float(a.get("timeout", WAIT_S))),
        "send": lambda a: peer.send(a["room_id"], a["body"]),
        "quit": lambda a: peer.quit(),
    }
    while True:
        line = await reader.readline()
        if not line:
            await peer.quit()
            break
        msg = json.loads(line)
        cmd = msg.get("cmd")
        try:
            if cmd not in handlers:
                raise RuntimeError(f"unknown command {cmd!r}")
            result = await handlers[cmd](msg)
            answer({"id": msg.get("id"), "ok": True, "result": result})
        except Exception as e:  # noqa: BLE001 - every failure goes back to the driver
            traceback.print_exc(file=sys.stderr)
            answer({"id": msg.get("id"), "ok": False, "error": f"{type(e).__name__}: {e}"})
        if cmd == "quit":
            break
    if args.http_log:
        with open(args.http_log, "w") as f:
            for r in peer.recorder.records:
                f.write(json.dumps(r.__dict__) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
