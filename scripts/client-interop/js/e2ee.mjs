// End-to-end encryption interop: matrix-js-sdk with Rust crypto (initRustCrypto, in-memory store)
// and matrix-nio[e2e] (nio_e2ee_peer.py, driven over stdin/stdout) in one encrypted room.
//
// Usage: node e2ee.mjs --url URL --nio-python PYTHON [--http-log FILE] [--nio-http-log FILE]
//                      [--nio-store DIR] [--no-nio] [--shim-pushrules] [--verbose]
// (--no-nio: the js-only steps; --nio-python defaults to python3, which needs matrix-nio[e2e])
//
// carol (js, Rust crypto): device keys, cross-signing bootstrap with password user-interactive auth,
// secret storage, a new key backup version; an m.megolm.v1.aes-sha2 room shared with dave (nio);
// carol -> dave and dave -> carol encrypted messages, each decrypted by the other library; carol's
// room keys reach the backup; a second js device of carol restores them from the backup (key via
// secret storage) and decrypts the history, then the two js devices exchange messages.
// Every step prints PASS or FAIL (prefix "e2ee"); exit status non-zero when a step failed.

import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

import { ClientEvent, createClient, MatrixError, Method, SyncState } from "matrix-js-sdk";
import { logger } from "matrix-js-sdk/lib/logger.js";

const { values: opts } = parseArgs({
    options: {
        url: { type: "string", default: process.env.HS_URL },
        "http-log": { type: "string" },
        "nio-http-log": { type: "string" },
        "nio-python": { type: "string", default: "python3" },
        "nio-store": { type: "string" },
        "no-nio": { type: "boolean", default: false },
        // diagnostic, as in interop.mjs: answer a 404 for GET /pushrules/ with an empty rule set
        "shim-pushrules": { type: "boolean", default: false },
        verbose: { type: "boolean", default: false },
    },
});
if (!opts.url) {
    console.error("e2ee.mjs: --url or HS_URL is required");
    process.exit(2);
}
const baseUrl = opts.url.replace(/\/+$/, "");
const out = (line) => process.stdout.write(`${line}\n`);
if (!opts.verbose) {
    logger.setLevel("silent");
    // the Rust crypto (wasm) logs through console.*: keep stdout for the step lines
    for (const k of ["log", "debug", "info", "warn", "trace"]) console[k] = () => {};
}

const PASSWORD = "interop-Passw0rd!";
const suffix = randomBytes(4).toString("hex");
const WAIT_MS = 20_000;
const HERE = dirname(fileURLToPath(import.meta.url));

// ---------------------------------------------------------------- HTTP recording
const httpLog = [];
// order of request starts and answers, to tell which /sync a client issued after an upload
let httpSeq = 0;
const shimmed = new Set();

function redact(body) {
    if (typeof body !== "string" || !body) return body ? "<binary>" : "";
    try {
        const obj = JSON.parse(body);
        for (const k of ["password", "access_token"]) if (k in obj) obj[k] = "<redacted>";
        if (obj.auth && "password" in obj.auth) obj.auth.password = "<redacted>";
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
        const rec = { who, method, path: url.pathname + url.search, status: 0, request_body: redact(init.body).slice?.(0, 2000) ?? "", response_body: "", sent: ++httpSeq, sent_ms: Date.now() };
        httpLog.push(rec);
        try {
            const resp = await fetch(input, init);
            rec.status = resp.status;
            rec.answered = ++httpSeq;
            rec.answered_ms = Date.now();
            // error bodies, and the key endpoints' answers (what the crypto saw) for the --keep log
            if (resp.status >= 400 || /\/keys\/(query|device_signing\/upload|signatures\/upload)$/.test(url.pathname)) {
                rec.response_body = (await resp.clone().text()).slice(0, resp.status >= 400 ? 2000 : 20000);
            }
            if (opts["shim-pushrules"] && resp.status === 404 && method === "GET" && /\/pushrules\/?$/.test(url.pathname)) {
                shimmed.add(`${method} ${url.pathname}`);
                return new Response(JSON.stringify({ global: {} }), { status: 200, headers: { "content-type": "application/json" } });
            }
            return resp;
        } catch (e) {
            rec.status = -1;
            rec.response_body = `${e.name}: ${e.message}`;
            throw e;
        }
    };
}

