//! A small Matrix client for the tests. Every JSON response it receives is validated against the
//! spec (response schema of the endpoint, and event schemas for the events it carries); a
//! violation panics with the JSON path of the offending field.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use reqwest::Method;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

use crate::spec::Spec;

pub const V3: &str = "/_matrix/client/v3";

/// Percent-encode one path segment (room IDs, event IDs, aliases, user IDs, state keys...).
pub fn enc(s: &str) -> String {
    urlencoding::encode(s).into_owned()
}

/// An HTTP response: status, headers and the body (JSON when it parsed, else `Value::Null`).
#[derive(Debug, Clone)]
pub struct Response {
    pub method: String,
    pub path: String,
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Response {
    pub fn errcode(&self) -> Option<&str> {
        self.body.get("errcode").and_then(Value::as_str)
    }

    /// Assert the status code and return the body.
    #[track_caller]
    pub fn expect(&self, status: u16) -> &Value {
        assert_eq!(
            self.status, status,
            "{} {}: expected HTTP {status}, got {} with body {}",
            self.method, self.path, self.status, self.text
        );
        &self.body
    }

    #[track_caller]
    pub fn ok(&self) -> &Value {
        self.expect(200)
    }

    /// Assert an error response: status and `errcode`.
    #[track_caller]
    pub fn expect_err(&self, status: u16, errcode: &str) {
        assert_eq!(
            (self.status, self.errcode()),
            (status, Some(errcode)),
            "{} {}: expected HTTP {status} {errcode}, got {} with body {}",
            self.method,
            self.path,
            self.status,
            self.text
        );
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Options of one `/sync` call.
#[derive(Debug, Clone, Default)]
pub struct SyncOpts {
    pub since: Option<String>,
    pub timeout_ms: Option<u64>,
    /// A filter ID or an inline JSON filter.
    pub filter: Option<String>,
    pub full_state: bool,
}

impl SyncOpts {
    pub fn since(since: &str) -> Self {
        SyncOpts {
            since: Some(since.to_string()),
            ..Default::default()
        }
    }
    pub fn filter(mut self, filter: impl Into<String>) -> Self {
        self.filter = Some(filter.into());
        self
    }
    pub fn timeout(mut self, ms: u64) -> Self {
        self.timeout_ms = Some(ms);
        self
    }
}

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    pub base_url: String,
    pub access_token: Option<String>,
    pub user_id: String,
    pub device_id: String,
    pub password: String,
    txn: Arc<AtomicU64>,
    /// Whether responses are validated against the spec (on by default).
    pub validate: bool,
}

impl Client {
    pub fn new(base_url: &str) -> Client {
        Client {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(90))
                .build()
                .expect("http client"),
            base_url: base_url.trim_end_matches('/').to_string(),
            access_token: None,
            user_id: String::new(),
            device_id: String::new(),
            password: String::new(),
            txn: Arc::new(AtomicU64::new(0)),
            validate: true,
        }
    }

    /// The server name part of this user's ID.
    pub fn server_name(&self) -> &str {
        self.user_id
            .split_once(':')
            .map(|(_, s)| s)
            .expect("client has a user ID")
    }

    pub fn localpart(&self) -> &str {
        self.user_id.trim_start_matches('@').split(':').next().unwrap()
    }

    /// A client of the same server with `token` (or none) as access token.
    pub fn with_token(&self, token: Option<&str>) -> Client {
        let mut c = self.clone();
        c.access_token = token.map(String::from);
        c
    }

    /// A fresh transaction ID, unique per client (and per process).
    pub fn txn_id(&self) -> String {
        format!(
            "t{}-{}",
            self.txn.fetch_add(1, Ordering::SeqCst),
            crate::unique_suffix()
        )
    }

    // ---- raw requests --------------------------------------------------------------------

    /// Send a request with a raw body. 429 `M_LIMIT_EXCEEDED` answers are retried after
    /// `retry_after_ms`. The response is validated against the spec when it is JSON.
    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        headers: &[(&str, &str)],
    ) -> Response {
        let method_parsed = Method::from_bytes(method.as_bytes()).expect("HTTP method");
        let url = format!("{}{}", self.base_url, path);
        let started = Instant::now();
        loop {
            let mut req = self.http.request(method_parsed.clone(), &url);
            if let Some(token) = &self.access_token {
                req = req.bearer_auth(token);
            }
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            if let Some(body) = &body {
                req = req.body(body.clone());
            }
            let resp = req
                .send()
                .await
                .unwrap_or_else(|e| panic!("{method} {path}: request failed: {e}"));
            let status = resp.status().as_u16();
            let resp_headers = resp.headers().clone();
            let text = resp.text().await.unwrap_or_default();
            let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            if status == 429
                && body.get("errcode").and_then(Value::as_str) == Some("M_LIMIT_EXCEEDED")
                && started.elapsed() < Duration::from_secs(120)
            {
                let wait = body
                    .get("retry_after_ms")
                    .and_then(Value::as_u64)
                    .unwrap_or(1000)
                    .clamp(50, 10_000);
                tokio::time::sleep(Duration::from_millis(wait)).await;
                continue;
            }
            let response = Response {
                method: method.to_string(),
                path: path.to_string(),
                status,
                headers: resp_headers,
                body,
                text,
            };
            if self.validate && !response.body.is_null() {
                validate_response(&response);
            }
            return response;
        }
    }

