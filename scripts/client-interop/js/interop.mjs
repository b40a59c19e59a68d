// matrix-js-sdk interop check: walks through what a new user does with a Matrix client library.
//
// Usage: node interop.mjs --url http://127.0.0.1:PORT   (or HS_URL in the environment)
//        [--http-log FILE]  write every HTTP exchange the SDK made as JSON lines
//
// Two users register (answering the 401 user-interactive auth with m.login.dummy), log in, start
// the sync loop, create a room, invite, join, exchange messages, see them arrive as Room.timeline
// events, change a display name, open a DM (createRoom is_direct + m.direct account data), leave
// and stop. No end-to-end encryption (rust crypto is never initialised).
// Every step prints PASS or FAIL; the exit status is non-zero when a step failed. Requests the SDK
// made that were answered 4xx/5xx are listed at the end with request and response bodies.

import { randomBytes } from "node:crypto";
import { writeFileSync } from "node:fs";
import { parseArgs } from "node:util";

import {
    ClientEvent,
    createClient,
    Direction,
    EventType,
    MatrixError,
    RoomEvent,
    RoomMemberEvent,
    RoomStateEvent,
    SyncState,
} from "matrix-js-sdk";
import { logger } from "matrix-js-sdk/lib/logger.js";

const { values: opts } = parseArgs({
    options: {
        url: { type: "string", default: process.env.HS_URL },
        "http-log": { type: "string" },
        verbose: { type: "boolean", default: false },
        // keep every response body (not only error bodies) in the --http-log file
        bodies: { type: "boolean", default: false },
        "no-extras": { type: "boolean", default: false },
        // Diagnostic only: when the server answers GET /pushrules/ with 404, hand the SDK an empty
        // rule set instead, so the steps after startClient can run and reveal further problems.
        "shim-pushrules": { type: "boolean", default: false },
    },
});
if (!opts.url) {
    console.error("interop.mjs: --url or HS_URL is required");
    process.exit(2);
}
const baseUrl = opts.url.replace(/\/+$/, "");
// the SDK logs a lot (even at error level, e.g. MatrixRTC noise on Synapse too); --verbose shows it
if (!opts.verbose) logger.setLevel("silent");

const PASSWORD = "interop-Passw0rd!";
const suffix = randomBytes(4).toString("hex");
const STEP_TIMEOUT_MS = 20_000;

// ---------------------------------------------------------------- HTTP recording
const httpLog = [];
const shimmed = new Set();

// Timeline event IDs seen per client in incremental /sync responses: an incremental sync only
// carries events after `since`, so the same event must never arrive twice.
const syncSeen = new Map();
const syncRepeats = [];
let syncCount = 0;
function noteSync(who, url, body) {
    syncCount += 1;
    const since = url.searchParams.get("since");
    if (!since || url.searchParams.get("full_state") === "true") return;
    if (!syncSeen.has(who)) syncSeen.set(who, new Map());
    const seen = syncSeen.get(who);
    for (const section of ["join", "leave"]) {
        for (const [roomId, room] of Object.entries(body?.rooms?.[section] ?? {})) {
            for (const ev of room?.timeline?.events ?? []) {
                if (!ev.event_id) continue;
                if (seen.has(ev.event_id)) {
                    syncRepeats.push({ who, eventId: ev.event_id, roomId, type: ev.type, first: seen.get(ev.event_id), again: syncCount, since, limited: !!room.timeline.limited });
                } else {
                    seen.set(ev.event_id, syncCount);
                }
            }
        }
    }
}

function redact(body) {
    if (typeof body !== "string" || !body) return body ? "<binary>" : "";
    try {
        const obj = JSON.parse(body);
        for (const k of ["password", "access_token"]) if (k in obj) obj[k] = "<redacted>";
        return JSON.stringify(obj);
    } catch {
        return body;
    }
}

