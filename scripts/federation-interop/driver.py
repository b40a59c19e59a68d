"""Drives a Hearth and a Synapse that federate, over their client APIs only.

For each room version: a Hearth user joins a Synapse room and a Synapse user joins a Hearth room;
then in each room messages both ways, a redaction, typing, a read receipt and profile lookups.
With --e2ee-tool (the `e2ee-interop` binary), per room version and with the room on each side, an
end-to-end encrypted exchange with device-list updates both ways (one check line per step).
Then delivery latency: ~50 messages sent one after another on one server, each timed until it
appears in the other server's /sync (P50/P95), Hearth→Synapse and Synapse→Hearth, and with
--hearth2/--synapse2 also Hearth↔Hearth and Synapse↔Synapse, each with its remote join time.
Prints one line per check and the figures; exits 1 if any check failed.
"""
import argparse
import json
import math
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

TIMEOUT = 20.0
failures = []


class Client:
    def __init__(self, base, name):
        self.base, self.name, self.token, self.user_id = base, name, None, None
        self.since = None

    def call(self, method, path, body=None, query=None):
        url = self.base + "/_matrix/client/v3" + path
        if query:
            url += "?" + urllib.parse.urlencode(query)
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", "Bearer " + self.token)
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return resp.status, json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                return e.code, json.loads(raw)
            except ValueError:
                return e.code, {"raw": raw.decode(errors="replace")}

    def ok(self, method, path, body=None, query=None):
        status, out = self.call(method, path, body, query)
        if status != 200:
            raise RuntimeError(f"{self.name} {method} {path}: {status} {out}")
        return out

    def register(self, localpart):
        body = {"username": localpart, "password": "interop-password-1", "auth": {"type": "m.login.dummy"},
                "inhibit_login": False}
        out = self.ok("POST", "/register", body)
        self.token, self.user_id = out["access_token"], out["user_id"]
        self.ok("PUT", f"/profile/{q(self.user_id)}/displayname", {"displayname": localpart.title()})

    def send(self, room, text):
        path = f"/rooms/{q(room)}/send/m.room.message/{uuid.uuid4().hex}"
        return self.ok("PUT", path, {"msgtype": "m.text", "body": text})["event_id"]

    def messages(self, room):
        out = self.ok("GET", f"/rooms/{q(room)}/messages", query={"dir": "b", "limit": "50"})
        return out.get("chunk", [])

    def sync(self, timeout_ms=1000):
        query = {"timeout": str(timeout_ms)}
        if self.since:
            query["since"] = self.since
        out = self.ok("GET", "/sync", query=query)
        self.since = out["next_batch"]
        return out


def q(s):
    return urllib.parse.quote(s, safe="")


def check(name, fn):
    start = time.monotonic()
    try:
        fn()
        print(f"PASS {name} ({(time.monotonic() - start) * 1000:.0f} ms)")
    except Exception as e:  # noqa: BLE001 — every failure is reported, the run goes on
        print(f"FAIL {name}: {e}")
        failures.append(name)


def eventually(what, predicate):
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise RuntimeError(f"timed out waiting for {what}")


