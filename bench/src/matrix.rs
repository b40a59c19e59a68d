//! A minimal Client-Server API client: just the endpoints the scenarios need, JSON in and out,
//! with 429 handling (wait `retry_after_ms`, bounded number of retries).

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use reqwest::{Method, StatusCode, Url};
use serde_json::{Value, json};

/// Most 429 answers one request will wait through before giving up.
const MAX_RATE_LIMIT_RETRIES: u32 = 30;
/// Longest single wait after a 429, whatever the server asks for.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(10);

/// Counters shared by every clone of an [`Api`].
#[derive(Default, Debug)]
pub struct Counters {
    pub requests: AtomicU64,
    pub rate_limited: AtomicU64,
}

/// A response after 429 handling: status, parsed JSON body (Null if empty or not JSON) and body
/// size in bytes.
#[derive(Debug)]
pub struct Response {
    pub status: StatusCode,
    pub body: Value,
    pub bytes: usize,
}

impl Response {
    fn ok_or_error(self, what: &str) -> Result<Response> {
        if self.status.is_success() {
            Ok(self)
        } else {
            Err(anyhow!(
                "{what}: HTTP {} {}",
                self.status.as_u16(),
                serde_json::to_string(&self.body).unwrap_or_default()
            ))
        }
    }
}

/// A logged-in (or registered) user.
#[derive(Debug, Clone)]
pub struct User {
    pub user_id: String,
    pub access_token: String,
    pub device_id: String,
}

/// Handle on one homeserver; cheap to clone (shares the HTTP connection pool and counters).
#[derive(Clone)]
pub struct Api {
    base: Url,
    /// Source address of outgoing connections (also the streams').
    local_address: Option<IpAddr>,
    http: reqwest::Client,
    pub counters: Arc<Counters>,
    /// `set_presence` sent with every /sync (None: the server's default, online).
    pub sync_set_presence: Option<String>,
}