    pub async fn request(&self, method: &str, path: &str, body: Option<&Value>) -> Response {
        match body {
            Some(b) => {
                self.raw(
                    method,
                    path,
                    Some(serde_json::to_vec(b).unwrap()),
                    &[("content-type", "application/json")],
                )
                .await
            }
            None => self.raw(method, path, None, &[]).await,
        }
    }

    pub async fn get(&self, path: &str) -> Response {
        self.request("GET", path, None).await
    }
    pub async fn post(&self, path: &str, body: &Value) -> Response {
        self.request("POST", path, Some(body)).await
    }
    pub async fn put(&self, path: &str, body: &Value) -> Response {
        self.request("PUT", path, Some(body)).await
    }
    pub async fn delete(&self, path: &str) -> Response {
        self.request("DELETE", path, None).await
    }

    // ---- accounts ------------------------------------------------------------------------

    /// Register `localpart` with the m.login.dummy interactive-auth flow; returns the raw final
    /// response (status 200 on success).
    pub async fn register_raw(&self, localpart: &str, password: &str, extra: Value) -> Response {
        let mut body = json!({ "username": localpart, "password": password });
        if let (Some(obj), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
            obj.extend(extra.clone());
        }
        let first = self.post(&format!("{V3}/register"), &body).await;
        if first.status != 401 {
            return first;
        }
        let session = first
            .body
            .get("session")
            .and_then(Value::as_str)
            .map(String::from);
        body["auth"] = json!({ "type": "m.login.dummy" });
        if let Some(session) = session {
            body["auth"]["session"] = json!(session);
        }
        self.post(&format!("{V3}/register"), &body).await
    }

    /// Register a new user with a unique localpart starting with `prefix`.
    pub async fn register_new(base_url: &str, prefix: &str) -> Client {
        let anon = Client::new(base_url);
        let localpart = format!("{}-{}", prefix.to_lowercase(), crate::unique_suffix());
        let password = format!("pw-{}", crate::unique_suffix());
        let resp = anon.register_raw(&localpart, &password, json!({})).await;
        let body = resp.ok();
        let mut c = anon.clone();
        c.access_token = Some(body["access_token"].as_str().expect("access_token").to_string());
        c.user_id = body["user_id"].as_str().expect("user_id").to_string();
        c.device_id = body["device_id"].as_str().expect("device_id").to_string();
        c.password = password;
        c
    }

    /// Log in as this client's user with its password: a new device and client.
    pub async fn login_again(&self) -> Client {
        let anon = self.with_token(None);
        let resp = anon
            .post(
                &format!("{V3}/login"),
                &json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": self.user_id}, "password": self.password}),
            )
            .await;
        let body = resp.ok();
        let mut c = self.clone();
        c.txn = Arc::new(AtomicU64::new(0));
        c.access_token = Some(body["access_token"].as_str().unwrap().to_string());
        c.device_id = body["device_id"].as_str().unwrap().to_string();
        c
    }