/** The last recorded request matching method and path regex, as "METHOD path -> status errcode". */
function lastCall(who, method, re) {
    const r = [...httpLog].reverse().find((x) => x.who === who && x.method === method && re.test(x.path.split("?")[0]));
    if (!r) return `no ${method} …${re.source.replace(/\\/g, "").replace(/\$$/, "")} request was made`;
    let errcode = "";
    try {
        errcode = JSON.parse(r.response_body).errcode ?? "";
    } catch {}
    return `${r.method} ${r.path.split("?")[0]} -> ${r.status} ${errcode}`.trim();
}

// ---------------------------------------------------------------- steps
const results = [];
class StepFailed extends Error {}
const expect = (cond, msg) => {
    if (!cond) throw new StepFailed(msg);
};

async function step(name, fn) {
    const start = Date.now();
    try {
        const v = await fn();
        results.push({ name, ok: true });
        out(`PASS  e2ee ${name}  (${Date.now() - start} ms)`);
        return v ?? true;
    } catch (e) {
        let detail;
        if (e instanceof MatrixError) detail = `MatrixError ${e.httpStatus} ${e.errcode}: ${e.data?.error ?? e.message} (${e.url ?? ""})`;
        else if (e instanceof StepFailed) detail = e.message;
        else detail = `${e?.name ?? "Error"}: ${e?.message ?? e}`;
        results.push({ name, ok: false, detail });
        out(`FAIL  e2ee ${name}  (${Date.now() - start} ms)\n      ${detail}`);
        return undefined;
    }
}

/** A step that cannot run because an earlier one failed: counted as FAIL. */
function skipped(name, why) {
    results.push({ name, ok: false, detail: why });
    out(`FAIL  e2ee ${name}  (not run)\n      ${why}`);
}

async function poll(check, what, timeoutMs = WAIT_MS) {
    const end = Date.now() + timeoutMs;
    let last;
    for (;;) {
        try {
            const v = await check();
            if (v) return v;
        } catch (e) {
            last = e;
        }
        if (Date.now() > end) {
            const why = last ? ` (last error: ${last instanceof MatrixError ? `${last.httpStatus} ${last.errcode}` : last.message})` : "";
            throw new StepFailed(`timed out after ${timeoutMs / 1000}s waiting for ${typeof what === "function" ? what() : what}${why}`);
        }
        await new Promise((r) => setTimeout(r, 250));
    }
}

// ---------------------------------------------------------------- nio peer
class NioPeer {
    constructor() {
        const args = [join(HERE, "..", "nio_e2ee_peer.py"), "--url", baseUrl, "--store", opts["nio-store"] ?? mkdtempSync(join(tmpdir(), "nio-e2ee-"))];
        if (opts["nio-http-log"]) args.push("--http-log", opts["nio-http-log"]);
        this.proc = spawn(opts["nio-python"], args, { stdio: ["pipe", "pipe", "inherit"] });
        this.pending = new Map();
        this.next = 1;
        this.exited = new Promise((resolve) => this.proc.on("exit", (code) => {
            for (const { reject } of this.pending.values()) reject(new StepFailed(`nio peer exited (${code}) before answering`));
            this.pending.clear();
            resolve(code);
        }));
        this.proc.on("error", (e) => {
            for (const { reject } of this.pending.values()) reject(new StepFailed(`nio peer: ${e.message}`));
            this.pending.clear();
        });
        createInterface({ input: this.proc.stdout }).on("line", (line) => {
            let msg;
            try {
                msg = JSON.parse(line);
            } catch {
                return;
            }
            const p = this.pending.get(msg.id);
            if (!p) return;
            this.pending.delete(msg.id);
            if (msg.ok) p.resolve(msg.result);
            else p.reject(new StepFailed(`nio: ${msg.error}`));
        });
    }

    call(cmd, args = {}, timeoutMs = WAIT_MS + 15_000) {
        const id = this.next++;
        return new Promise((resolve, reject) => {
            const timer = setTimeout(() => {
                this.pending.delete(id);
                reject(new StepFailed(`nio peer did not answer ${cmd} within ${timeoutMs / 1000}s`));
            }, timeoutMs);
            this.pending.set(id, {
                resolve: (v) => (clearTimeout(timer), resolve(v)),
                reject: (e) => (clearTimeout(timer), reject(e)),
            });
            this.proc.stdin.write(`${JSON.stringify({ id, cmd, ...args })}\n`);
        });
    }
}