impl Api {
    /// `local_address`: bind outgoing connections to this source address (for spreading many
    /// connections over several loopback addresses). `request_timeout` bounds every request.
    pub fn new(base: Url, local_address: Option<IpAddr>, request_timeout: Duration) -> Result<Api> {
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .tcp_nodelay(true)
            .timeout(request_timeout)
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(30));
        if let Some(addr) = local_address {
            builder = builder.local_address(addr);
        }
        Ok(Api {
            base,
            local_address,
            http: builder.build().context("building the HTTP client")?,
            counters: Arc::new(Counters::default()),
            sync_set_presence: None,
        })
    }

    /// Same server and counters, different HTTP client (e.g. another source address).
    pub fn with_local_address(&self, addr: Option<IpAddr>, request_timeout: Duration) -> Result<Api> {
        let mut api = Api::new(self.base.clone(), addr, request_timeout)?;
        api.counters = self.counters.clone();
        api.sync_set_presence = self.sync_set_presence.clone();
        Ok(api)
    }

    /// `{base}/_matrix/client/v3/{segments…}`, each segment percent-encoded.
    pub fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        {
            let mut path = url.path_segments_mut().expect("http URLs have a path");
            path.pop_if_empty().extend(["_matrix", "client", "v3"]);
            path.extend(segments);
        }
        url
    }

    /// Sends one request, waiting through 429s; returns whatever status the server finally gave.
    pub async fn call(
        &self,
        method: Method,
        url: Url,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Result<Response> {
        let (status, bytes) = self.call_bytes(method, url, token, body).await?;
        let parsed = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or(Value::Null)
        };
        Ok(Response {
            status,
            body: parsed,
            bytes: bytes.len(),
        })
    }

    /// `call` without parsing the final answer's body.
    pub async fn call_bytes(
        &self,
        method: Method,
        url: Url,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Result<(StatusCode, bytes::Bytes)> {
        let mut attempt = 0;
        loop {
            let mut req = self.http.request(method.clone(), url.clone());
            if let Some(token) = token {
                req = req.bearer_auth(token);
            }
            if let Some(body) = body {
                req = req.json(body);
            }
            self.counters.requests.fetch_add(1, Ordering::Relaxed);
            let resp = req
                .send()
                .await
                .with_context(|| format!("{method} {}", url.path()))?;
            let status = resp.status();
            let header_wait = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .map(Duration::from_secs);
            let bytes = resp
                .bytes()
                .await
                .with_context(|| format!("reading body of {method} {}", url.path()))?;
            if status == StatusCode::TOO_MANY_REQUESTS && attempt < MAX_RATE_LIMIT_RETRIES {
                attempt += 1;
                self.counters.rate_limited.fetch_add(1, Ordering::Relaxed);
                let wait = serde_json::from_slice::<Value>(&bytes)
                    .ok()
                    .and_then(|parsed| parsed.get("retry_after_ms").and_then(Value::as_u64))
                    .map(Duration::from_millis)
                    .or(header_wait)
                    .unwrap_or(Duration::from_millis(500))
                    .min(MAX_RETRY_WAIT);
                tracing::debug!(?wait, path = url.path(), "rate limited; waiting");
                tokio::time::sleep(wait).await;
                continue;
            }
            return Ok((status, bytes));
        }
    }

    /// GET /_matrix/client/versions (outside v3).
    pub async fn versions(&self) -> Result<Value> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .expect("http URL")
            .pop_if_empty()
            .extend(["_matrix", "client", "versions"]);
        Ok(self
            .call(Method::GET, url, None, None)
            .await?
            .ok_or_error("GET /versions")?
            .body)
    }

    /// Registers `username` through the User-Interactive Authentication flow, completing
    /// `m.login.dummy` (and `m.login.registration_token` when a token is given).
    pub async fn register(
        &self,
        username: &str,
        password: &str,
        registration_token: Option<&str>,
    ) -> Result<User> {
        let url = self.url(&["register"]);
        let mut body = json!({
            "username": username,
            "password": password,
            "initial_device_display_name": "hearth-bench",
        });
        let mut resp = self.call(Method::POST, url.clone(), None, Some(&body)).await?;
        // Each round completes one stage; a flow has only a handful of stages.
        for _ in 0..5 {
            if resp.status.is_success() {
                return user_from_login(&resp.body);
            }
            if resp.status != StatusCode::UNAUTHORIZED {
                return Err(resp.ok_or_error("POST /register").unwrap_err());
            }
            let session = resp
                .body
                .get("session")
                .and_then(Value::as_str)
                .map(str::to_owned);
            let completed: Vec<&str> = resp.body["completed"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let can_do = |stage: &str| {
                stage == "m.login.dummy"
                    || (stage == "m.login.registration_token" && registration_token.is_some())
            };
            let flow = resp.body["flows"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|f| f["stages"].as_array())
                .find(|stages| stages.iter().filter_map(Value::as_str).all(can_do))
                .ok_or_else(|| {
                    anyhow!(
                        "no registration flow the benchmark can complete: {}",
                        resp.body["flows"]
                    )
                })?;
            let next = flow
                .iter()
                .filter_map(Value::as_str)
                .find(|s| !completed.contains(s))
                .ok_or_else(|| anyhow!("registration flow complete but server still says 401"))?;
            let mut auth = json!({ "type": next });
            if let Some(session) = session {
                auth["session"] = json!(session);
            }
            if next == "m.login.registration_token" {
                auth["token"] = json!(registration_token);
            }
            body["auth"] = auth;
            resp = self.call(Method::POST, url.clone(), None, Some(&body)).await?;
        }
        bail!("registration of {username} did not finish within 5 rounds")
    }

    /// Password login, giving a new device (and so a new access token).
    pub async fn login(&self, user_id: &str, password: &str) -> Result<User> {
        let body = json!({
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": user_id},
            "password": password,
            "initial_device_display_name": "hearth-bench",
        });
        let resp = self
            .call(Method::POST, self.url(&["login"]), None, Some(&body))
            .await?
            .ok_or_error("POST /login")?;
        user_from_login(&resp.body)
    }

    /// Creates a public (joinable by anyone on the server), unpublished room; returns its ID.
    pub async fn create_room(&self, token: &str, name: &str) -> Result<String> {
        let body = json!({"preset": "public_chat", "name": name, "visibility": "private"});
        let resp = self
            .call(Method::POST, self.url(&["createRoom"]), Some(token), Some(&body))
            .await?
            .ok_or_error("POST /createRoom")?;
        string_field(&resp.body, "room_id")
    }

    /// Creates a room like [`Api::create_room`] with `m.room.encryption` (Megolm) in its
    /// initial state; returns its ID.
    pub async fn create_encrypted_room(&self, token: &str, name: &str) -> Result<String> {
        let body = json!({"preset": "public_chat", "name": name, "visibility": "private",
            "initial_state": [{"type": "m.room.encryption", "state_key": "",
                "content": {"algorithm": "m.megolm.v1.aes-sha2"}}]});
        let resp = self
            .call(Method::POST, self.url(&["createRoom"]), Some(token), Some(&body))
            .await?
            .ok_or_error("POST /createRoom")?;
        string_field(&resp.body, "room_id")
    }

    /// The HTTP client and base URL, for `hearth-e2ee`'s reqwest transport.
    pub fn e2ee_transport(&self, token: &str) -> hearth_e2ee::http::ReqwestTransport {
        hearth_e2ee::http::ReqwestTransport::new(self.http.clone(), self.base.as_str(), token)
    }

    pub async fn join(&self, token: &str, room_id: &str) -> Result<()> {
        self.call(
            Method::POST,
            self.url(&["join", room_id]),
            Some(token),
            Some(&json!({})),
        )
        .await?
        .ok_or_error("POST /join")?;
        Ok(())
    }

    /// PUT /rooms/{room}/send/m.room.message/{txn}; returns the event ID.
    pub async fn send_message(
        &self,
        token: &str,
        room_id: &str,
        txn_id: &str,
        content: &Value,
    ) -> Result<String> {
        self.send_event(token, room_id, "m.room.message", txn_id, content)
            .await
    }

    /// PUT /rooms/{room}/send/{type}/{txn}; returns the event ID.
    pub async fn send_event(
        &self,
        token: &str,
        room_id: &str,
        event_type: &str,
        txn_id: &str,
        content: &Value,
    ) -> Result<String> {
        let url = self.url(&["rooms", room_id, "send", event_type, txn_id]);
        let resp = self
            .call(Method::PUT, url, Some(token), Some(content))
            .await?
            .ok_or_error("PUT /rooms/{roomId}/send")?;
        string_field(&resp.body, "event_id")
    }

    /// Opens an `org.hearth.ws` stream from `since` (Hearth only).
    pub async fn stream(
        &self,
        token: &str,
        since: Option<&str>,
        filter: Option<&str>,
    ) -> Result<crate::ws::SyncStream> {
        crate::ws::SyncStream::connect(&self.base, token, since, filter, self.local_address).await
    }

    fn sync_url(&self, since: Option<&str>, timeout_ms: u64, filter: Option<&str>) -> Url {
        let mut url = self.url(&["sync"]);
        {
            let mut q = url.query_pairs_mut();
            if let Some(since) = since {
                q.append_pair("since", since);
            }
            q.append_pair("timeout", &timeout_ms.to_string());
            if let Some(filter) = filter {
                q.append_pair("filter", filter);
            }
            if let Some(presence) = &self.sync_set_presence {
                q.append_pair("set_presence", presence);
            }
        }
        url
    }

    /// GET /sync. `filter` is an inline JSON filter (or None for the server default).
    pub async fn sync(
        &self,
        token: &str,
        since: Option<&str>,
        timeout_ms: u64,
        filter: Option<&str>,
    ) -> Result<Response> {
        let url = self.sync_url(since, timeout_ms, filter);
        self.call(Method::GET, url, Some(token), None)
            .await?
            .ok_or_error("GET /sync")
    }

    /// `sync`, read as a `deliver` receiver reads it (`digest`): only this run's stamps.
    pub async fn sync_digest(
        &self,
        token: &str,
        since: &str,
        timeout_ms: u64,
        filter: Option<&str>,
        run_id: &str,
    ) -> Result<crate::digest::SyncDigest> {
        let url = self.sync_url(Some(since), timeout_ms, filter);
        let (status, bytes) = self.call_bytes(Method::GET, url, Some(token), None).await?;
        if !status.is_success() {
            bail!(
                "GET /sync: HTTP {} {}",
                status.as_u16(),
                String::from_utf8_lossy(&bytes)
            );
        }
        crate::digest::sync_body(&bytes, run_id)
    }
}