def seen_in_sync(client, room, predicate, section="timeline"):
    """Syncs until an event of `room` in `section` matches."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        out = client.sync()
        joined = out.get("rooms", {}).get("join", {}).get(room, {})
        events = joined.get(section, {}).get("events", [])
        if any(predicate(e) for e in events):
            return True
    raise RuntimeError(f"{client.name} never saw the expected {section} event in {room}")


def exercise_room(label, owner, guest, guest_server, version):
    """owner created nothing yet: creates a room of `version`, guest joins over federation."""
    room = owner.ok("POST", "/createRoom", {"room_version": version, "preset": "public_chat",
                                            "name": f"interop {label} v{version}"})["room_id"]
    t0 = time.monotonic()
    status, out = guest.call("POST", f"/join/{q(room)}", {}, {"server_name": guest_server, "via": guest_server})
    if status != 200:
        raise RuntimeError(f"join failed: {status} {out}")
    join_ms = (time.monotonic() - t0) * 1000
    print(f"  remote join ({guest.name} into {owner.name}'s v{version} room): {join_ms:.0f} ms")

    prefix = f"{label} v{version}:"
    check(f"{prefix} owner sees the guest joined", lambda: eventually(
        "membership", lambda: owner.ok("GET", f"/rooms/{q(room)}/joined_members")["joined"].get(guest.user_id)))
    guest.sync(0)
    owner.sync(0)

    def guest_to_owner():
        eid = guest.send(room, f"hello from {guest.name}")
        eventually("guest message at owner", lambda: any(e["event_id"] == eid for e in owner.messages(room)))
    check(f"{prefix} message guest → owner", guest_to_owner)

    owner_event = {}

    def owner_to_guest():
        eid = owner.send(room, f"hello from {owner.name}")
        owner_event["id"] = eid
        seen_in_sync(guest, room, lambda e: e.get("event_id") == eid)
    check(f"{prefix} message owner → guest (via /sync)", owner_to_guest)

    def redaction():
        eid = owner_event["id"]
        owner.ok("PUT", f"/rooms/{q(room)}/redact/{q(eid)}/{uuid.uuid4().hex}", {"reason": "interop"})
        eventually("redacted at guest", lambda: any(
            e["event_id"] == eid and not e.get("content") for e in guest.messages(room)))
    check(f"{prefix} redaction owner → guest", redaction)

    def typing():
        guest.sync(0)
        owner.ok("PUT", f"/rooms/{q(room)}/typing/{q(owner.user_id)}", {"typing": True, "timeout": 10000})
        seen_in_sync(guest, room, lambda e: e.get("type") == "m.typing"
                     and owner.user_id in e.get("content", {}).get("user_ids", []), section="ephemeral")
    check(f"{prefix} typing owner → guest", typing)

    def receipt():
        eid = guest.send(room, "read me")
        eventually("message at owner", lambda: any(e["event_id"] == eid for e in owner.messages(room)))
        owner.sync(0)
        owner.ok("POST", f"/rooms/{q(room)}/receipt/m.read/{q(eid)}", {})
        seen_in_sync(guest, room, lambda e: e.get("type") == "m.receipt"
                     and owner.user_id in json.dumps(e.get("content", {})), section="ephemeral")
    check(f"{prefix} read receipt owner → guest", receipt)

    def profile():
        out = guest.ok("GET", f"/profile/{q(owner.user_id)}")
        if out.get("displayname") != owner.name.title():
            raise RuntimeError(f"profile: {out}")
    check(f"{prefix} remote profile lookup", profile)

    def guest_redaction():
        eid = guest.send(room, "to be redacted by its sender")
        eventually("message at owner", lambda: any(e["event_id"] == eid for e in owner.messages(room)))
        guest.ok("PUT", f"/rooms/{q(room)}/redact/{q(eid)}/{uuid.uuid4().hex}", {"reason": "interop"})
        eventually("redacted at owner", lambda: any(
            e["event_id"] == eid and not e.get("content") for e in owner.messages(room)))
    check(f"{prefix} redaction guest → owner", guest_redaction)

    def guest_typing():
        owner.sync(0)
        guest.ok("PUT", f"/rooms/{q(room)}/typing/{q(guest.user_id)}", {"typing": True, "timeout": 10000})
        seen_in_sync(owner, room, lambda e: e.get("type") == "m.typing"
                     and guest.user_id in e.get("content", {}).get("user_ids", []), section="ephemeral")
    check(f"{prefix} typing guest → owner", guest_typing)

    def guest_leaves():
        guest.ok("POST", f"/rooms/{q(room)}/leave", {})
        eventually("leave at owner", lambda: guest.user_id not in owner.ok(
            "GET", f"/rooms/{q(room)}/joined_members")["joined"])
    check(f"{prefix} guest leaves", guest_leaves)

    def invite_and_join():
        private = owner.ok("POST", "/createRoom", {"room_version": version, "preset": "private_chat",
                                                   "name": f"interop invite {label} v{version}"})["room_id"]
        guest.sync(0)
        owner.ok("POST", f"/rooms/{q(private)}/invite", {"user_id": guest.user_id})
        deadline = time.monotonic() + TIMEOUT
        while private not in guest.sync().get("rooms", {}).get("invite", {}):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{guest.name} never saw the invite")
        guest.ok("POST", f"/join/{q(private)}", {}, {"server_name": guest_server, "via": guest_server})
        eventually("invited guest joined", lambda: owner.ok(
            "GET", f"/rooms/{q(private)}/joined_members")["joined"].get(guest.user_id))
        eid = owner.send(private, "hello, invited guest")
        seen_in_sync(guest, private, lambda e: e.get("event_id") == eid)
    check(f"{prefix} invite owner → guest, accepted", invite_and_join)
    return join_ms


def e2ee_exchange(tool, label, a_url, b_url, version, prefix):
    """Runs the `e2ee-interop` tool (hearth-e2ee devices on both sides): Alice on A creates a
    Megolm room, Bob on B joins; messages both ways, a second device each side announced by a
    device-list update and given the next room key, then deleted. One check line per step."""
    cmd = [tool, "--a", a_url, "--b", b_url, "--room-version", version, "--prefix", prefix]
    start = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    try:
        out = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        print(f"FAIL e2ee {label} v{version}: no result (exit {proc.returncode}): {proc.stderr[-2000:]}")
        failures.append(f"e2ee {label} v{version}")
        return
    for step in out.get("steps", []):
        name = f"e2ee {label} v{version}: {step['name']}"
        if step.get("ok"):
            print(f"PASS {name} ({step.get('ms', 0)} ms)")
        else:
            print(f"FAIL {name}: {step.get('error')}")
            failures.append(name)
    if not out.get("ok") and all(s.get("ok") for s in out.get("steps", [])):
        print(f"FAIL e2ee {label} v{version}: the tool failed without a failing step")
        failures.append(f"e2ee {label} v{version}")
    print(f"  e2ee exchange {label} v{version}: {(time.monotonic() - start) * 1000:.0f} ms in all")


def percentile(samples, p):
    """Nearest-rank percentile of a non-empty list."""
    ordered = sorted(samples)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def delivery_latency(sender, receiver, room, n):
    """Sends n messages one at a time; each is timed from the send request until it appears in
    the receiver's /sync (long-polling). Returns the samples in milliseconds."""
    receiver.sync(0)
    samples = []
    for i in range(n):
        t0 = time.monotonic()
        eid = sender.send(room, f"latency probe {i}")
        while True:
            out = receiver.sync(timeout_ms=5000)
            events = out.get("rooms", {}).get("join", {}).get(room, {}).get("timeline", {}).get("events", [])
            if any(e.get("event_id") == eid for e in events):
                break
            if time.monotonic() - t0 > TIMEOUT:
                raise RuntimeError(f"{receiver.name} never saw probe {i} ({eid})")
        samples.append((time.monotonic() - t0) * 1000)
    return samples