function recordingFetch(who) {
    return async (input, init = {}) => {
        const url = new URL(input instanceof Request ? input.url : String(input));
        url.searchParams.delete("access_token");
        const method = (init.method || "GET").toUpperCase();
        const rec = { who, method, path: url.pathname + url.search, status: 0, request_body: redact(init.body), response_body: "" };
        httpLog.push(rec);
        try {
            const resp = await fetch(input, init);
            rec.status = resp.status;
            if (resp.status >= 400) rec.response_body = (await resp.clone().text()).slice(0, 2000);
            else if (opts.bodies) rec.response_body = await resp.clone().text();
            if (resp.status === 200 && method === "GET" && url.pathname.endsWith("/sync")) {
                noteSync(who, url, await resp.clone().json().catch(() => ({})));
            }
            if (opts["shim-pushrules"] && resp.status === 404 && method === "GET" && /\/pushrules\/?$/.test(url.pathname)) {
                rec.shimmed = true;
                shimmed.add(`${method} ${url.pathname}`);
                return new Response(JSON.stringify({ global: {} }), { status: 200, headers: { "content-type": "application/json" } });
            }
            return resp;
        } catch (e) {
            // the SDK aborts long-polling /sync on stopClient: that is not a server error
            rec.status = -1;
            rec.response_body = `${e.name}: ${e.message}`;
            throw e;
        }
    };
}

// ---------------------------------------------------------------- steps
const results = [];

class StepFailed extends Error {}

function expect(cond, msg) {
    if (!cond) throw new StepFailed(msg);
}

async function step(name, fn) {
    const start = Date.now();
    try {
        const value = await fn();
        report(name, true, "", start);
        return value;
    } catch (e) {
        let detail;
        if (e instanceof MatrixError) detail = `MatrixError ${e.httpStatus} ${e.errcode}: ${e.data?.error ?? e.message}`;
        else if (e instanceof StepFailed) detail = e.message;
        else detail = `${e?.name ?? "Error"}: ${e?.message ?? e}`;
        report(name, false, detail, start);
        return undefined;
    }
}

const extraResults = [];
let inExtra = false;

/** A step beyond the new-user walk-through: reported, but not part of the exit status. */
async function extra(name, fn) {
    inExtra = true;
    try {
        return await step(name, fn);
    } finally {
        inExtra = false;
    }
}

function report(name, ok, detail, start) {
    (inExtra ? extraResults : results).push({ name, ok, detail });
    let line = `${inExtra ? "EXTRA " : ""}${ok ? "PASS" : "FAIL"}  js   ${name}  (${Date.now() - start} ms)`;
    if (detail) line += `\n      ${detail}`;
    console.log(line);
}

/** Resolves when check() is true, re-checking on every emission of `event` from `emitter`. */
function waitFor(emitter, event, check, what, timeoutMs = STEP_TIMEOUT_MS) {
    return new Promise((resolve, reject) => {
        const done = (v) => {
            clearTimeout(timer);
            emitter.removeListener(event, listener);
            resolve(v);
        };
        const listener = (...args) => {
            try {
                const v = check(...args);
                if (v) done(v);
            } catch (e) {
                clearTimeout(timer);
                emitter.removeListener(event, listener);
                reject(e);
            }
        };
        const timer = setTimeout(() => {
            emitter.removeListener(event, listener);
            reject(new StepFailed(`timed out after ${timeoutMs / 1000}s waiting for ${what}`));
        }, timeoutMs);
        emitter.on(event, listener);
        listener(); // the condition may already hold
    });
}

function withTimeout(promise, what, timeoutMs = STEP_TIMEOUT_MS) {
    let timer;
    return Promise.race([
        promise,
        new Promise((_, reject) => {
            timer = setTimeout(() => reject(new StepFailed(`timed out after ${timeoutMs / 1000}s: ${what}`)), timeoutMs);
        }),
    ]).finally(() => clearTimeout(timer));
}

// ---------------------------------------------------------------- scenario
const users = {};
const clients = [];

async function register(who) {
    const username = `${who}_${suffix}`;
    const anon = createClient({ baseUrl, fetchFn: recordingFetch(`${who}-reg`) });
    const data = { username, password: PASSWORD, initial_device_display_name: `js ${who}` };
    let resp;
    try {
        resp = await anon.registerRequest(data);
        users[`${who}_note`] = "server registered without a user-interactive auth round (no 401)";
    } catch (e) {
        expect(e instanceof MatrixError, `register threw ${e}`);
        expect(e.httpStatus === 401, `first /register -> ${e.httpStatus} ${e.errcode}: ${e.data?.error}`);
        const session = e.data?.session;
        const flows = e.data?.flows ?? [];
        expect(typeof session === "string" && session.length > 0, `401 body has no session: ${JSON.stringify(e.data)}`);
        expect(flows.some((f) => (f.stages ?? []).length === 1 && f.stages[0] === "m.login.dummy"),
            `401 flows offer no [m.login.dummy] flow: ${JSON.stringify(flows)}`);
        resp = await anon.registerRequest({ ...data, auth: { type: "m.login.dummy", session } });
    }
    expect(resp.user_id?.startsWith(`@${username}:`), `user_id ${resp.user_id}`);
    expect(resp.access_token && resp.device_id, "register response lacks access_token/device_id");
    users[who] = resp.user_id;
    users[`${who}_username`] = username;
}