    /// Call an endpoint protected by user-interactive auth, completing it with this user's
    /// password (`m.login.password`): first without `auth` (expects 401 + session), then with it.
    pub async fn with_password_auth(&self, method: &str, path: &str, mut body: Value) -> Response {
        let first = self.request(method, path, Some(&body)).await;
        if first.status != 401 || first.body.get("flows").is_none() {
            return first;
        }
        let mut auth = json!({"type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": self.user_id}, "password": self.password});
        if let Some(session) = first.body.get("session") {
            auth["session"] = session.clone();
        }
        body["auth"] = auth;
        self.request(method, path, Some(&body)).await
    }

    pub async fn whoami(&self) -> Response {
        self.get(&format!("{V3}/account/whoami")).await
    }

    // ---- rooms ---------------------------------------------------------------------------

    pub async fn create_room(&self, body: Value) -> String {
        let resp = self.post(&format!("{V3}/createRoom"), &body).await;
        resp.ok()["room_id"].as_str().expect("room_id").to_string()
    }

    pub async fn invite(&self, room: &str, user: &str) -> Response {
        self.post(
            &format!("{V3}/rooms/{}/invite", enc(room)),
            &json!({"user_id": user}),
        )
        .await
    }
    pub async fn join(&self, room_or_alias: &str) -> Response {
        self.post(&format!("{V3}/join/{}", enc(room_or_alias)), &json!({}))
            .await
    }
    pub async fn join_room_id(&self, room: &str) -> Response {
        self.post(&format!("{V3}/rooms/{}/join", enc(room)), &json!({}))
            .await
    }
    pub async fn leave(&self, room: &str) -> Response {
        self.post(&format!("{V3}/rooms/{}/leave", enc(room)), &json!({}))
            .await
    }
    pub async fn kick(&self, room: &str, user: &str, reason: &str) -> Response {
        self.post(
            &format!("{V3}/rooms/{}/kick", enc(room)),
            &json!({"user_id": user, "reason": reason}),
        )
        .await
    }
    pub async fn ban(&self, room: &str, user: &str, reason: &str) -> Response {
        self.post(
            &format!("{V3}/rooms/{}/ban", enc(room)),
            &json!({"user_id": user, "reason": reason}),
        )
        .await
    }
    pub async fn unban(&self, room: &str, user: &str) -> Response {
        self.post(
            &format!("{V3}/rooms/{}/unban", enc(room)),
            &json!({"user_id": user}),
        )
        .await
    }
    pub async fn forget(&self, room: &str) -> Response {
        self.post(&format!("{V3}/rooms/{}/forget", enc(room)), &json!({}))
            .await
    }

    /// `POST /knock/{roomIdOrAlias}`.
    pub async fn knock(&self, room_or_alias: &str) -> Response {
        self.post(&format!("{V3}/knock/{}", enc(room_or_alias)), &json!({}))
            .await
    }

    /// `GET /rooms/{room}/event/{event}`.
    pub async fn get_event(&self, room: &str, event: &str) -> Response {
        self.get(&format!("{V3}/rooms/{}/event/{}", enc(room), enc(event)))
            .await
    }

    /// `GET /rooms/{room}/context/{event}?limit=`.
    pub async fn context(&self, room: &str, event: &str, limit: u32) -> Response {
        self.get(&format!(
            "{V3}/rooms/{}/context/{}?limit={limit}",
            enc(room),
            enc(event)
        ))
        .await
    }

    /// `GET /rooms/{room}/state` (all current state).
    pub async fn room_state(&self, room: &str) -> Response {
        self.get(&format!("{V3}/rooms/{}/state", enc(room))).await
    }

    /// `GET /rooms/{room}/members`.
    pub async fn members(&self, room: &str) -> Response {
        self.get(&format!("{V3}/rooms/{}/members", enc(room))).await
    }

    /// `GET /rooms/{room}/joined_members`.
    pub async fn joined_members(&self, room: &str) -> Response {
        self.get(&format!("{V3}/rooms/{}/joined_members", enc(room)))
            .await
    }

    /// `PUT /rooms/{room}/redact/{event}/{txn}` with a fresh transaction ID.
    pub async fn redact(&self, room: &str, event: &str, body: &Value) -> Response {
        self.put(
            &format!(
                "{V3}/rooms/{}/redact/{}/{}",
                enc(room),
                enc(event),
                enc(&self.txn_id())
            ),
            body,
        )
        .await
    }

    /// `PUT /directory/list/room/{room}` with `{"visibility": visibility}`.
    pub async fn set_directory_visibility(&self, room: &str, visibility: &str) -> Response {
        self.put(
            &format!("{V3}/directory/list/room/{}", enc(room)),
            &json!({ "visibility": visibility }),
        )
        .await
    }

    /// Invite `other` and have it join.
    pub async fn invite_and_join(&self, room: &str, other: &Client) {
        self.invite(room, &other.user_id).await.ok();
        other.join_room_id(room).await.ok();
    }

    /// PUT /rooms/{room}/send/{type}/{txn}; the raw response.
    pub async fn send_txn(&self, room: &str, ty: &str, txn: &str, content: &Value) -> Response {
        self.put(
            &format!("{V3}/rooms/{}/send/{}/{}", enc(room), enc(ty), enc(txn)),
            content,
        )
        .await
    }

    /// Send an event with a fresh transaction ID; returns its event ID.
    pub async fn send(&self, room: &str, ty: &str, content: Value) -> String {
        let resp = self.send_txn(room, ty, &self.txn_id(), &content).await;
        resp.ok()["event_id"].as_str().expect("event_id").to_string()
    }

    /// Send an `m.text` message; returns its event ID.
    pub async fn send_text(&self, room: &str, body: &str) -> String {
        self.send(room, "m.room.message", json!({"msgtype": "m.text", "body": body}))
            .await
    }

    pub async fn put_state(&self, room: &str, ty: &str, key: &str, content: &Value) -> Response {
        self.put(
            &format!("{V3}/rooms/{}/state/{}/{}", enc(room), enc(ty), enc(key)),
            content,
        )
        .await
    }
    pub async fn get_state(&self, room: &str, ty: &str, key: &str) -> Response {
        self.get(&format!(
            "{V3}/rooms/{}/state/{}/{}",
            enc(room),
            enc(ty),
            enc(key)
        ))
        .await
    }

    pub async fn messages(
        &self,
        room: &str,
        dir: &str,
        from: Option<&str>,
        limit: u32,
        filter: Option<&Value>,
    ) -> Response {
        let mut q = format!("dir={dir}&limit={limit}");
        if let Some(from) = from {
            q.push_str(&format!("&from={}", enc(from)));
        }
        if let Some(f) = filter {
            q.push_str(&format!("&filter={}", enc(&f.to_string())));
        }
        self.get(&format!("{V3}/rooms/{}/messages?{q}", enc(room))).await
    }

    // ---- sync ----------------------------------------------------------------------------

    pub async fn sync_raw(&self, opts: &SyncOpts) -> Response {
        let mut q = Vec::new();
        if let Some(s) = &opts.since {
            q.push(format!("since={}", enc(s)));
        }
        if let Some(t) = opts.timeout_ms {
            q.push(format!("timeout={t}"));
        }
        if let Some(f) = &opts.filter {
            q.push(format!("filter={}", enc(f)));
        }
        if opts.full_state {
            q.push("full_state=true".into());
        }
        let path = if q.is_empty() {
            format!("{V3}/sync")
        } else {
            format!("{V3}/sync?{}", q.join("&"))
        };
        self.get(&path).await
    }

    pub async fn sync(&self, opts: &SyncOpts) -> Value {
        self.sync_raw(opts).await.ok().clone()
    }

    /// Incremental syncs from `since` until `pred(response)` holds (or 20 s pass, which panics).
    /// Returns the matching response.
    pub async fn sync_until(
        &self,
        since: Option<&str>,
        filter: Option<&str>,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut since = since.map(String::from);
        loop {
            let opts = SyncOpts {
                since: since.clone(),
                timeout_ms: Some(if since.is_some() { 2000 } else { 0 }),
                filter: filter.map(String::from),
                full_state: false,
            };
            let resp = self.sync(&opts).await;
            if pred(&resp) {
                return resp;
            }
            assert!(
                Instant::now() < deadline,
                "sync_until: condition not met within 20 s; last response {resp}"
            );
            since = Some(resp["next_batch"].as_str().expect("next_batch").to_string());
        }
    }
}