// ---------------------------------------------------------------- js clients
const clients = [];
// secret storage keys created by bootstrapSecretStorage, by key ID (shared by carol's devices,
// the way a user would type the recovery key on the second device)
const ssssKeys = new Map();
const cryptoCallbacks = {
    getSecretStorageKey: async ({ keys }) => {
        for (const id of Object.keys(keys)) if (ssssKeys.has(id)) return [id, ssssKeys.get(id)];
        return null;
    },
    cacheSecretStorageKey: (keyId, _info, key) => ssssKeys.set(keyId, key),
};

async function registerUser(who) {
    const username = `${who}_${suffix}`;
    const anon = createClient({ baseUrl, fetchFn: recordingFetch(`${who}-reg`) });
    const data = { username, password: PASSWORD, initial_device_display_name: `js ${who} e2ee` };
    let resp;
    try {
        resp = await anon.registerRequest(data);
    } catch (e) {
        expect(e instanceof MatrixError && e.httpStatus === 401 && e.data?.session, `register -> ${e.httpStatus} ${e.errcode}`);
        resp = await anon.registerRequest({ ...data, auth: { type: "m.login.dummy", session: e.data.session } });
    }
    return { userId: resp.user_id, deviceId: resp.device_id, accessToken: resp.access_token, username };
}

async function loginDevice(who, username, label) {
    const anon = createClient({ baseUrl, fetchFn: recordingFetch(`${who}-login`) });
    const r = await anon.loginRequest({
        type: "m.login.password",
        identifier: { type: "m.id.user", user: username },
        password: PASSWORD,
        initial_device_display_name: label,
    });
    return { userId: r.user_id, deviceId: r.device_id, accessToken: r.access_token, username };
}

/** createClient + initRustCrypto (in-memory store) + startClient until PREPARED. */
async function startCrypto(who, creds) {
    const client = createClient({ baseUrl, ...creds, fetchFn: recordingFetch(who), cryptoCallbacks });
    client.who = who;
    client.username = creds.username;
    clients.push(client);
    await client.initRustCrypto({ useIndexedDB: false });
    expect(client.getCrypto(), "getCrypto() is undefined after initRustCrypto");
    let lastError;
    const prepared = new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new StepFailed(`sync never reached PREPARED${lastError ? `; last sync error: ${lastError}` : ""}`)), 20_000);
        client.on(ClientEvent.Sync, (state) => {
            if (state === SyncState.Error) {
                const err = client.getSyncStateData()?.error;
                lastError = `${err?.httpStatus ?? ""} ${err?.errcode ?? ""} ${err?.message ?? err}`;
            }
            if (state === SyncState.Prepared || state === SyncState.Syncing) {
                clearTimeout(timer);
                resolve();
            }
        });
    });
    await client.startClient({ initialSyncLimit: 20 });
    await prepared;
    return client;
}

/**
 * Waits until `client` has taken in its own last cross-signing upload: a /sync it sent after that
 * upload was answered has been processed, or is long-polling (so the device_lists change is in a
 * processed sync response), and none
 * of its /keys/query requests is in flight or was answered in the last 500 ms. Without this, a
 * key query the Rust crypto queues for an earlier change can run in the middle of the next
 * bootstrapCrossSigning({setupNewCrossSigning}) (between the 401 and the authenticated upload),
 * return the old master key, and make the crypto drop the private keys it just created: a client
 * race whose outcome depends only on timing (seen against Hearth; Synapse answers more slowly).
 */
async function settle(client) {
    const mine = (r) => r.who === client.who;
    const pathOf = (r) => r.path.split("?")[0];
    const upload = [...httpLog].reverse().find((r) => mine(r) && r.method === "POST" && /\/keys\/(device_signing|signatures)\/upload$/.test(pathOf(r)));
    if (!upload) return;
    await poll(async () => {
        if (!upload.answered) return false;
        const syncs = httpLog.filter((r) => mine(r) && r.method === "GET" && /\/sync$/.test(pathOf(r)));
        // a /sync sent after the upload that is either long-polling (nothing newer to tell) or
        // answered and processed (the client sent the next one after it)
        const synced = syncs.some((r) => r.sent > upload.answered
            && (r.answered ? syncs.some((n) => n.sent > r.answered) : Date.now() - r.sent_ms >= 500));
        const queries = httpLog.filter((r) => mine(r) && r.method === "POST" && /\/keys\/query$/.test(pathOf(r)));
        const busy = queries.some((r) => !r.answered || Date.now() - r.answered_ms < 500);
        return synced && !busy;
    }, () => `${client.who}'s client to take in its last key upload (${lastCall(client.who, "POST", /\/keys\/query$/)})`);
}

