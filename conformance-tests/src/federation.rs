//! The suite playing a remote homeserver against the server under test (Server-Server API).
//!
//! A [`FakeServer`] is an in-process HTTPS listener on 127.0.0.1 (a self-signed certificate from
//! `rcgen`) whose server name is the IP literal `127.0.0.1:PORT`, so the target reaches it with no
//! DNS and no `.well-known`. It serves its own `GET /_matrix/key/v2/server` (an ed25519 key made
//! per fake server) so the target can verify the `X-Matrix` signatures of the requests the fake
//! server makes, accepts the target's `/send` transactions (recorded), and answers everything
//! else with 404 `M_UNRECOGNIZED`. Signing (requests, PDU content hashes, signatures, reference
//! hashes) is ruma's.
//!
//! Requests go to the target's federation base URL ([`Target`]) over HTTPS; the target's
//! certificate is not checked (test servers use self-signed ones). Every JSON response is
//! validated against the Server-Server API's OpenAPI definitions, as the client's are.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::{TokioExecutor, TokioIo};
use ruma::room_version_rules::RoomVersionRules;
use ruma::signatures::{Ed25519KeyPair, hash_and_sign_event, reference_hash, sign_event, sign_json};
use ruma::{CanonicalJsonObject, RoomVersionId};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use serde_json::{Value, json};

use crate::client::{Response, enc, validate_response};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A serde JSON object as ruma's canonical JSON (panics on floats or out-of-range integers).
pub fn canonical(value: &Value) -> CanonicalJsonObject {
    serde_json::from_value(value.clone()).expect("canonical JSON object")
}

fn to_value(object: &CanonicalJsonObject) -> Value {
    serde_json::to_value(object).expect("JSON")
}

/// The federation side of the server under test.
#[derive(Debug, Clone)]
pub struct Target {
    /// Base URL of its federation listener, e.g. `https://127.0.0.1:8448`.
    pub url: String,
    /// Its server name, as its `GET /_matrix/key/v2/server` says.
    pub server_name: String,
}

// ---- HTTPS client ----------------------------------------------------------------------------

/// Accepts any server certificate (test servers present self-signed ones), still checking the
/// handshake signatures.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

type Https = HyperClient<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
>;

/// An HTTPS client. Not shared between tests: its pooled connections live on the runtime that
/// opened them, and each test has its own runtime.
fn https_client() -> Https {
    static CONFIG: OnceLock<rustls::ClientConfig> = OnceLock::new();
    let config = CONFIG.get_or_init(|| {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth()
    });
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config.clone())
        .https_or_http()
        .enable_http1()
        .build();
    HyperClient::builder(TokioExecutor::new()).build(connector)
}

/// Send one request; the response is validated against the spec when it is JSON.
async fn send(
    http: &Https,
    method: &str,
    url: &str,
    path: &str,
    body: Option<&Value>,
    authorization: Option<&str>,
) -> Response {
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(format!("{url}{path}"));
    if let Some(auth) = authorization {
        req = req.header("authorization", auth);
    }
    let bytes = match body {
        Some(b) => {
            req = req.header("content-type", "application/json");
            serde_json::to_vec(b).unwrap()
        }
        None => Vec::new(),
    };
    let req = req.body(Full::new(Bytes::from(bytes))).expect("request");
    let resp = tokio::time::timeout(Duration::from_secs(60), http.request(req))
        .await
        .unwrap_or_else(|_| panic!("{method} {path}: no answer within 60 s"))
        .unwrap_or_else(|e| panic!("{method} {path}: request to {url} failed: {e:?}"));
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&body).into_owned();
    let response = Response {
        method: method.to_string(),
        path: path.to_string(),
        status,
        headers,
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
        text,
    };
    if !response.body.is_null() {
        validate_response(&response);
    }
    response
}

/// An unauthenticated request to the target's federation listener (keys, version).
pub async fn get_unsigned(target_url: &str, path: &str) -> Response {
    send(&https_client(), "GET", target_url, path, None, None).await
}

