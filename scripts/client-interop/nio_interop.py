#!/usr/bin/env python3
"""matrix-nio interop check: walks through what a new user does with a Matrix client library.

Usage: nio_interop.py --url http://127.0.0.1:PORT   (or HS_URL in the environment)

Two users (alice, bob) register, log in, create a room, invite, join, exchange messages, see each
other's messages via /sync (single syncs and sync_forever), change a display name, open a DM
(createRoom with is_direct, m.direct account data written by the client) and leave. Every step
prints PASS or FAIL; the exit status is non-zero when a step failed.

Every HTTP request the library makes is recorded; requests answered with 4xx/5xx are listed at
the end with their bodies, so a failure can be reported with the exact request and response.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import re
import secrets
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable
from urllib.parse import parse_qs, unquote, urlparse

from nio import (
    AsyncClient,
    AsyncClientConfig,
    ErrorResponse,
    InviteMemberEvent,
    PushNotify,
    PushRuleKind,
    ReceiptEvent,
    RedactionEvent,
    LoginResponse,
    RegisterResponse,
    RoomCreateResponse,
    RoomMemberEvent,
    RoomMessageText,
    RoomPreset,
    Response,
    SyncResponse,
    TypingNoticeEvent,
    UnknownAccountDataEvent,
)

PASSWORD = "interop-Passw0rd!"


@dataclass
class HttpRecord:
    who: str
    method: str
    path: str
    status: int
    request_body: str
    response_body: str


@dataclass
class Recorder:
    """Collects every request the library made (method, path, status)."""

    records: list[HttpRecord] = field(default_factory=list)
    # per client: event_id -> index of the incremental /sync response whose timeline carried it
    sync_seen: dict[str, dict[str, int]] = field(default_factory=dict)
    # (client, event_id, room_id, first sync index, repeat sync index, since token, timeline limited)
    sync_repeats: list[tuple[str, str, str, int, int, str, bool]] = field(default_factory=list)
    sync_count: int = 0

    def note_sync(self, who: str, path: str, body: dict[str, Any]) -> None:
        """Records timeline event IDs of incremental syncs; an event must never come twice."""
        self.sync_count += 1
        query = parse_qs(urlparse(path).query)
        since = query.get("since", [""])[0]
        if not since or query.get("full_state", ["false"])[0] == "true":
            return
        seen = self.sync_seen.setdefault(who, {})
        for section in ("join", "leave"):
            for room_id, room in (body.get("rooms", {}).get(section) or {}).items():
                timeline = room.get("timeline") or {}
                for ev in timeline.get("events") or []:
                    eid = ev.get("event_id")
                    if not eid:
                        continue
                    if eid in seen:
                        self.sync_repeats.append(
                            (who, eid, room_id, seen[eid], self.sync_count, since, bool(timeline.get("limited")))
                        )
                    else:
                        seen[eid] = self.sync_count


class RecordingClient(AsyncClient):
    """AsyncClient that records each HTTP exchange (request, status, error body)."""

    def __init__(self, *args: Any, who: str, recorder: Recorder, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._who = who
        self._recorder = recorder

    async def send(self, method, path, data=None, headers=None, trace_context=None, timeout=None):  # type: ignore[override]
        resp = await super().send(method, path, data, headers, trace_context, timeout)
        body = ""
        if resp.status >= 400:
            raw = await resp.read()  # aiohttp caches the body; nio can still parse it afterwards
            body = raw.decode("utf-8", "replace")[:2000]
        elif method.upper() == "GET" and urlparse(path).path.endswith("/sync"):
            try:
                self._recorder.note_sync(self._who, path, json.loads(await resp.read()))
            except ValueError:
                pass
        req = data if isinstance(data, str) else ("" if data is None else "<binary>")
        # never keep access tokens or passwords in the log
        shown_path = path.split("access_token=")[0].rstrip("?&")
        self._recorder.records.append(
            HttpRecord(self._who, method, shown_path, resp.status, redact(req)[:2000], body)
        )
        return resp


def redact(body: str) -> str:
    if not body:
        return body
    try:
        obj = json.loads(body)
    except ValueError:
        return body
    if isinstance(obj, dict):
        for key in ("password", "access_token"):
            if key in obj:
                obj[key] = "<redacted>"
    return json.dumps(obj)


class StepFailed(Exception):
    pass


class Runner:
    def __init__(self) -> None:
        self.results: list[tuple[str, bool, str]] = []
        self.extras: list[tuple[str, bool, str]] = []

    async def step(self, name: str, fn: Callable[[], Awaitable[Any]]) -> Any:
        start = time.monotonic()
        try:
            value = await fn()
        except StepFailed as e:
            self._record(name, False, str(e), start)
            return None
        except Exception as e:  # noqa: BLE001 - a library exception is a failed step
            detail = f"{type(e).__name__}: {e}"
            self._record(name, False, detail, start)
            traceback.print_exc(file=sys.stderr)
            return None
        self._record(name, True, "", start)
        return value

    async def extra(self, name: str, fn: Callable[[], Awaitable[Any]]) -> Any:
        """A step beyond the new-user walk-through: reported, but not part of the exit status."""
        self._extra = True
        try:
            return await self.step(name, fn)
        finally:
            self._extra = False

    _extra = False

    def _record(self, name: str, ok: bool, detail: str, start: float) -> None:
        ms = (time.monotonic() - start) * 1000
        (self.extras if self._extra else self.results).append((name, ok, detail))
        tag = "EXTRA " if self._extra else ""
        line = f"{tag}{'PASS' if ok else 'FAIL'}  nio  {name}  ({ms:.0f} ms)"
        if detail:
            line += f"\n      {detail}"
        print(line, flush=True)


def ok(resp: Any, what: str) -> Any:
    """Fails the step when the library returned an ErrorResponse or the HTTP status was an error.

    (Some nio response classes accept an error body as success, e.g. content_repository_config.)
    """
    if isinstance(resp, ErrorResponse):
        raise StepFailed(
            f"{what} returned {type(resp).__name__}: status_code={resp.status_code!r} "
            f"message={resp.message!r}"
        )
    transport = getattr(resp, "transport_response", None)
    if transport is not None and transport.status >= 400:
        raise StepFailed(f"{what}: HTTP {transport.status}, yet nio returned {type(resp).__name__}")
    return resp


def expect(cond: bool, msg: str) -> None:
    if not cond:
        raise StepFailed(msg)


async def sync_until(
    client: AsyncClient, pred: Callable[[SyncResponse], bool], what: str, deadline_s: float = 20.0
) -> SyncResponse:
    """Incremental /sync (long-poll 2 s) until pred(response) holds or the deadline passes."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        resp = ok(await client.sync(timeout=2000), "sync")
        if pred(resp):
            return resp
    raise StepFailed(f"timed out after {deadline_s:.0f}s waiting for {what}")