/** POST /keys/query for one user, the way any client would see the keys on the server. */
function queryKeys(client, userId) {
    return client.http.authedRequest(Method.Post, "/keys/query", undefined, { device_keys: { [userId]: [] } });
}

/** Resolves when the device's keys (matching the local identity keys) are on the server. */
async function deviceKeysOnServer(client) {
    const own = await client.getCrypto().getOwnDeviceKeys();
    const uid = client.getUserId();
    const dev = client.getDeviceId();
    await poll(async () => {
        const r = await queryKeys(client, uid);
        const d = r.device_keys?.[uid]?.[dev];
        return d && d.keys?.[`ed25519:${dev}`] === own.ed25519 && d.keys?.[`curve25519:${dev}`] === own.curve25519;
    }, () => `${uid}/${dev} in POST /keys/query (upload: ${lastCall(client.who, "POST", /\/keys\/upload$/)})`);
}

/** Password UIA for bootstrapCrossSigning: first without auth, then m.login.password with the session. */
function passwordUia(client, notes) {
    return async (makeRequest) => {
        try {
            await makeRequest(null);
            notes.push("the server accepted the first upload of cross-signing keys without user-interactive auth");
            return;
        } catch (e) {
            if (!(e instanceof MatrixError) || e.httpStatus !== 401) throw e;
            const flows = e.data?.flows ?? [];
            expect(flows.some((f) => (f.stages ?? []).includes("m.login.password")),
                `401 from /keys/device_signing/upload offers no m.login.password flow: ${JSON.stringify(e.data)}`);
            notes.push(`401 UIA (flows ${JSON.stringify(flows.map((f) => f.stages))}), answered with m.login.password`);
            await makeRequest({
                type: "m.login.password",
                identifier: { type: "m.id.user", user: client.getUserId() },
                password: PASSWORD,
                session: e.data.session,
            });
        }
    };
}

/** A decrypted m.room.message with this body on the client's live timeline of roomId. */
function decryptedMessage(client, roomId, body) {
    const room = client.getRoom(roomId);
    if (!room) return undefined;
    return room.getLiveTimeline().getEvents().find((ev) => ev.getType() === "m.room.message" && ev.getContent().body === body && !ev.status);
}

async function waitDecrypted(client, roomId, body, sender) {
    const ev = await poll(() => decryptedMessage(client, roomId, body), `${body} decrypted on ${client.who}'s timeline`).catch((e) => {
        const room = client.getRoom(roomId);
        const failures = (room?.getLiveTimeline().getEvents() ?? [])
            .filter((x) => x.isDecryptionFailure())
            .map((x) => `${x.getId()} from ${x.getSender()}: ${x.decryptionFailureReason ?? x.getContent().body}`);
        throw new StepFailed(`${e.message}; undecryptable events on the timeline: ${failures.length ? failures.join("; ") : "none"}`);
    });
    expect(ev.getSender() === sender, `sender ${ev.getSender()} != ${sender}`);
    expect(ev.isEncrypted() && ev.getWireType() === "m.room.encrypted", `arrived as ${ev.getWireType()}, not m.room.encrypted`);
    expect(ev.getWireContent().algorithm === "m.megolm.v1.aes-sha2", `algorithm ${ev.getWireContent().algorithm}`);
    return ev;
}

/** The event as the server stores it: m.room.encrypted with Megolm ciphertext, no plaintext. */
async function assertCiphertextOnServer(client, roomId, eventId, plaintext) {
    const raw = await client.http.authedRequest(Method.Get, `/rooms/${encodeURIComponent(roomId)}/event/${encodeURIComponent(eventId)}`);
    expect(raw.type === "m.room.encrypted", `GET /event -> type ${raw.type}`);
    expect(raw.content?.algorithm === "m.megolm.v1.aes-sha2" && typeof raw.content?.ciphertext === "string",
        `GET /event content ${JSON.stringify(raw.content).slice(0, 200)}`);
    expect(!JSON.stringify(raw).includes(plaintext), "the plaintext is visible in the stored event");
}

// ---------------------------------------------------------------- scenario
let nio = null;