/// Learn the target's server name from its own key response.
pub async fn target(url: &str) -> Target {
    let url = url.trim_end_matches('/').to_string();
    let resp = get_unsigned(&url, "/_matrix/key/v2/server").await;
    let server_name = resp.ok()["server_name"]
        .as_str()
        .expect("server_name in the key response")
        .to_string();
    Target { url, server_name }
}

// ---- the fake server -------------------------------------------------------------------------

/// A signing key of a fake server: its ID (`ed25519:…`) and key pair.
pub struct SigningKey {
    pub id: String,
    pair: Ed25519KeyPair,
}

impl SigningKey {
    pub fn generate(version: &str) -> SigningKey {
        let der = Ed25519KeyPair::generate();
        SigningKey {
            id: format!("ed25519:{version}"),
            pair: Ed25519KeyPair::from_der(&der, version.to_string()).expect("fresh ed25519 key"),
        }
    }

    /// The public key, unpadded base64.
    pub fn public_base64(&self) -> String {
        STANDARD_NO_PAD.encode(self.pair.public_key())
    }
}

struct Shared {
    name: String,
    key: SigningKey,
    /// The `/send` transactions the target sent here.
    transactions: Mutex<Vec<Received>>,
    key_fetches: AtomicUsize,
}

/// A remote homeserver played by the test process; stops when dropped.
pub struct FakeServer {
    pub name: String,
    http: Https,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn json_response(status: u16, body: &Value) -> hyper::Response<Full<Bytes>> {
    hyper::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(serde_json::to_vec(body).unwrap())))
        .unwrap()
}

impl Shared {
    fn key_response(&self) -> Value {
        let mut doc = canonical(&json!({
            "server_name": self.name,
            "verify_keys": { self.key.id.clone(): { "key": self.key.public_base64() } },
            "old_verify_keys": {},
            "valid_until_ts": now_ms() + 24 * 3600 * 1000,
        }));
        sign_json(&self.name, &self.key.pair, &mut doc).expect("sign key response");
        to_value(&doc)
    }

    async fn handle(self: Arc<Self>, req: hyper::Request<Incoming>) -> hyper::Response<Full<Bytes>> {
        let method = req.method().as_str().to_string();
        let path = req.uri().path().to_string();
        let uri = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| path.clone());
        let authorization = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(String::from);
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        if method == "GET" && path.starts_with("/_matrix/key/v2/server") {
            self.key_fetches.fetch_add(1, Ordering::SeqCst);
            return json_response(200, &self.key_response());
        }
        if method == "PUT" && path.starts_with("/_matrix/federation/v1/send/") {
            let txn = Received {
                method,
                uri,
                authorization,
                body: serde_json::from_slice(&body).unwrap_or(Value::Null),
            };
            self.transactions.lock().unwrap().push(txn);
            return json_response(200, &json!({ "pdus": {} }));
        }
        if method == "GET" && path == "/_matrix/federation/v1/version" {
            return json_response(
                200,
                &json!({ "server": { "name": "conformance-tests", "version": "0" } }),
            );
        }
        json_response(
            404,
            &json!({ "errcode": "M_UNRECOGNIZED", "error": "not served by the fake server" }),
        )
    }
}