def timeline_events(resp: SyncResponse, room_id: str) -> list[Any]:
    room = resp.rooms.join.get(room_id)
    return list(room.timeline.events) if room else []


def has_event(resp: SyncResponse, room_id: str, event_id: str) -> bool:
    return any(getattr(e, "event_id", None) == event_id for e in timeline_events(resp, room_id))


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default=os.environ.get("HS_URL"), help="homeserver base URL (env HS_URL)")
    ap.add_argument("--http-log", default=None, help="write every recorded HTTP exchange here (JSON lines)")
    ap.add_argument("--no-extras", action="store_true", help="skip the EXTRA steps (typing, receipts, presence, …)")
    args = ap.parse_args()
    if not args.url:
        ap.error("--url or HS_URL is required")
    url = args.url.rstrip("/")

    recorder = Recorder()
    cfg = AsyncClientConfig(max_limit_exceeded=0, max_timeouts=2, request_timeout=30, encryption_enabled=False)
    suffix = secrets.token_hex(4)
    alice_name, bob_name = f"alice_{suffix}", f"bob_{suffix}"
    run = Runner()
    clients: list[AsyncClient] = []

    def client(who: str) -> RecordingClient:
        c = RecordingClient(url, who=who, recorder=recorder, config=cfg)
        clients.append(c)
        return c

    state: dict[str, Any] = {}
    try:
        # --- registration (nio sends auth {type: m.login.dummy} on the first request) ---
        async def register(name: str, who: str) -> RegisterResponse:
            c = client(f"{who}-reg")
            resp = ok(await c.register(name, PASSWORD, device_name=f"nio {who}"), "register")
            expect(isinstance(resp, RegisterResponse), f"unexpected {type(resp).__name__}")
            expect(resp.user_id.startswith(f"@{name}:"), f"user_id {resp.user_id!r} does not match @{name}:…")
            expect(bool(resp.access_token), "register returned no access_token")
            expect(bool(resp.device_id), "register returned no device_id")
            whoami = ok(await c.whoami(), "whoami")
            expect(whoami.user_id == resp.user_id, f"whoami says {whoami.user_id}, register said {resp.user_id}")
            state[f"{who}_id"] = resp.user_id
            return resp

        await run.step("register alice (m.login.dummy) + whoami", lambda: register(alice_name, "alice"))
        await run.step("register bob (m.login.dummy) + whoami", lambda: register(bob_name, "bob"))
        if "alice_id" not in state or "bob_id" not in state:
            return finish(run, recorder, args.http_log)
        alice_id, bob_id = state["alice_id"], state["bob_id"]

        # --- password login on fresh clients (these are used for everything below) ---
        alice = client("alice")
        bob = client("bob")

        async def login(c: AsyncClient, user: str, who: str) -> None:
            c.user = user
            resp = ok(await c.login(PASSWORD, device_name=f"nio {who} login"), "login")
            expect(isinstance(resp, LoginResponse), f"unexpected {type(resp).__name__}")
            expect(resp.user_id == user, f"login user_id {resp.user_id!r} != {user!r}")
            expect(bool(resp.access_token) and bool(resp.device_id), "login returned no token/device")

        await run.step("login alice (m.login.password)", lambda: login(alice, alice_id, "alice"))
        await run.step("login bob (m.login.password)", lambda: login(bob, bob_id, "bob"))
        if not (alice.access_token and bob.access_token):
            return finish(run, recorder, args.http_log)

        async def initial_sync(c: AsyncClient) -> None:
            resp = ok(await c.sync(timeout=0, full_state=True), "initial sync")
            expect(bool(resp.next_batch), "initial sync has no next_batch")

        await run.step("alice initial sync", lambda: initial_sync(alice))
        await run.step("bob initial sync", lambda: initial_sync(bob))

        # --- room creation and invite ---
        async def create_room() -> str:
            resp = ok(
                await alice.room_create(name="Interop room", topic="nio interop", preset=RoomPreset.private_chat),
                "room_create",
            )
            expect(isinstance(resp, RoomCreateResponse) and resp.room_id.startswith("!"), f"bad room_id in {resp}")
            room_id = resp.room_id
            await sync_until(alice, lambda r: room_id in r.rooms.join, "the new room in alice's sync rooms.join")
            room = alice.rooms[room_id]
            expect(room.name == "Interop room", f"room name {room.name!r} via sync state")
            expect(room.topic == "nio interop", f"room topic {room.topic!r} via sync state")
            expect(alice_id in room.users, f"alice not among room members {list(room.users)}")
            state["room_id"] = room_id
            return room_id

        room_id = await run.step("alice room_create + room appears in her sync", create_room)
        if not room_id:
            return finish(run, recorder, args.http_log)

        async def invite() -> None:
            ok(await alice.room_invite(room_id, bob_id), "room_invite")

            def got_invite(r: SyncResponse) -> bool:
                inv = r.rooms.invite.get(room_id)
                return inv is not None and any(
                    isinstance(e, InviteMemberEvent) and e.state_key == bob_id and e.membership == "invite"
                    for e in inv.invite_state
                )

            await sync_until(bob, got_invite, "bob's sync rooms.invite with his m.room.member invite")
            expect(room_id in bob.invited_rooms, "room missing from bob.invited_rooms")
            expect(bob.invited_rooms[room_id].name == "Interop room", "invite_state lacks the room name")

        await run.step("alice room_invite bob + bob sees invite via sync", invite)

        async def join() -> None:
            resp = ok(await bob.join(room_id), "join")
            expect(resp.room_id == room_id, f"join returned room_id {resp.room_id!r}")
            await sync_until(bob, lambda r: room_id in r.rooms.join, "room in bob's rooms.join")

            def sees_join(r: SyncResponse) -> bool:
                return any(
                    isinstance(e, RoomMemberEvent) and e.state_key == bob_id and e.membership == "join"
                    for e in timeline_events(r, room_id)
                )

            await sync_until(alice, sees_join, "bob's join in alice's timeline")

        await run.step("bob join + both see the join via sync", join)

        # --- messages ---
        async def send(c: AsyncClient, body: str) -> str:
            resp = ok(
                await c.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": body}), "room_send"
            )
            expect(resp.event_id.startswith("$"), f"bad event_id {resp.event_id!r}")
            return resp.event_id

        a_msg = await run.step("alice room_send", lambda: send(alice, "hello from alice"))
        b_msg = await run.step("bob room_send", lambda: send(bob, "hello from bob"))

        async def sees(c: AsyncClient, event_id: str | None, sender: str, body: str) -> None:
            expect(event_id is not None, "nothing was sent")
            resp = await sync_until(c, lambda r: has_event(r, room_id, event_id), f"event {event_id}")
            ev = next(e for e in timeline_events(resp, room_id) if getattr(e, "event_id", None) == event_id)
            expect(isinstance(ev, RoomMessageText), f"event parsed as {type(ev).__name__}")
            expect(ev.sender == sender and ev.body == body, f"got sender={ev.sender!r} body={ev.body!r}")

        # Each client may already have consumed the other's message in an earlier sync: look in
        # the timeline first via /messages if the incremental sync no longer has it.
        async def sees_or_history(c: AsyncClient, event_id: str | None, sender: str, body: str) -> None:
            try:
                await sees(c, event_id, sender, body)
            except StepFailed:
                resp = ok(await c.room_messages(room_id, start="", limit=50), "room_messages")
                found = [e for e in resp.chunk if getattr(e, "event_id", None) == event_id]
                expect(bool(found), f"{event_id} neither in /sync nor in /messages")
                raise StepFailed(f"{event_id} reached /messages but never arrived via /sync")

        await run.step("bob sees alice's message via sync", lambda: sees_or_history(bob, a_msg, alice_id, "hello from alice"))
        await run.step("alice sees bob's message via sync", lambda: sees_or_history(alice, b_msg, bob_id, "hello from bob"))

        # --- sync_forever with callbacks (the way bots use nio) ---
        async def sync_forever_roundtrip() -> None:
            got: asyncio.Future[RoomMessageText] = asyncio.get_running_loop().create_future()
            body = f"sync_forever ping {secrets.token_hex(3)}"

            async def on_message(room: Any, event: RoomMessageText) -> None:
                if event.body == body and not got.done():
                    got.set_result(event)

            bob.add_event_callback(on_message, RoomMessageText)
            task = asyncio.create_task(bob.sync_forever(timeout=2000))
            try:
                await asyncio.sleep(0.5)
                await send(alice, body)
                event = await asyncio.wait_for(got, timeout=20)
                expect(event.sender == alice_id, f"sender {event.sender!r}")
            except asyncio.TimeoutError as e:
                raise StepFailed("bob's sync_forever callback never saw alice's message within 20s") from e
            finally:
                task.cancel()
                try:
                    await task
                except (asyncio.CancelledError, Exception):  # noqa: BLE001
                    pass
                bob.event_callbacks.clear()

        await run.step("bob sync_forever callback receives alice's message", sync_forever_roundtrip)

        async def history() -> None:
            resp = ok(await bob.room_messages(room_id, start="", limit=50), "room_messages")
            bodies = [e.body for e in resp.chunk if isinstance(e, RoomMessageText)]
            for b in ("hello from alice", "hello from bob"):
                expect(b in bodies, f"{b!r} missing from /messages (got {bodies})")

        await run.step("bob room_messages (backwards from the end) has both messages", history)

        # --- display name ---
        async def displayname() -> None:
            ok(await bob.set_displayname("Bob Interop"), "set_displayname")
            resp = ok(await alice.get_displayname(bob_id), "get_displayname")
            expect(resp.displayname == "Bob Interop", f"get_displayname -> {resp.displayname!r}")

        await run.step("bob set_displayname + alice get_displayname", displayname)

        async def displayname_in_room() -> None:
            def renamed(r: SyncResponse) -> bool:
                return any(
                    isinstance(e, RoomMemberEvent) and e.state_key == bob_id
                    and (e.content or {}).get("displayname") == "Bob Interop"
                    for e in timeline_events(r, room_id)
                )

            await sync_until(alice, renamed, "bob's m.room.member with the new displayname", 10)
            expect(alice.rooms[room_id].user_name(bob_id) == "Bob Interop", "nio room member name not updated")

        await run.step("alice sees bob's new display name in the room (member event)", displayname_in_room)

        # --- direct message ---
        async def dm() -> None:
            resp = ok(
                await alice.room_create(is_direct=True, invite=[bob_id], preset=RoomPreset.trusted_private_chat),
                "room_create(is_direct)",
            )
            dm_id = resp.room_id
            state["dm_id"] = dm_id
            path = f"/_matrix/client/v3/user/{alice_id}/account_data/m.direct"
            # nio has no public setter for global account data: use its request machinery
            raw = await alice._send(_Raw, "PUT", path, json.dumps({bob_id: [dm_id]}))  # noqa: SLF001
            expect(not isinstance(raw, ErrorResponse), f"PUT m.direct failed: {raw}")
            listed = ok(await alice.list_direct_rooms(), "list_direct_rooms")
            expect(listed.rooms.get(bob_id) == [dm_id], f"list_direct_rooms -> {listed.rooms}")

            def dm_invite(r: SyncResponse) -> bool:
                inv = r.rooms.invite.get(dm_id)
                return inv is not None and any(
                    isinstance(e, InviteMemberEvent) and e.state_key == bob_id and e.content.get("is_direct") is True
                    for e in inv.invite_state
                )

            await sync_until(bob, dm_invite, "bob's DM invite with is_direct: true")
            ok(await bob.join(dm_id), "join dm")
            body = "psst, a DM"
            ok(await alice.room_send(dm_id, "m.room.message", {"msgtype": "m.text", "body": body}), "room_send dm")

            def dm_msg(r: SyncResponse) -> bool:
                return any(isinstance(e, RoomMessageText) and e.body == body for e in timeline_events(r, dm_id))

            await sync_until(bob, dm_msg, "the DM message in bob's sync")

        await run.step("DM: room_create(is_direct) + m.direct account data + bob joins + message", dm)

        async def direct_in_sync() -> None:
            # a second device of alice (a fresh login; Synapse would answer a repeated identical
            # initial sync of the same device from its 2-minute response cache)
            fresh = client("alice-2")
            fresh.user = alice_id
            ok(await fresh.login(PASSWORD, device_name="nio alice second device"), "login")
            resp = ok(await fresh.sync(timeout=0, full_state=True), "sync")
            # nio keeps account data types it does not model as UnknownAccountDataEvent(type, content)
            found = None
            for e in resp.account_data_events:
                if isinstance(e, UnknownAccountDataEvent) and e.type == "m.direct":
                    found = e.content
            kinds = [getattr(e, "type", type(e).__name__) for e in resp.account_data_events]
            expect(found is not None, f"no m.direct in initial sync account_data (got {kinds})")
            expect(found.get(bob_id) == [state["dm_id"]], f"m.direct content {found}")

        await run.step("m.direct appears in the initial sync of a new alice device", direct_in_sync)

        # --- extras: other things clients commonly do (not counted in the exit status) ---
        if not args.no_extras:
            await extras(run, alice, bob, alice_id, bob_id, room_id, a_msg)

        # --- leave ---
        async def leave() -> None:
            ok(await bob.room_leave(room_id), "room_leave")
            await sync_until(bob, lambda r: room_id in r.rooms.leave, "room in bob's rooms.leave")

            def sees_leave(r: SyncResponse) -> bool:
                return any(
                    isinstance(e, RoomMemberEvent) and e.state_key == bob_id and e.membership == "leave"
                    for e in timeline_events(r, room_id)
                )

            await sync_until(alice, sees_leave, "bob's leave in alice's timeline")
            joined = ok(await bob.joined_rooms(), "joined_rooms")
            expect(room_id not in joined.rooms, "room still in bob's joined_rooms after leave")

        await run.step("bob room_leave + rooms.leave for bob + alice sees the leave", leave)

        async def no_repeats() -> None:
            expect(recorder.sync_count > 0, "no /sync responses were recorded")
            if recorder.sync_repeats:
                lines = [
                    f"{who}: {eid} in room {rid} came again in sync #{again} (since={since}, limited={lim}), "
                    f"first in sync #{first}"
                    for who, eid, rid, first, again, since, lim in recorder.sync_repeats[:6]
                ]
                raise StepFailed(
                    f"{len(recorder.sync_repeats)} timeline events delivered twice by incremental /sync:\n      "
                    + "\n      ".join(lines)
                )

        await run.step("no event delivered twice across incremental /sync timelines", no_repeats)

        async def logout() -> None:
            token = alice.access_token
            ok(await alice.logout(), "logout")
            # the old token must now be rejected with 401 M_UNKNOWN_TOKEN
            probe = client("alice-old-token")
            probe.user_id, probe.access_token = alice_id, token
            resp = await probe.whoami()
            expect(isinstance(resp, ErrorResponse), "whoami with the logged-out token still succeeds")
            expect(resp.status_code == "M_UNKNOWN_TOKEN", f"whoami after logout -> {resp.status_code!r}")

        await run.step("alice logout", logout)
    finally:
        for c in clients:
            await c.close()

    return finish(run, recorder, args.http_log)