/** Runs the step when every dependency is truthy; otherwise reports it as FAIL (not run). */
async function stepIf(deps, name, fn) {
    const missing = Object.entries(deps).filter(([, v]) => !v).map(([k]) => k);
    if (missing.length) {
        skipped(name, `not run: needs ${missing.join(", ")} (an earlier step failed)`);
        return undefined;
    }
    return step(name, fn);
}

async function main() {
    nio = opts["no-nio"] ? null : new NioPeer();
    const notes = [];
    const printNotes = () => {
        for (const n of notes.splice(0)) out(`      note: ${n}`);
    };

    const carol = await step("carol (js) registers, initRustCrypto({useIndexedDB: false}), startClient reaches PREPARED", async () => {
        const creds = await registerUser("carol");
        return startCrypto("carol", creds);
    });
    const crypto = carol?.getCrypto();
    if (shimmed.size) skipped(`server answers ${[...shimmed].join(", ")} with 404 (shimmed client-side so the later steps could run)`, "startClient never reaches PREPARED without push rules");
    await stepIf({ "carol's client": carol }, "carol's device keys reach the server (POST /keys/upload, seen in POST /keys/query)",
        () => deviceKeysOnServer(carol).then(() => true));

    let dave;
    if (nio) {
        dave = await step("dave (nio[e2e]) registers with encryption on (olm account) and starts sync_forever", async () => {
            const r = await nio.call("register", { username: `dave_${suffix}`, password: PASSWORD });
            expect(r.user_id && r.device_id, `register result ${JSON.stringify(r)}`);
            return r;
        });
        await stepIf({ "dave's client": dave, "carol's client": carol }, "dave's device keys reach the server (nio keys_upload, seen in carol's POST /keys/query)", async () => {
            expect(dave.keys_uploaded, `nio keys_upload: ${dave.upload_error}`);
            await poll(async () => {
                const q = await queryKeys(carol, dave.user_id);
                return q.device_keys?.[dave.user_id]?.[dave.device_id]?.keys?.[`ed25519:${dave.device_id}`] === dave.ed25519;
            }, "dave's device keys in carol's POST /keys/query");
        });
    }

    const xsigned = await stepIf({ "carol's client": carol }, "carol bootstrapCrossSigning (auth callback: password UIA); master, self-signing, user-signing keys on the server; her device cross-signed", async () => {
        await crypto.bootstrapCrossSigning({ authUploadDeviceSigningKeys: passwordUia(carol, notes) });
        expect(await crypto.isCrossSigningReady(), `isCrossSigningReady() false; ${JSON.stringify(await crypto.getCrossSigningStatus())}`);
        const uid = carol.getUserId();
        const ssk = await crypto.getCrossSigningKeyId("self_signing");
        await poll(async () => {
            const q = await queryKeys(carol, uid);
            const sigs = q.device_keys?.[uid]?.[carol.getDeviceId()]?.signatures?.[uid] ?? {};
            return q.master_keys?.[uid] && q.self_signing_keys?.[uid] && q.user_signing_keys?.[uid] && sigs[`ed25519:${ssk}`];
        }, () => `cross-signing keys + the self-signing signature on carol's device in /keys/query (${lastCall("carol", "POST", /\/keys\/device_signing\/upload$/)}; ${lastCall("carol", "POST", /\/keys\/signatures\/upload$/)})`);
        // the Rust crypto learns of the self-signing signature on its device from its own
        // /keys/query after the /sync device_lists change, which may come after ours
        let status;
        await poll(async () => {
            status = await crypto.getDeviceVerificationStatus(uid, carol.getDeviceId());
            return status?.crossSigningVerified;
        }, () => `own device cross-signing verified in carol's client: ${JSON.stringify(status)}`);
    });
    printNotes();

    await stepIf({ "cross-signing": xsigned }, "carol replaces her cross-signing keys (bootstrapCrossSigning setupNewCrossSigning): 401 UIA answered with m.login.password", async () => {
        await settle(carol);
        const before = await crypto.getCrossSigningKeyId("master");
        await crypto.bootstrapCrossSigning({ setupNewCrossSigning: true, authUploadDeviceSigningKeys: passwordUia(carol, notes) });
        expect(notes.some((n) => n.startsWith("401 UIA")), `the server replaced the cross-signing keys without user-interactive auth (${notes.join("; ")})`);
        // the Rust crypto reports the new key once its own /keys/query has returned it
        const after = await poll(async () => {
            const id = await crypto.getCrossSigningKeyId("master");
            return id && id !== before && (await crypto.isCrossSigningReady()) && id;
        }, () => `a new master key in carol's client (was ${before}; ${lastCall("carol", "POST", /\/keys\/device_signing\/upload$/)})`);
        const uid = carol.getUserId();
        const q = await queryKeys(carol, uid);
        expect(Object.keys(q.master_keys?.[uid]?.keys ?? {}).includes(`ed25519:${after}`), `POST /keys/query master key ${JSON.stringify(q.master_keys?.[uid]?.keys)}`);
    });
    printNotes();

    const ssss = await stepIf({ "carol's client": carol }, "carol bootstrapSecretStorage (new key): default key + cross-signing private keys encrypted in account data", async () => {
        await crypto.bootstrapSecretStorage({ createSecretStorageKey: () => crypto.createRecoveryKeyFromPassphrase(), setupNewSecretStorage: true });
        expect(await crypto.isSecretStorageReady(), "isSecretStorageReady() false");
        const def = await carol.getAccountDataFromServer("m.secret_storage.default_key");
        expect(def?.key && ssssKeys.has(def.key), `m.secret_storage.default_key ${JSON.stringify(def)}`);
        for (const t of ["m.cross_signing.master", "m.cross_signing.self_signing", "m.cross_signing.user_signing"]) {
            const c = await carol.getAccountDataFromServer(t);
            expect(c?.encrypted?.[def.key]?.ciphertext, `${t} account data ${JSON.stringify(c)}`);
        }
    });

    const backupVersion = await stepIf({ "carol's client": carol }, "carol resetKeyBackup: new backup version (POST /room_keys/version), trusted, active, key in secret storage", async () => {
        await crypto.resetKeyBackup();
        const info = await carol.http.authedRequest(Method.Get, "/room_keys/version").catch((e) => {
            throw new StepFailed(`GET /room_keys/version after resetKeyBackup -> ${e.httpStatus} ${e.errcode} (${lastCall("carol", "POST", /\/room_keys\/version$/)})`);
        });
        expect(info.version && info.algorithm === "m.megolm_backup.v1.curve25519-aes-sha2" && info.auth_data?.public_key,
            `GET /room_keys/version ${JSON.stringify(info)}`);
        expect(info.auth_data.signatures?.[carol.getUserId()], `backup auth_data carries no signature of carol's: ${JSON.stringify(info.auth_data)}`);
        const trust = await crypto.isKeyBackupTrusted(info);
        expect(trust.trusted && trust.matchesDecryptionKey, `isKeyBackupTrusted ${JSON.stringify(trust)}`);
        await poll(async () => (await crypto.getActiveSessionBackupVersion()) === info.version, `backup version ${info.version} active on carol's device`);
        if (ssss) {
            const stored = await carol.getAccountDataFromServer("m.megolm_backup.v1");
            expect(stored?.encrypted, `m.megolm_backup.v1 account data ${JSON.stringify(stored)}`);
        }
        return info.version;
    });

    const roomId = await stepIf({ "carol's client": carol }, `carol createRoom with m.room.encryption (m.megolm.v1.aes-sha2)${nio ? " and invites dave" : ""}`, async () => {
        const { room_id: id } = await carol.createRoom({
            name: "E2EE interop",
            preset: "private_chat",
            invite: dave ? [dave.user_id] : [],
            initial_state: [{ type: "m.room.encryption", state_key: "", content: { algorithm: "m.megolm.v1.aes-sha2" } }],
        });
        await poll(async () => carol.getRoom(id) && (await crypto.isEncryptionEnabledInRoom(id)), "the room to be encrypted in carol's client");
        return id;
    });

    const history = `history from dave ${suffix}`;
    let historySent;
    if (nio) {
        const joined = await stepIf({ "the encrypted room": roomId, "dave's client": dave }, "dave (nio) joins; nio sees the room as encrypted; carol sees him joined", async () => {
            await nio.call("join", { room_id: roomId });
            await poll(() => carol.getRoom(roomId)?.getMember(dave.user_id)?.membership === "join", "dave's join in carol's client");
        });
        const body = `secret from js carol ${suffix}`;
        const sent = await stepIf({ "dave's join": joined }, "carol sends an encrypted message (claims dave's one-time key, sends him the room key over Olm; stored as m.room.encrypted)", async () => {
            const { event_id: id } = await carol.sendTextMessage(roomId, body);
            await assertCiphertextOnServer(carol, roomId, id, body);
            const toDevice = httpLog.filter((r) => r.who === "carol" && r.method === "PUT" && r.path.includes("/sendToDevice/m.room.encrypted/"));
            const claims = httpLog.filter((r) => r.who === "carol" && r.method === "POST" && /\/keys\/claim$/.test(r.path.split("?")[0]));
            expect(claims.some((r) => r.status === 200), `carol claimed no one-time key for dave's device (${lastCall("carol", "POST", /\/keys\/query$/)}; ${lastCall("carol", "POST", /\/keys\/claim$/)})`);
            expect(toDevice.some((r) => r.status === 200),
                `no successful PUT /sendToDevice/m.room.encrypted: dave's device got no room key (${lastCall("carol", "POST", /\/keys\/query$/)}; ${lastCall("carol", "POST", /\/keys\/claim$/)})`);
            return id;
        });
        await stepIf({ "carol's message": sent }, "dave (nio) decrypts carol's message", async () => {
            const r = await nio.call("wait_message", { room_id: roomId, body });
            expect(r.sender === carol.getUserId() && r.decrypted, `nio: ${JSON.stringify(r)}`);
            expect(r.event_id === sent, `event_id ${r.event_id} != ${sent}`);
        });
        const daveBody = `secret from nio dave ${suffix}`;
        const daveSent = await stepIf({ "dave's join": joined }, "dave (nio) sends an encrypted message (room key to carol's device over Olm; m.room.encrypted on the wire)", async () => {
            const r = await nio.call("send", { room_id: roomId, body: daveBody });
            expect(r.wire_type === "m.room.encrypted", `nio sent ${r.wire_type}`);
            expect(r.room_key_to_device_ok > 0, `nio sent its room key to no device (${r.keys_query}; ${r.keys_claim}); event ${r.event_id} was sent anyway`);
            return r.event_id;
        });
        await stepIf({ "dave's message": daveSent }, "carol (js) decrypts dave's message", async () => {
            const ev = await waitDecrypted(carol, roomId, daveBody, dave.user_id);
            expect(ev.getId() === daveSent, `event_id ${ev.getId()} != ${daveSent}`);
        });
        if (daveSent) historySent = await nio.call("send", { room_id: roomId, body: history }).then(() => true, () => false);
    }

    // without nio nothing was encrypted yet: one message gives carol an outbound session to back up
    if (!nio && roomId) await carol.sendTextMessage(roomId, `alone in here ${suffix}`).catch(() => {});
    await stepIf({ "a backup version": backupVersion, "the encrypted room": roomId }, "carol's Megolm sessions reach the key backup (PUT /room_keys/keys; GET /room_keys/keys lists the room)", async () => {
        // the Rust crypto uploads room keys to the backup in batches, a few seconds after they appear
        await poll(async () => {
            const r = await carol.http.authedRequest(Method.Get, "/room_keys/keys", { version: backupVersion });
            return Object.keys(r.rooms?.[roomId]?.sessions ?? {}).length > 0;
        }, () => `the room's sessions in the backup (${lastCall("carol", "PUT", /\/room_keys\/keys$/)})`, 30_000);
    });

    // ---- a second js device of carol: restore from the backup, then js <-> js
    const carol2 = await stepIf({ "carol's client": carol }, "carol logs in a second js device (Rust crypto), startClient, device keys on the server", async () => {
        const creds = await loginDevice("carol2", carol.username, "js carol second device");
        const c = await startCrypto("carol2", creds);
        await deviceKeysOnServer(c);
        return c;
    });

    if (nio) {
        await stepIf({ "carol's second device": carol2, "a backup version": backupVersion, "secret storage": ssss, "dave's history message": historySent },
            "carol's second device: backup key from secret storage + restoreKeyBackup decrypts dave's earlier message", async () => {
                const c2 = carol2.getCrypto();
                await c2.loadSessionBackupPrivateKeyFromSecretStorage();
                await c2.checkKeyBackupAndEnable();
                // the history message may reach the backup a little after the others
                await poll(async () => {
                    const r = await c2.restoreKeyBackup();
                    return r.imported > 0 && decryptedMessage(carol2, roomId, history);
                }, () => `dave's earlier message decrypted from the backed-up session (${lastCall("carol2", "GET", /\/room_keys\/keys$/)})`);
            });
    }

    const c1Body = `from carol's first js device ${suffix}`;
    await stepIf({ "carol's second device": carol2, "the encrypted room": roomId }, "js -> js: carol's first device learns of her second device (/sync device_lists), sends; the second decrypts", async () => {
        const uid = carol.getUserId();
        await poll(async () => (await crypto.getUserDeviceInfo([uid])).get(uid)?.has(carol2.getDeviceId()),
            () => `carol's second device in her first device's device list (${lastCall("carol", "POST", /\/keys\/query$/)})`);
        await carol.sendTextMessage(roomId, c1Body);
        await waitDecrypted(carol2, roomId, c1Body, carol.getUserId());
    });
    const back = `from carol's second js device ${suffix}`;
    const backSent = await stepIf({ "carol's second device": carol2, "the encrypted room": roomId }, "js -> js: carol's second device sends, her first device decrypts", async () => {
        await carol2.sendTextMessage(roomId, back);
        await waitDecrypted(carol, roomId, back, carol.getUserId());
    });
    if (nio) {
        await stepIf({ "dave joined": carol?.getRoom(roomId ?? "")?.getMember(dave?.user_id ?? "")?.membership === "join", "carol2's message": backSent },
            "dave (nio) decrypts the message from carol's second device", async () => {
                const r = await nio.call("wait_message", { room_id: roomId, body: back });
                expect(r.decrypted, `nio: ${JSON.stringify(r)}`);
            });
    }
}