def measure_pair(label, owner, guest, owner_server, version, n, figures):
    """A room of `owner`, joined by `guest` over federation; delivery latency both ways."""
    room = owner.ok("POST", "/createRoom", {"room_version": version, "preset": "public_chat",
                                            "name": f"latency {label}"})["room_id"]
    t0 = time.monotonic()
    guest.ok("POST", f"/join/{q(room)}", {}, {"server_name": owner_server, "via": owner_server})
    join_ms = (time.monotonic() - t0) * 1000
    eventually("membership", lambda: owner.ok("GET", f"/rooms/{q(room)}/joined_members")["joined"].get(guest.user_id))
    figures.append((f"remote join {label} ({guest.kind} joins {owner.kind}'s room)", [join_ms]))
    for sender, receiver in ((owner, guest), (guest, owner)):
        samples = delivery_latency(sender, receiver, room, n)
        figures.append((f"delivery {sender.kind} → {receiver.kind}", samples))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--hearth", required=True)
    p.add_argument("--synapse", required=True)
    p.add_argument("--hearth-name", required=True)
    p.add_argument("--synapse-name", required=True)
    p.add_argument("--versions", default="10 11 12")
    p.add_argument("--latency", type=int, default=50, help="messages per latency measurement (0: none)")
    p.add_argument("--hearth2")
    p.add_argument("--hearth2-name")
    p.add_argument("--synapse2")
    p.add_argument("--synapse2-name")
    p.add_argument("--e2ee-tool", help="path of the e2ee-interop binary (no encrypted checks without it)")
    args = p.parse_args()

    run = uuid.uuid4().hex[:6]
    hearth = Client(args.hearth, "alice")
    synapse = Client(args.synapse, "bob")
    hearth.register(f"alice{run}")
    synapse.register(f"bob{run}")
    hearth.name, synapse.name = f"alice{run}", f"bob{run}"
    joins = []
    for version in args.versions.split():
        for label, owner, guest, server in (("synapse room", synapse, hearth, args.synapse_name),
                                            ("hearth room", hearth, synapse, args.hearth_name)):
            try:
                joins.append((label, version, exercise_room(label, owner, guest, server, version)))
            except Exception as e:  # noqa: BLE001
                print(f"FAIL {label} v{version}: {e}")
                failures.append(f"{label} v{version}")
    for label, version, ms in joins:
        print(f"join time {label} v{version}: {ms:.0f} ms")

    if args.e2ee_tool:
        for version in args.versions.split():
            for label, a_url, b_url in (("hearth room, synapse joins", args.hearth, args.synapse),
                                        ("synapse room, hearth joins", args.synapse, args.hearth)):
                try:
                    e2ee_exchange(args.e2ee_tool, label, a_url, b_url, version, run)
                except Exception as e:  # noqa: BLE001
                    print(f"FAIL e2ee {label} v{version}: {e}")
                    failures.append(f"e2ee {label} v{version}")

    if args.latency > 0:
        version = args.versions.split()[-1]
        hearth.kind, synapse.kind = "Hearth", "Synapse"
        pairs = [("Hearth-Synapse", synapse, hearth, args.synapse_name)]
        if args.hearth2:
            hearth2 = Client(args.hearth2, "carol")
            hearth2.register(f"carol{run}")
            hearth2.kind, hearth.kind = "Hearth2", "Hearth"
            pairs.append(("Hearth-Hearth", hearth, hearth2, args.hearth_name))
        if args.synapse2:
            synapse2 = Client(args.synapse2, "dave")
            synapse2.register(f"dave{run}")
            synapse2.kind = "Synapse2"
            pairs.append(("Synapse-Synapse", synapse, synapse2, args.synapse_name))
        figures = []
        for label, owner, guest, owner_server in pairs:
            check(f"latency {label} (v{version}, {args.latency} messages each way)",
                  lambda: measure_pair(label, owner, guest, owner_server, version, args.latency, figures))
        print(f"figures (room version {version}; ms; nearest-rank percentiles):")
        for what, samples in figures:
            if len(samples) == 1:
                print(f"  {what}: {samples[0]:.0f} ms")
            else:
                print(f"  {what}: n={len(samples)} P50 {percentile(samples, 50):.0f} ms, "
                      f"P95 {percentile(samples, 95):.0f} ms, max {max(samples):.0f} ms")
    print(f"{len(failures)} failure(s)")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