async def extras(
    run: Runner, alice: AsyncClient, bob: AsyncClient, alice_id: str, bob_id: str, room_id: str, a_msg: str | None
) -> None:
    """Typing, receipts, read markers, presence, state, redaction, devices, media, push rules."""

    def ephemeral(r: SyncResponse) -> list[Any]:
        room = r.rooms.join.get(room_id)
        return list(room.ephemeral) if room else []

    async def typing() -> None:
        ok(await alice.room_typing(room_id, True, 10_000), "room_typing")
        await sync_until(
            bob,
            lambda r: any(isinstance(e, TypingNoticeEvent) and alice_id in e.users for e in ephemeral(r)),
            "m.typing with alice in bob's sync",
            10,
        )
        ok(await alice.room_typing(room_id, False), "room_typing(False)")

    await run.extra("room_typing + bob sees m.typing in sync ephemeral", typing)

    async def receipt() -> None:
        expect(a_msg is not None, "alice's message was not sent")
        ok(await bob.update_receipt_marker(room_id, a_msg), "update_receipt_marker")
        await sync_until(
            alice,
            lambda r: any(
                isinstance(e, ReceiptEvent)
                and any(rc.user_id == bob_id and rc.event_id == a_msg for rc in e.receipts)
                for e in ephemeral(r)
            ),
            "bob's m.read receipt in alice's sync",
            10,
        )

    await run.extra("update_receipt_marker + alice sees m.receipt in sync", receipt)

    async def read_markers() -> None:
        expect(a_msg is not None, "alice's message was not sent")
        ok(await bob.room_read_markers(room_id, a_msg, a_msg), "room_read_markers")

    await run.extra("room_read_markers (m.fully_read + m.read)", read_markers)

    async def presence() -> None:
        ok(await alice.set_presence("online", "interop testing"), "set_presence")
        resp = ok(await bob.get_presence(alice_id), "get_presence")
        expect(resp.presence == "online", f"presence {resp.presence!r}")

    await run.extra("set_presence online + get_presence", presence)

    async def state() -> None:
        ok(await alice.room_put_state(room_id, "m.room.topic", {"topic": "changed by nio"}), "room_put_state")
        resp = ok(await bob.room_get_state_event(room_id, "m.room.topic"), "room_get_state_event")
        expect(resp.content.get("topic") == "changed by nio", f"topic {resp.content}")
        members = ok(await bob.joined_members(room_id), "joined_members")
        expect({m.user_id for m in members.members} == {alice_id, bob_id}, f"members {members.members}")

    await run.extra("room_put_state topic + room_get_state_event + joined_members", state)

    async def redact() -> None:
        sent = ok(await alice.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": "oops"}), "send")
        ok(await alice.room_redact(room_id, sent.event_id, reason="interop"), "room_redact")
        await sync_until(
            bob,
            lambda r: any(isinstance(e, RedactionEvent) and e.redacts == sent.event_id for e in timeline_events(r, room_id)),
            "the m.room.redaction in bob's sync",
            10,
        )

    await run.extra("room_redact + bob sees the redaction", redact)

    async def devices() -> None:
        resp = ok(await alice.devices(), "devices")
        expect(any(d.id == alice.device_id for d in resp.devices), "own device missing from /devices")
        ok(await alice.update_device(alice.device_id, {"display_name": "renamed by nio"}), "update_device")

    await run.extra("devices + update_device", devices)

    async def media_config() -> None:
        ok(await alice.content_repository_config(), "content_repository_config")

    await run.extra("content_repository_config (media config)", media_config)

    async def upload() -> None:
        data = b"hello interop"
        resp, _keys = await alice.upload(io.BytesIO(data), content_type="text/plain", filename="hi.txt", filesize=len(data))
        ok(resp, "upload")
        expect(resp.content_uri.startswith("mxc://"), f"content_uri {resp.content_uri!r}")

    await run.extra("upload (media repository)", upload)

    async def pushrule() -> None:
        ok(
            await alice.set_pushrule("global", PushRuleKind.content, "interop", actions=[PushNotify()], pattern="interop"),
            "set_pushrule",
        )

    await run.extra("set_pushrule (push rules)", pushrule)


@dataclass
class _Raw(Response):
    """Response class for requests nio has no wrapper for: a JSON body without errcode is success."""

    body: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, parsed: dict[str, Any], *args: Any) -> Any:
        if "errcode" in parsed:
            return ErrorResponse.from_dict(parsed)
        return cls(body=parsed)