async function login(who) {
    const anon = createClient({ baseUrl, fetchFn: recordingFetch(`${who}-login`) });
    const flows = await anon.loginFlows();
    expect(flows.flows.some((f) => f.type === "m.login.password"), `GET /login flows: ${JSON.stringify(flows)}`);
    const resp = await anon.loginRequest({
        type: "m.login.password",
        identifier: { type: "m.id.user", user: users[`${who}_username`] },
        password: PASSWORD,
        initial_device_display_name: `js ${who} login`,
    });
    expect(resp.user_id === users[who], `login user_id ${resp.user_id} != ${users[who]}`);
    const client = createClient({
        baseUrl,
        userId: resp.user_id,
        accessToken: resp.access_token,
        deviceId: resp.device_id,
        fetchFn: recordingFetch(who),
    });
    clients.push(client);
    const whoami = await client.whoami();
    expect(whoami.user_id === resp.user_id, `whoami ${whoami.user_id}`);
    return client;
}

async function start(client) {
    // The SDK retries failed start-up requests by itself, so an ERROR state is only fatal if
    // PREPARED never follows; the last error is reported.
    let lastError;
    const prepared = waitFor(client, ClientEvent.Sync, (state) => {
        if (state === SyncState.Error) {
            const err = client.getSyncStateData()?.error;
            lastError = `${err?.httpStatus ?? ""} ${err?.errcode ?? ""} ${err?.message ?? err}`;
        }
        return state === SyncState.Prepared || client.getSyncState() === SyncState.Prepared;
    }, "sync state PREPARED", 15_000);
    await client.startClient({ initialSyncLimit: 10 });
    try {
        await prepared;
    } catch (e) {
        if (lastError) throw new StepFailed(`${e.message}; sync state stayed ERROR: ${lastError}`);
        throw e;
    }
}

function timelineHas(client, roomId, pred) {
    const room = client.getRoom(roomId);
    return !!room && room.getLiveTimeline().getEvents().some(pred);
}