let nioSummary;
try {
    await main();
} catch (e) {
    results.push({ name: "unexpected exception", ok: false });
    out(`FAIL  e2ee unexpected exception\n      ${e?.stack ?? e}`);
} finally {
    for (const c of clients) c.stopClient();
}
// stop the nio peer (if it was started) and collect its HTTP summary
if (nio) nioSummary = await nio.call("quit", {}, 10_000).catch(() => undefined);

if (opts["http-log"]) writeFileSync(opts["http-log"], httpLog.map((r) => JSON.stringify(r)).join("\n") + "\n");
const strip = (p) => p.split("?")[0].replace(/\/[@!#$][^/]*/g, "/{id}").replace(/%(40|21|23|24)[^/]*/g, "{id}")
    .replace(/\/(send|sendToDevice)\/([^/]+)\/[^/]+$/, "/$1/$2/{txn}").replace(/\/filter\/[^/]+$/, "/filter/{n}");
/** Error responses, one line per distinct endpoint + status + body (with a count). */
function printErrors(label, records) {
    const groups = new Map();
    for (const r of records.filter((x) => x.status >= 400)) {
        const k = `[${r.who}] ${r.method} ${strip(r.path)} -> ${r.status}\n      response: ${r.response_body.slice(0, 300)}`;
        if (!groups.has(k)) groups.set(k, { n: 0, request: r.request_body });
        groups.get(k).n += 1;
    }
    if (!groups.size) return;
    out(`\n${label}: HTTP requests answered with an error status:`);
    for (const [k, { n, request }] of groups) {
        const [head, resp] = k.split("\n");
        out(`  ${head}${n > 1 ? `  (x${n})` : ""}`);
        if (request) out(`      request:  ${String(request).slice(0, 300)}`);
        out(resp);
    }
}
printErrors("e2ee (js)", httpLog);
printErrors("e2ee (nio)", nioSummary?.errors ?? []);
const endpoints = new Map();
for (const r of httpLog) {
    const k = `${r.method} ${strip(r.path)}`;
    if (!endpoints.has(k)) endpoints.set(k, new Set());
    endpoints.get(k).add(r.status);
}
const keyish = [...endpoints.keys()].filter((k) => /keys|sendToDevice|account_data\/m\.(secret|cross|megolm)|\/send\/m\.room\.encrypted/.test(k)).sort();
out(`\ne2ee (js): ${httpLog.length} HTTP requests; key-related endpoints:`);
for (const k of keyish) out(`  ${k}  [${[...endpoints.get(k)].join(",")}]`);
if (nioSummary) {
    const nk = Object.entries(nioSummary.endpoints).filter(([k]) => /keys|sendToDevice|send\//.test(k));
    out(`e2ee (nio): ${nioSummary.requests} HTTP requests; key-related endpoints:`);
    for (const [k, v] of nk) out(`  ${k.replace(/\/sendToDevice\/([^/]+)\/[^/]+$/, "/sendToDevice/$1/{txn}")}  [${v.join(",")}]`);
}
const failed = results.filter((r) => !r.ok);
out(`\ne2ee: ${results.length - failed.length}/${results.length} steps passed`);
process.exit(failed.length || results.length === 0 ? 1 : 0);