impl FakeServer {
    /// Start a fake server on a free port of 127.0.0.1.
    pub async fn start() -> FakeServer {
        let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).expect("certificate");
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()));
        let mut config =
            rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("TLS versions")
                .with_no_client_auth()
                .with_single_cert(vec![cert.cert.der().clone()], key)
                .expect("TLS config");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let name = format!("127.0.0.1:{}", listener.local_addr().unwrap().port());
        let shared = Arc::new(Shared {
            name: name.clone(),
            key: SigningKey::generate(&format!("fake{}", crate::unique_suffix().replace('-', "_"))),
            transactions: Mutex::new(Vec::new()),
            key_fetches: AtomicUsize::new(0),
        });
        let serving = shared.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let shared = serving.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |req| {
                        let shared = shared.clone();
                        async move { Ok::<_, std::convert::Infallible>(shared.handle(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        FakeServer {
            name,
            http: https_client(),
            shared,
            task,
        }
    }

    /// A user ID of this server.
    pub fn user_id(&self, prefix: &str) -> String {
        format!(
            "@{}-{}:{}",
            prefix.to_lowercase(),
            crate::unique_suffix(),
            self.name
        )
    }

    pub fn key(&self) -> &SigningKey {
        &self.shared.key
    }

    /// How many times the target fetched this server's keys.
    pub fn key_fetches(&self) -> usize {
        self.shared.key_fetches.load(Ordering::SeqCst)
    }

    /// The transactions the target sent here so far.
    pub fn transactions(&self) -> Vec<Received> {
        self.shared.transactions.lock().unwrap().clone()
    }

    /// An `X-Matrix` Authorization header for a request, signed with `key` as `origin`.
    pub fn x_matrix_with(
        key: &SigningKey,
        origin: &str,
        destination: &str,
        method: &str,
        uri: &str,
        body: Option<&Value>,
    ) -> String {
        let mut request =
            json!({ "method": method, "uri": uri, "origin": origin, "destination": destination });
        if let Some(body) = body {
            request["content"] = body.clone();
        }
        let mut object = canonical(&request);
        sign_json(origin, &key.pair, &mut object).expect("sign request");
        let signed = to_value(&object);
        let sig = signed["signatures"][origin][&key.id]
            .as_str()
            .expect("signature")
            .to_string();
        format!(
            "X-Matrix origin=\"{origin}\",destination=\"{destination}\",key=\"{}\",sig=\"{sig}\"",
            key.id
        )
    }

    /// This server's `X-Matrix` header for `method uri` to `target`.
    pub fn x_matrix(&self, target: &Target, method: &str, uri: &str, body: Option<&Value>) -> String {
        Self::x_matrix_with(
            &self.shared.key,
            &self.name,
            &target.server_name,
            method,
            uri,
            body,
        )
    }

    /// A request to the target with an explicit Authorization header (or none).
    pub async fn request_with_auth(
        &self,
        target: &Target,
        method: &str,
        path: &str,
        body: Option<&Value>,
        authorization: Option<&str>,
    ) -> Response {
        send(&self.http, method, &target.url, path, body, authorization).await
    }

    /// A request to the target, signed by this server.
    pub async fn request(&self, target: &Target, method: &str, path: &str, body: Option<&Value>) -> Response {
        let auth = self.x_matrix(target, method, path, body);
        send(&self.http, method, &target.url, path, body, Some(&auth)).await
    }

    pub async fn get(&self, target: &Target, path: &str) -> Response {
        self.request(target, "GET", path, None).await
    }

    // ---- rooms -------------------------------------------------------------------------------

    /// Add the content hash and this server's signature to a PDU; returns its event ID (room
    /// versions 3 and later: the reference hash).
    pub fn sign_pdu(&self, rules: &RoomVersionRules, pdu: &mut CanonicalJsonObject) -> String {
        hash_and_sign_event(&self.name, &self.shared.key.pair, pdu, &rules.redaction).expect("sign PDU");
        event_id(rules, pdu)
    }

    /// Replace this server's signature on a PDU by one made with `key` (same key ID: a forged
    /// signature). The content hash and the event ID stay.
    pub fn resign_pdu(&self, key: &SigningKey, rules: &RoomVersionRules, pdu: &mut CanonicalJsonObject) {
        sign_event(&self.name, &key.pair, pdu, &rules.redaction).expect("sign PDU");
    }

    /// `GET /make_join` (`ver` 10, 11, 12) and the template filled in and signed here: (room
    /// version, its rules, event ID, the join PDU). Panics unless `make_join` answers 200.
    pub async fn prepare_join(
        &self,
        target: &Target,
        room_id: &str,
        user_id: &str,
    ) -> (RoomVersionId, RoomVersionRules, String, CanonicalJsonObject) {
        let resp = self
            .get(
                target,
                &format!(
                    "/_matrix/federation/v1/make_join/{}/{}?ver=10&ver=11&ver=12",
                    enc(room_id),
                    enc(user_id)
                ),
            )
            .await;
        let body = resp.ok().clone();
        let version = body["room_version"].as_str().expect("make_join room_version");
        let version = RoomVersionId::try_from(version).expect("room version");
        let rules = version.rules().expect("room version rules");
        let mut join = canonical(&body["event"]);
        join.insert(
            "origin_server_ts".into(),
            ruma::CanonicalJsonValue::Integer(now_ms().try_into().unwrap()),
        );
        join.insert(
            "origin".into(),
            ruma::CanonicalJsonValue::String(self.name.clone()),
        );
        let join_id = self.sign_pdu(&rules, &mut join);
        (version, rules, join_id, join)
    }

    /// `PUT /_matrix/federation/v2/send_join/{roomId}/{eventId}` with `join`; the raw answer.
    pub async fn send_join(&self, target: &Target, room_id: &str, join_id: &str, join: &Value) -> Response {
        self.request(
            target,
            "PUT",
            &format!(
                "/_matrix/federation/v2/send_join/{}/{}",
                enc(room_id),
                enc(join_id)
            ),
            Some(join),
        )
        .await
    }

    /// `GET /make_join` (`ver` 10, 11, 12), sign the template, `PUT /v2/send_join`: `user_id`
    /// (of this server) joins `room_id`. Panics unless both answer 200.
    pub async fn join(&self, target: &Target, room_id: &str, user_id: &str) -> (RemoteRoom, Value) {
        let (version, rules, join_id, join) = self.prepare_join(target, room_id, user_id).await;
        let join = to_value(&join);
        let resp = self.send_join(target, room_id, &join_id, &join).await;
        let answer = resp.ok().clone();
        let mut state = BTreeMap::new();
        for pdu in answer["state"].as_array().expect("send_join state") {
            let key = (
                pdu["type"].as_str().unwrap_or_default().to_string(),
                pdu["state_key"].as_str().unwrap_or_default().to_string(),
            );
            state.insert(key, event_id(&rules, &canonical(pdu)));
        }
        state.insert(("m.room.member".into(), user_id.to_string()), join_id.clone());
        let room = RemoteRoom {
            room_id: room_id.to_string(),
            version,
            rules,
            state,
            prev_events: vec![join_id.clone()],
            depth: join["depth"].as_u64().expect("depth"),
            join_event_id: join_id,
        };
        (room, answer)
    }

    /// A signed PDU of `sender` (of this server, joined) in `room`, following the room's latest
    /// event as this server knows it: (event ID, PDU). The room's position moves to it.
    pub fn build_event(
        &self,
        room: &mut RemoteRoom,
        sender: &str,
        event_type: &str,
        content: Value,
    ) -> (String, CanonicalJsonObject) {
        let mut auth_events = Vec::new();
        if room.rules.event_format.allow_room_create_in_auth_events {
            auth_events.push(room.state_id("m.room.create", "").expect("create event"));
        }
        auth_events.extend(room.state_id("m.room.power_levels", ""));
        auth_events.push(
            room.state_id("m.room.member", sender)
                .expect("the sender's membership"),
        );
        room.depth += 1;
        let mut pdu = canonical(&json!({
            "auth_events": auth_events,
            "content": content,
            "depth": room.depth,
            "origin": self.name,
            "origin_server_ts": now_ms(),
            "prev_events": room.prev_events,
            "room_id": room.room_id,
            "sender": sender,
            "type": event_type,
        }));
        let id = self.sign_pdu(&room.rules, &mut pdu);
        room.prev_events = vec![id.clone()];
        (id, pdu)
    }

    /// `PUT /_matrix/federation/v1/send/{txnId}` with these PDUs (and EDUs).
    pub async fn send_transaction(&self, target: &Target, pdus: Vec<Value>, edus: Vec<Value>) -> Response {
        let body = json!({
            "origin": self.name,
            "origin_server_ts": now_ms(),
            "pdus": pdus,
            "edus": edus,
        });
        let txn = format!("txn-{}", crate::unique_suffix());
        self.request(
            target,
            "PUT",
            &format!("/_matrix/federation/v1/send/{txn}"),
            Some(&body),
        )
        .await
    }
}

/// A request the target made to a fake server.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    /// Path and query, as signed.
    pub uri: String,
    pub authorization: Option<String>,
    pub body: Value,
}

impl Received {
    /// Check the request's `X-Matrix` authorization (§Request Authentication): sent by the server
    /// of `keys` (its `GET /_matrix/key/v2/server` answer) to `destination`, and its signature
    /// over method, URI, origin, destination and body verifies with one of its `verify_keys`.
    pub fn verify_x_matrix(&self, keys: &Value, destination: &str) -> Result<(), String> {
        let header = self.authorization.as_deref().ok_or("no Authorization header")?;
        let params = header
            .strip_prefix("X-Matrix ")
            .ok_or_else(|| format!("not an X-Matrix authorization: {header}"))?;
        let mut fields = BTreeMap::new();
        for part in params.split(',') {
            let (name, value) = part
                .trim()
                .split_once('=')
                .ok_or_else(|| format!("bad parameter {part:?} in {header}"))?;
            let value = value.trim().trim_matches('"').to_string();
            fields.insert(name.trim().to_lowercase(), value);
        }
        let field = |name: &str| {
            fields
                .get(name)
                .cloned()
                .ok_or_else(|| format!("no {name} in {header}"))
        };
        let (origin, key, sig) = (field("origin")?, field("key")?, field("sig")?);
        let server = keys["server_name"].as_str().unwrap_or_default();
        if origin != server {
            return Err(format!("origin {origin} is not the sending server {server}"));
        }
        if field("destination")? != destination {
            return Err(format!("destination is not {destination}: {header}"));
        }
        let public = keys["verify_keys"][&key]["key"]
            .as_str()
            .ok_or_else(|| format!("{key} is not one of {server}'s verify_keys"))?;
        let mut signed = json!({
            "method": self.method, "uri": self.uri, "origin": origin, "destination": destination,
            "signatures": { origin.clone(): { key.clone(): sig } },
        });
        if !self.body.is_null() {
            signed["content"] = self.body.clone();
        }
        let set = BTreeMap::from([(
            key,
            ruma::serde::Base64::parse(public).map_err(|e| format!("bad public key: {e}"))?,
        )]);
        let map = ruma::signatures::PublicKeyMap::from([(origin, set)]);
        ruma::signatures::verify_json(&map, &canonical(&signed)).map_err(|e| e.to_string())
    }
}

/// The event ID of a PDU of a room version with hash-based event IDs (3 and later).
pub fn event_id(rules: &RoomVersionRules, pdu: &CanonicalJsonObject) -> String {
    format!("${}", reference_hash(pdu, rules).expect("reference hash"))
}

/// A room a fake server joined: what it needs to build events.
pub struct RemoteRoom {
    pub room_id: String,
    pub version: RoomVersionId,
    pub rules: RoomVersionRules,
    /// (type, state_key) → event ID, from the `send_join` answer.
    pub state: BTreeMap<(String, String), String>,
    pub prev_events: Vec<String>,
    pub depth: u64,
    pub join_event_id: String,
}

impl RemoteRoom {
    pub fn state_id(&self, event_type: &str, state_key: &str) -> Option<String> {
        self.state
            .get(&(event_type.to_string(), state_key.to_string()))
            .cloned()
    }
}