async function main() {
    let versions;
    await step("GET /versions (getVersions)", async () => {
        const anon = createClient({ baseUrl, fetchFn: recordingFetch("anon") });
        versions = await anon.getVersions();
        expect(Array.isArray(versions.versions) && versions.versions.length > 0, `versions ${JSON.stringify(versions)}`);
    });

    await step("register alice (401 UIA, retry with m.login.dummy)", () => register("alice"));
    await step("register bob (401 UIA, retry with m.login.dummy)", () => register("bob"));
    if (!users.alice || !users.bob) return;
    for (const who of ["alice", "bob"]) if (users[`${who}_note`]) console.log(`      note: ${who}: ${users[`${who}_note`]}`);

    const alice = await step("login alice (GET /login flows, m.login.password, whoami)", () => login("alice"));
    const bob = await step("login bob (GET /login flows, m.login.password, whoami)", () => login("bob"));
    if (!alice || !bob) return;

    const aliceUp = await step("alice startClient({initialSyncLimit: 10}) reaches PREPARED", () => start(alice).then(() => true));
    const bobUp = await step("bob startClient({initialSyncLimit: 10}) reaches PREPARED", () => start(bob).then(() => true));
    if (shimmed.size) {
        report(`server answers ${[...shimmed].join(", ")} (404; shimmed client-side so the later steps could run)`, false,
            "the SDK's startClient never reaches PREPARED without push rules", Date.now());
    }
    if (!aliceUp || !bobUp) return;

    const roomId = await step("alice createRoom + room appears in her client", async () => {
        const { room_id: id } = await alice.createRoom({ name: "JS interop room", topic: "js-sdk interop", preset: "private_chat" });
        expect(id?.startsWith("!"), `room_id ${id}`);
        await waitFor(alice, ClientEvent.Room, () => alice.getRoom(id)?.getMyMembership() === "join", "room in alice's store");
        const room = alice.getRoom(id);
        await waitFor(alice, RoomEvent.Name, () => room.name === "JS interop room", `room name (is ${room.name})`);
        return id;
    });
    if (!roomId) return;

    await step("alice invite bob + bob's client sees the invite", async () => {
        const invited = waitFor(bob, ClientEvent.Room, () => bob.getRoom(roomId)?.getMyMembership() === "invite", "invite in bob's store");
        await alice.invite(roomId, users.bob);
        await invited;
        const inviter = bob.getRoom(roomId).getMember(users.bob)?.events.member?.getSender();
        expect(inviter === users.alice, `invite sender ${inviter}`);
    });

    await step("bob joinRoom + both clients see bob joined", async () => {
        await bob.joinRoom(roomId);
        await waitFor(bob, RoomEvent.MyMembership, () => bob.getRoom(roomId)?.getMyMembership() === "join", "bob's membership join");
        await waitFor(alice, RoomMemberEvent.Membership,
            () => alice.getRoom(roomId)?.getMember(users.bob)?.membership === "join", "bob joined in alice's room");
    });

    const seen = (client, body, sender) => timelineHas(client, roomId,
        (ev) => ev.getType() === EventType.RoomMessage && ev.getContent().body === body && ev.getSender() === sender && !ev.status);

    const bobSeesAlice = waitFor(bob, RoomEvent.Timeline, () => seen(bob, "hello from alice (js)", users.alice), "alice's message on bob's timeline");
    const aliceSeesBob = waitFor(alice, RoomEvent.Timeline, () => seen(alice, "hello from bob (js)", users.bob), "bob's message on alice's timeline");
    bobSeesAlice.catch(() => {});
    aliceSeesBob.catch(() => {});
    const aliceSent = await step("alice sendTextMessage", async () => {
        const r = await alice.sendTextMessage(roomId, "hello from alice (js)");
        expect(r.event_id?.startsWith("$"), `event_id ${r.event_id}`);
        return r.event_id;
    });
    const bobSent = await step("bob sendTextMessage", async () => {
        const r = await bob.sendTextMessage(roomId, "hello from bob (js)");
        expect(r.event_id?.startsWith("$"), `event_id ${r.event_id}`);
        return r.event_id;
    });
    await step("bob gets alice's message as a Room.timeline event", async () => {
        expect(aliceSent, "alice's message was not sent");
        await bobSeesAlice;
    });
    await step("alice gets bob's message as a Room.timeline event", async () => {
        expect(bobSent, "bob's message was not sent");
        await aliceSeesBob;
    });

    await step("bob paginates /messages backwards and finds both messages", async () => {
        const res = await bob.createMessagesRequest(roomId, null, 50, Direction.Backward);
        const bodies = res.chunk.filter((e) => e.type === "m.room.message").map((e) => e.content.body);
        for (const b of ["hello from alice (js)", "hello from bob (js)"]) expect(bodies.includes(b), `${b} missing: ${JSON.stringify(bodies)}`);
    });

    await step("bob setDisplayName + alice getProfileInfo + member name updates in the room", async () => {
        await bob.setDisplayName("Bob JS");
        const profile = await alice.getProfileInfo(users.bob);
        expect(profile.displayname === "Bob JS", `profile ${JSON.stringify(profile)}`);
        await waitFor(alice, RoomMemberEvent.Name, () => alice.getRoom(roomId)?.getMember(users.bob)?.name === "Bob JS",
            "bob's new name on his m.room.member in alice's room", 10_000);
    });

    const dmId = await step("DM: alice createRoom({is_direct, invite}) + setAccountData m.direct (echoed via sync)", async () => {
        const { room_id: id } = await alice.createRoom({ is_direct: true, invite: [users.bob], preset: "trusted_private_chat" });
        await waitFor(alice, ClientEvent.Room, () => alice.getRoom(id)?.getMyMembership() === "join", "DM in alice's store");
        // setAccountData resolves only once the change comes back through /sync
        await withTimeout(alice.setAccountData(EventType.Direct, { [users.bob]: [id] }), "m.direct echo via /sync");
        expect(JSON.stringify(alice.getAccountData(EventType.Direct)?.getContent()) === JSON.stringify({ [users.bob]: [id] }),
            `m.direct in store: ${JSON.stringify(alice.getAccountData(EventType.Direct)?.getContent())}`);
        const fromServer = await alice.getAccountDataFromServer(EventType.Direct);
        expect(fromServer?.[users.bob]?.[0] === id, `GET m.direct: ${JSON.stringify(fromServer)}`);
        return id;
    });

    await step("DM: bob sees the invite as direct (is_direct), joins, records m.direct", async () => {
        expect(dmId, "no DM room");
        await waitFor(bob, ClientEvent.Room, () => bob.getRoom(dmId)?.getMyMembership() === "invite", "DM invite in bob's store");
        const room = bob.getRoom(dmId);
        const inviteEvent = room.getMember(users.bob)?.events.member;
        expect(inviteEvent?.getContent().is_direct === true, `invite content ${JSON.stringify(inviteEvent?.getContent())}`);
        expect(room.getDMInviter() === users.alice, `getDMInviter() -> ${room.getDMInviter()}`);
        await bob.joinRoom(dmId);
        await withTimeout(bob.setAccountData(EventType.Direct, { [users.alice]: [dmId] }), "bob's m.direct echo via /sync");
        const body = "psst (js DM)";
        const got = waitFor(alice, RoomEvent.Timeline,
            () => timelineHas(alice, dmId, (ev) => ev.getContent().body === body && ev.getSender() === users.bob), "bob's DM message at alice");
        await bob.sendTextMessage(dmId, body);
        await got;
    });

    if (!opts["no-extras"]) await extras(alice, bob, roomId);

    await step("bob leave + both clients see the leave", async () => {
        await bob.leave(roomId);
        await waitFor(bob, RoomEvent.MyMembership, () => bob.getRoom(roomId)?.getMyMembership() === "leave", "bob's own membership leave");
        await waitFor(alice, RoomMemberEvent.Membership,
            () => alice.getRoom(roomId)?.getMember(users.bob)?.membership === "leave", "bob's leave in alice's room");
    });

    await step("no event delivered twice across incremental /sync timelines", async () => {
        expect(syncCount > 0, "no /sync responses were recorded");
        if (syncRepeats.length) {
            const lines = syncRepeats.slice(0, 6).map((r) =>
                `${r.who}: ${r.type} ${r.eventId} came again in sync #${r.again} (since=${r.since}, limited=${r.limited}), first in sync #${r.first}`);
            throw new StepFailed(`${syncRepeats.length} timeline events delivered twice by incremental /sync:\n      ${lines.join("\n      ")}`);
        }
    });

    await step("stopClient (both) + logout alice", async () => {
        alice.stopClient();
        bob.stopClient();
        await alice.logout();
        let rejected;
        try {
            await alice.whoami();
        } catch (e) {
            rejected = e;
        }
        expect(rejected instanceof MatrixError && rejected.errcode === "M_UNKNOWN_TOKEN",
            `whoami after logout -> ${rejected ? `${rejected.httpStatus} ${rejected.errcode}` : "success"}`);
    });
}