/// Events of room `room` in `section` (`join`, `leave`) of a sync response: `timeline`.
pub fn timeline<'a>(sync: &'a Value, section: &str, room: &str) -> Vec<&'a Value> {
    sync.pointer(&format!(
        "/rooms/{section}/{}/timeline/events",
        room.replace('~', "~0").replace('/', "~1")
    ))
    .and_then(Value::as_array)
    .map(|a| a.iter().collect())
    .unwrap_or_default()
}

/// The joined room object of `room` in a sync response.
pub fn joined<'a>(sync: &'a Value, room: &str) -> Option<&'a Value> {
    sync.get("rooms")?.get("join")?.get(room)
}

/// Event IDs of a list of events.
pub fn event_ids(events: &[&Value]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| e.get("event_id").and_then(Value::as_str).map(String::from))
        .collect()
}

fn violation_panic(what: &str, resp: &Response, violations: &[crate::spec::Violation]) -> ! {
    let list: Vec<String> = violations.iter().take(8).map(|v| format!("  - {v}")).collect();
    panic!(
        "spec violation in {what} of {} {} (HTTP {}):\n{}\nbody: {}",
        resp.method,
        resp.path,
        resp.status,
        list.join("\n"),
        truncate(&resp.text, 2000)
    );
}

fn truncate(s: &str, n: usize) -> &str {
    if s.len() <= n {
        return s;
    }
    let mut end = n;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

static LENIENT_NULLS: AtomicBool = AtomicBool::new(false);

/// Tolerate `"field": null` for absent optional fields (set for servers other than Hearth:
/// Synapse knowingly emits nulls, e.g. `display_name: null` in `GET /devices`). Hearth is held
/// to the schema exactly.
pub fn set_lenient_nulls(on: bool) {
    LENIENT_NULLS.store(on, Ordering::SeqCst);
}

fn strip_nulls(v: &mut Value) {
    match v {
        Value::Object(map) => {
            map.retain(|_, x| !x.is_null());
            map.values_mut().for_each(strip_nulls);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

/// Known deviations of other servers from a response schema, made good before validation (for
/// servers other than Hearth, like `null`s).
fn tolerate_known_deviations(method: &str, path: &str, body: &mut Value) {
    // Synapse (1.163) builds `make_join`/`make_knock`/`make_leave` templates without `origin`,
    // which the spec's template schema lists as required (Synapse no longer puts `origin` in the
    // events it creates). The field means nothing to the joining server.
    if method == "GET"
        && ["/make_join/", "/make_knock/", "/make_leave/"]
            .iter()
            .any(|p| path.starts_with("/_matrix/federation/v1") && path.contains(p))
        && let Some(event) = body.get_mut("event").and_then(Value::as_object_mut)
    {
        event
            .entry("origin")
            .or_insert_with(|| json!("(absent: known deviation)"));
    }
}

/// Validate a response (and the events it carries) against the spec; panic on violation.
pub fn validate_response(resp: &Response) {
    let spec = Spec::get();
    let path = resp.path.split('?').next().unwrap_or(&resp.path);
    let mut stripped;
    let mut body = &resp.body;
    if LENIENT_NULLS.load(Ordering::SeqCst) {
        stripped = resp.body.clone();
        strip_nulls(&mut stripped);
        tolerate_known_deviations(&resp.method, path, &mut stripped);
        body = &stripped;
    }
    if let Err(v) = spec.validate_response(&resp.method, path, resp.status, body) {
        violation_panic("the response body", resp, &v);
    }
    if resp.status != 200 {
        return;
    }
    for (pointer, event) in events_in(&resp.method, path, body) {
        if let Err(v) = spec.validate_event(&event) {
            let v: Vec<_> = v
                .into_iter()
                .map(|mut x| {
                    x.instance_path = format!("{pointer}{}", x.instance_path);
                    x
                })
                .collect();
            violation_panic("an event", resp, &v);
        }
    }
}

/// The room events a response carries, with their JSON pointer. Sync events get a placeholder
/// `room_id` (the spec omits it there) so that the event schemas apply.
fn events_in(method: &str, path: &str, body: &Value) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    if method != "GET" {
        return out;
    }
    let push_list = |pointer: String, room_id: Option<&str>, out: &mut Vec<(String, Value)>| {
        if let Some(list) = body.pointer(&pointer).and_then(Value::as_array) {
            for (i, ev) in list.iter().enumerate() {
                let mut ev = ev.clone();
                if let (Some(room), Some(obj)) = (room_id, ev.as_object_mut()) {
                    obj.entry("room_id").or_insert_with(|| json!(room));
                }
                out.push((format!("{pointer}/{i}"), ev));
            }
        }
    };
    let esc = |s: &str| s.replace('~', "~0").replace('/', "~1");
    if path.ends_with("/sync") {
        for section in ["join", "leave"] {
            if let Some(rooms) = body
                .pointer(&format!("/rooms/{section}"))
                .and_then(Value::as_object)
            {
                for room in rooms.keys() {
                    for list in ["timeline/events", "state/events", "state_after/events"] {
                        push_list(
                            format!("/rooms/{section}/{}/{list}", esc(room)),
                            Some(room),
                            &mut out,
                        );
                    }
                }
            }
        }
    } else if path.ends_with("/messages") {
        push_list("/chunk".into(), None, &mut out);
        push_list("/state".into(), None, &mut out);
    } else if path.contains("/context/") {
        push_list("/events_before".into(), None, &mut out);
        push_list("/events_after".into(), None, &mut out);
        push_list("/state".into(), None, &mut out);
        if let Some(ev) = body.get("event") {
            out.push(("/event".into(), ev.clone()));
        }
    } else if path.contains("/event/") && path.contains("/rooms/") {
        out.push((String::new(), body.clone()));
    } else if path.ends_with("/state") || path.ends_with("/members") {
        if let Some(list) = body.as_array() {
            for (i, ev) in list.iter().enumerate() {
                out.push((format!("/{i}"), ev.clone()));
            }
        }
        push_list("/chunk".into(), None, &mut out);
    }
    out
}