def finish(run: Runner, recorder: Recorder, http_log: str | None) -> int:
    failed = [r for r in run.results if not r[1]]
    errors = [r for r in recorder.records if r.status >= 400]
    if http_log:
        with open(http_log, "w") as f:
            for r in recorder.records:
                f.write(json.dumps(r.__dict__) + "\n")
    if errors:
        print("\nnio: HTTP requests answered with an error status:")
        for r in errors:
            print(f"  [{r.who}] {r.method} {r.path} -> {r.status}")
            if r.request_body:
                print(f"      request:  {r.request_body[:500]}")
            print(f"      response: {r.response_body[:500]}")
    statuses: dict[str, set[int]] = {}
    for r in recorder.records:
        statuses.setdefault(f"{r.method} {strip_ids(r.path)}", set()).add(r.status)
    print(f"\nnio: {len(recorder.records)} HTTP requests, distinct endpoints: {len(statuses)}")
    for e in sorted(statuses):
        print(f"  {e}  [{','.join(map(str, sorted(statuses[e])))}]")
    if run.extras:
        ok_extras = sum(1 for r in run.extras if r[1])
        print(f"\nnio: EXTRA steps (not in the exit status): {ok_extras}/{len(run.extras)} passed")
    print(f"\nnio: {len(run.results) - len(failed)}/{len(run.results)} steps passed")
    return 1 if failed or not run.results else 0


def strip_ids(path: str) -> str:
    """Collapses IDs in a request path so the distinct endpoints can be listed."""
    path = unquote(path.split("?")[0])
    path = re.sub(r"/[@!#$][^/]*", "/{id}", path)
    path = re.sub(r"/send/([^/]+)/[^/]+$", r"/send/\1/{txn}", path)
    return path


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