// Other things clients commonly do (typing, receipts, presence, state, redaction, devices, tags,
// media, push rules, TURN): reported as EXTRA, not counted in the exit status.
async function extras(alice, bob, roomId) {
    await extra("sendTyping + bob's client sees alice typing", async () => {
        const typing = waitFor(bob, RoomMemberEvent.Typing,
            () => bob.getRoom(roomId)?.getMember(users.alice)?.typing === true, "alice typing at bob", 10_000);
        await alice.sendTyping(roomId, true, 10_000);
        await typing;
        await alice.sendTyping(roomId, false, 0);
    });

    await extra("sendReadReceipt + alice's client sees bob's receipt", async () => {
        const body = "please read me (js)";
        const arrived = waitFor(bob, RoomEvent.Timeline,
            () => timelineHas(bob, roomId, (e) => e.getContent().body === body && !!e.getId()?.startsWith("$")), "alice's message at bob", 10_000);
        const { event_id: id } = await alice.sendTextMessage(roomId, body);
        await arrived;
        const ev = bob.getRoom(roomId).findEventById(id);
        expect(ev, `bob's client has no ${id}`);
        const seen = waitFor(alice, RoomEvent.Receipt,
            () => alice.getRoom(roomId)?.getReadReceiptForUserId(users.bob, true)?.eventId === id, "bob's receipt at alice", 10_000);
        await bob.sendReadReceipt(ev);
        await seen;
        await bob.setRoomReadMarkers(roomId, id, ev);
    });

    await extra("setPresence online + getPresence", async () => {
        await alice.setPresence({ presence: "online", status_msg: "interop testing" });
        const p = await bob.getPresence(users.alice);
        expect(p.presence === "online", `presence ${JSON.stringify(p)}`);
    });

    await extra("setRoomTopic + bob's client sees the new topic", async () => {
        const changed = waitFor(bob, RoomStateEvent.Events,
            () => bob.getRoom(roomId)?.currentState.getStateEvents("m.room.topic", "")?.getContent().topic === "changed by js", "topic at bob", 10_000);
        await alice.setRoomTopic(roomId, "changed by js");
        await changed;
    });

    await extra("redactEvent + bob's client sees the redaction", async () => {
        const { event_id: id } = await alice.sendTextMessage(roomId, "oops (js)");
        const redacted = waitFor(bob, RoomEvent.Redaction, (ev) => ev?.event?.redacts === id || ev?.getContent?.()?.redacts === id, "redaction at bob", 10_000);
        await alice.redactEvent(roomId, id, undefined, { reason: "interop" });
        await redacted;
    });

    await extra("getDevices + setDeviceDetails", async () => {
        const { devices } = await alice.getDevices();
        expect(devices.some((d) => d.device_id === alice.getDeviceId()), "own device missing");
        await alice.setDeviceDetails(alice.getDeviceId(), { display_name: "renamed by js" });
    });

    await extra("setRoomTag m.favourite (echoed via sync)", async () => {
        const tagged = waitFor(alice, RoomEvent.Tags, () => !!alice.getRoom(roomId)?.tags?.["m.favourite"], "tag via sync", 10_000);
        await alice.setRoomTag(roomId, "m.favourite", { order: 0.5 });
        await tagged;
    });

    await extra("getMediaConfig (authenticated media)", async () => {
        await alice.getMediaConfig(true);
    });

    await extra("uploadContent", async () => {
        const r = await alice.uploadContent(Buffer.from("hello interop"), { type: "text/plain", name: "hi.txt" });
        expect(r.content_uri?.startsWith("mxc://"), `content_uri ${r.content_uri}`);
    });

    await extra("getPushRules + addPushRule", async () => {
        await alice.getPushRules();
        await alice.addPushRule("global", "content", "interop", { actions: ["notify"], pattern: "interop" });
    });

    await extra("turnServer (/voip/turnServer)", async () => {
        await alice.turnServer();
    });
}