fn user_from_login(body: &Value) -> Result<User> {
    Ok(User {
        user_id: string_field(body, "user_id")?,
        access_token: string_field(body, "access_token")?,
        device_id: string_field(body, "device_id")?,
    })
}

fn string_field(body: &Value, field: &str) -> Result<String> {
    body.get(field)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("response has no string field {field:?}: {body}"))
}

/// The `next_batch` token of a /sync response.
pub fn next_batch(sync: &Value) -> Result<String> {
    string_field(sync, "next_batch")
}

/// Every timeline event of every joined room in a /sync response, with its room ID.
pub fn timeline_events(sync: &Value) -> impl Iterator<Item = (&str, &Value)> {
    sync["rooms"]["join"]
        .as_object()
        .into_iter()
        .flatten()
        .flat_map(|(room_id, room)| {
            room["timeline"]["events"]
                .as_array()
                .into_iter()
                .flatten()
                .map(move |ev| (room_id.as_str(), ev))
        })
}

/// Microseconds since the Unix epoch (the clock embedded in benchmark messages; sender and
/// receivers run in the same process, so they share it).
pub fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api() -> Api {
        Api::new(
            Url::parse("http://127.0.0.1:9/").unwrap(),
            None,
            Duration::from_secs(1),
        )
        .unwrap()
    }

    #[test]
    fn url_segments_are_encoded() {
        let url = api().url(&["rooms", "!a/b:x", "send", "m.room.message", "t 1"]);
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:9/_matrix/client/v3/rooms/!a%2Fb:x/send/m.room.message/t%201"
        );
    }

    #[test]
    fn timeline_events_walks_joined_rooms() {
        let sync = json!({
            "next_batch": "s1",
            "rooms": {"join": {
                "!r1": {"timeline": {"events": [{"event_id": "$a"}, {"event_id": "$b"}]}},
                "!r2": {"timeline": {"events": [{"event_id": "$c"}]}},
                "!r3": {"state": {"events": []}}
            }}
        });
        let ids: Vec<(&str, &str)> = timeline_events(&sync)
            .map(|(r, e)| (r, e["event_id"].as_str().unwrap()))
            .collect();
        assert_eq!(ids, vec![("!r1", "$a"), ("!r1", "$b"), ("!r2", "$c")]);
        assert_eq!(next_batch(&sync).unwrap(), "s1");
        assert!(next_batch(&json!({})).is_err());
    }
}