function stripIds(path) {
    return path.split("?")[0]
        .replace(/\/[@!#$][^/]*/g, "/{id}")
        .replace(/%40[^/]*/g, "{id}")
        .replace(/%21[^/]*/g, "{id}")
        .replace(/\/send\/([^/]+)\/[^/]+$/, "/send/$1/{txn}")
        .replace(/\/filter\/[^/]+$/, "/filter/{n}");
}

try {
    await main();
} catch (e) {
    report("unexpected exception", false, `${e?.stack ?? e}`, Date.now());
} finally {
    for (const c of clients) c.stopClient();
}

if (opts["http-log"]) writeFileSync(opts["http-log"], httpLog.map((r) => JSON.stringify(r)).join("\n") + "\n");
const errors = httpLog.filter((r) => r.status >= 400);
if (errors.length) {
    console.log("\njs: HTTP requests answered with an error status:");
    for (const r of errors) {
        console.log(`  [${r.who}] ${r.method} ${r.path} -> ${r.status}`);
        if (r.request_body) console.log(`      request:  ${String(r.request_body).slice(0, 500)}`);
        console.log(`      response: ${r.response_body.slice(0, 500)}`);
    }
}
const endpoints = [...new Set(httpLog.map((r) => `${r.method} ${stripIds(r.path)}`))].sort();
console.log(`\njs: ${httpLog.length} HTTP requests, distinct endpoints: ${endpoints.length}`);
for (const e of endpoints) {
    const statuses = [...new Set(httpLog.filter((r) => `${r.method} ${stripIds(r.path)}` === e).map((r) => r.status))].join(",");
    console.log(`  ${e}  [${statuses}]`);
}
if (shimmed.size) {
    console.log(`\njs: WARNING --shim-pushrules replaced the server's 404 for ${[...shimmed].join(", ")} with an empty rule set;`);
    console.log("    a real client stops at startClient there (the SDK retries push rules forever).");
}
if (extraResults.length) console.log(`\njs: EXTRA steps (not in the exit status): ${extraResults.filter((r) => r.ok).length}/${extraResults.length} passed`);
const failed = results.filter((r) => !r.ok);
console.log(`\njs: ${results.length - failed.length}/${results.length} steps passed`);
process.exit(failed.length || results.length === 0 ? 1 : 0);
