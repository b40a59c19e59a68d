//! The WebSocket stream (`org.hearth.ws`, spec/websocket.md): `/sync` steps as frames, sends
//! with retries, reconnecting with `since`, slow readers, and the errors for bad tokens and
//! filters.

mod common;

use std::{collections::HashSet, time::Duration};

use common::{Backend, Client, Server, encode, txn_id};
use futures_util::{SinkExt, StreamExt};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream, client_async,
    tungstenite::{Message, client::IntoClientRequest},
};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const PATH: &str = "/_matrix/client/unstable/org.hearth.ws/v1/stream";

/// A filter that lets `limit` timeline events through per room (so that a test's messages come
/// without gaps).
fn filter(limit: u32) -> String {
    json!({ "room": { "timeline": { "limit": limit } } }).to_string()
}

fn url(server: &Server, query: &str) -> String {
    format!("ws://127.0.0.1:{}{PATH}?{query}", server.port)
}

/// Connects with `token` (if any) in the `Authorization` header; a refusal before the upgrade
/// is its status and JSON body.
async fn try_connect(server: &Server, token: Option<&str>, query: &str) -> Result<Ws, (u16, Value)> {
    let mut request = url(server, query).into_client_request().unwrap();
    if let Some(token) = token {
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            let body =
                serde_json::from_slice(response.body().as_deref().unwrap_or(b"null")).unwrap_or(Value::Null);
            Err((response.status().as_u16(), body))
        }
        Err(e) => panic!("connect: {e}"),
    }
}

/// Connects with the client's token in the `Authorization` header.
async fn connect(server: &Server, client: &Client, query: &str) -> Ws {
    try_connect(server, client.token.as_deref(), query)
        .await
        .unwrap_or_else(|e| panic!("refused: {e:?}"))
}

/// Connects without a token and sends it as the first frame.
async fn connect_first_frame(server: &Server, token: &str, query: &str) -> Ws {
    let mut ws = try_connect(server, None, query).await.unwrap();
    let auth = json!({ "type": "auth", "access_token": token }).to_string();
    ws.send(Message::text(auth)).await.unwrap();
    ws
}

/// The errcode of a close reason.
fn close_errcode(reason: &str) -> Value {
    serde_json::from_str::<Value>(reason).unwrap_or_else(|e| panic!("{reason}: {e}"))["errcode"].clone()
}

/// The next JSON text frame (pings are answered by the library), or the close frame's code and
/// reason.
async fn next(ws: &mut Ws) -> Result<Value, (u16, String)> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let Ok(message) = tokio::time::timeout_at(deadline, ws.next()).await else {
            return Err((0, "no frame within 30 s".into()));
        };
        match message {
            Some(Ok(Message::Text(text))) => {
                return Ok(serde_json::from_str(text.as_str()).expect("JSON frame"));
            }
            Some(Ok(Message::Close(Some(frame)))) => {
                return Err((u16::from(frame.code), frame.reason.to_string()));
            }
            Some(Ok(Message::Close(None))) | None => return Err((0, String::new())),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err((0, e.to_string())),
        }
    }
}

async fn next_ok(ws: &mut Ws) -> Value {
    next(ws).await.unwrap_or_else(|e| panic!("closed: {e:?}"))
}

/// Reads `sync` frames (skipping others) until `on_sync` says the bodies seen so far are
/// enough. Returns the last `next_batch`.
async fn read_syncs(ws: &mut Ws, mut on_sync: impl FnMut(&Value) -> bool) -> String {
    loop {
        let frame = next_ok(ws).await;
        if frame["type"] == "sync" {
            assert!(frame["body"]["next_batch"].is_string(), "{frame}");
            if on_sync(&frame["body"]) {
                return frame["body"]["next_batch"].as_str().unwrap().to_owned();
            }
        }
    }
}

/// Bodies (`content.body`) of the room's timeline in a sync body.
fn bodies(body: &Value, room_id: &str) -> Vec<String> {
    let timeline = &body["rooms"]["join"][room_id]["timeline"];
    assert_ne!(
        timeline["limited"], true,
        "a gap: the test's filter must let every event through"
    );
    timeline["events"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .filter_map(|e| e["content"]["body"].as_str().map(ToOwned::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

async fn two_in_a_room(server: &Server) -> (Client, Client, String) {
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room).await;
    (alice, bob, room)
}

fn send_frame(room: &str, txn: &str, body: &str) -> Message {
    Message::text(
        json!({
            "type": "send", "room_id": room, "event_type": "m.room.message", "txn_id": txn,
            "content": { "msgtype": "m.text", "body": body },
        })
        .to_string(),
    )
}

#[tokio::test]
async fn frames_are_sync_steps_and_sends_are_idempotent() {
    let server = Server::start().await;
    let (alice, bob, room) = two_in_a_room(&server).await;
    let mut ws = connect(&server, &bob, &format!("filter={}", encode(&filter(50)))).await;
    // The first step is an initial sync: the room with its state.
    let first = next_ok(&mut ws).await;
    assert_eq!(first["type"], "sync");
    assert!(first["body"]["rooms"]["join"][&room].is_object(), "{first}");

    // Delivery: alice's message reaches bob as a step whose body is an incremental sync.
    alice.send_text(&room, "hello bob").await;
    read_syncs(&mut ws, |body| {
        bodies(body, &room).contains(&"hello bob".to_owned())
    })
    .await;

    // A send, retried with the same txn_id: one event, the same ID each time.
    let txn = txn_id();
    ws.send(send_frame(&room, &txn, "from bob")).await.unwrap();
    ws.send(send_frame(&room, &txn, "from bob")).await.unwrap();
    let mut ids = Vec::new();
    let mut seen_in_syncs = 0;
    while ids.len() < 2 {
        let frame = next_ok(&mut ws).await;
        match frame["type"].as_str() {
            Some("send_result") => {
                assert_eq!(frame["txn_id"], txn.as_str());
                ids.push(frame["event_id"].as_str().unwrap().to_owned());
            }
            Some("sync") => {
                seen_in_syncs += bodies(&frame["body"], &room)
                    .iter()
                    .filter(|b| *b == "from bob")
                    .count()
            }
            other => panic!("unexpected frame {other:?}: {frame}"),
        }
    }
    assert_eq!(ids[0], ids[1]);
    // The same transaction through `PUT …/send` (same device) is the same event too.
    let (status, put) = bob
        .request(
            Method::PUT,
            &format!("/rooms/{}/send/m.room.message/{txn}", encode(&room)),
            Some(&json!({ "msgtype": "m.text", "body": "from bob" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{put}");
    assert_eq!(put["event_id"], ids[0].as_str());
    // Alice sees one event.
    let messages = alice
        .ok(
            Method::GET,
            &format!("/rooms/{}/messages?dir=b&limit=50", encode(&room)),
            None,
        )
        .await;
    let count = messages["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["content"]["body"] == "from bob")
        .count();
    assert_eq!(count, 1, "{messages}");
    // Bob's own stream carries it once.
    if seen_in_syncs == 0 {
        read_syncs(&mut ws, |body| {
            seen_in_syncs += bodies(body, &room).iter().filter(|b| *b == "from bob").count();
            seen_in_syncs > 0
        })
        .await;
    }
    assert_eq!(seen_in_syncs, 1);

    // Hostile sends: answered with the spec's errors, the stream stays open.
    let bad = [
        (
            json!({ "type": "send", "room_id": "not-a-room", "event_type": "m.room.message", "txn_id": "x1", "content": {} }),
            "M_INVALID_PARAM",
        ),
        (
            json!({ "type": "send", "room_id": room, "event_type": "m.room.message", "txn_id": "x2", "content": "text" }),
            "M_BAD_JSON",
        ),
        (
            json!({ "type": "send", "room_id": "!nowhere:localhost", "event_type": "m.room.message", "txn_id": "x3", "content": {} }),
            "M_FORBIDDEN",
        ),
        (json!({ "type": "send", "room_id": room }), "M_BAD_JSON"),
        (json!({ "type": "dance" }), "M_BAD_JSON"),
    ];
    for (frame, errcode) in bad {
        ws.send(Message::text(frame.to_string())).await.unwrap();
        let answer = loop {
            let f = next_ok(&mut ws).await;
            if f["type"] != "sync" {
                break f;
            }
        };
        assert_eq!(answer["type"], "error", "{frame} → {answer}");
        assert!(
            answer["errcode"] == errcode || (errcode == "M_FORBIDDEN" && answer["errcode"] == "M_NOT_FOUND"),
            "{frame} → {answer}"
        );
        if let Some(txn) = frame.get("txn_id") {
            assert_eq!(&answer["txn_id"], txn);
        }
    }
    ws.send(Message::text("not json")).await.unwrap();
    assert_eq!(next_ok(&mut ws).await["errcode"], "M_NOT_JSON");
    ws.send(Message::text(r#"{"type":"ping","id":7}"#)).await.unwrap();
    let pong = loop {
        let f = next_ok(&mut ws).await;
        if f["type"] != "sync" {
            break f;
        }
    };
    assert_eq!(pong, json!({ "type": "pong", "id": 7 }));
}

#[tokio::test]
async fn first_message_auth_and_bad_tokens_and_filters() {
    let server = Server::start().await;
    let (alice, bob, room) = two_in_a_room(&server).await;

    // A bad token in the header: 401 before any upgrade.
    let (status, body) = try_connect(&server, Some("nope"), "").await.unwrap_err();
    assert_eq!(
        (status, &body["errcode"]),
        (401, &json!("M_UNKNOWN_TOKEN")),
        "{body}"
    );
    // A bad filter or since with a good header: refused before the upgrade exactly as /sync
    // refuses them.
    let token = bob.token.as_deref().unwrap();
    let negative = encode(r#"{"room":{"timeline":{"limit":-1}}}"#);
    let not_json = encode("{oops");
    for query in [
        "filter=nope".to_owned(),
        "filter=424242".to_owned(),
        "since=garbage".to_owned(),
        format!("filter={negative}"),
        format!("filter={not_json}"),
    ] {
        let (sync_status, sync_body) = bob
            .request(Method::GET, &format!("/sync?timeout=0&{query}"), None)
            .await;
        assert!(sync_status.is_client_error(), "/sync?{query}: {sync_body}");
        let (status, body) = try_connect(&server, Some(token), &query).await.unwrap_err();
        assert_eq!(status, sync_status.as_u16(), "{query}: {body}");
        assert_eq!(body["errcode"], sync_body["errcode"], "{query}: {body}");
        // After first-frame authentication the same error closes the socket.
        if query.starts_with("filter=") {
            let mut ws = connect_first_frame(&server, token, &query).await;
            let (code, reason) = next(&mut ws).await.unwrap_err();
            assert_eq!(code, 4400, "{query}: {reason}");
            assert_eq!(close_errcode(&reason), sync_body["errcode"], "{query}");
        }
    }

    // The token as the first message (what a browser does).
    let mut ws = connect_first_frame(&server, token, &format!("filter={}", encode(&filter(20)))).await;
    assert_eq!(next_ok(&mut ws).await["type"], "sync");
    alice.send_text(&room, "after auth").await;
    read_syncs(&mut ws, |body| {
        bodies(body, &room).contains(&"after auth".to_owned())
    })
    .await;
    drop(ws);

    // A bad token as the first message: closed with M_UNKNOWN_TOKEN.
    let mut ws = connect_first_frame(&server, "nope", "").await;
    let (code, reason) = next(&mut ws).await.unwrap_err();
    assert_eq!(
        (code, close_errcode(&reason)),
        (4401, json!("M_UNKNOWN_TOKEN")),
        "{reason}"
    );

    // Anything else first: M_MISSING_TOKEN.
    let mut ws = try_connect(&server, None, "").await.unwrap();
    ws.send(send_frame(&room, "t", "sneaky")).await.unwrap();
    let (code, reason) = next(&mut ws).await.unwrap_err();
    assert_eq!(
        (code, close_errcode(&reason)),
        (4401, json!("M_MISSING_TOKEN")),
        "{reason}"
    );

    // Logging out ends a stream: closed with M_UNKNOWN_TOKEN at its next step.
    let mut ws = connect(&server, &bob, "").await;
    assert_eq!(next_ok(&mut ws).await["type"], "sync");
    bob.ok(Method::POST, "/logout", Some(&json!({}))).await;
    alice.send_text(&room, "wake bob").await;
    let closed = loop {
        match next(&mut ws).await {
            Ok(_) => continue,
            Err(closed) => break closed,
        }
    };
    assert_eq!(
        (closed.0, close_errcode(&closed.1)),
        (4401, json!("M_UNKNOWN_TOKEN"))
    );
}

#[tokio::test]
async fn streams_per_user_are_bounded_and_frames_too() {
    let server = Server::start_with_config(Backend::from_env(), "[limits]\nmax_streams_per_user = 1\n").await;
    let bob = server.register("bob").await;
    let token = bob.token.as_deref().unwrap();
    let mut first = connect(&server, &bob, "").await;
    assert_eq!(next_ok(&mut first).await["type"], "sync");

    // A second stream: 429 before the upgrade, or 4429 after first-frame authentication.
    let (status, body) = try_connect(&server, Some(token), "").await.unwrap_err();
    assert_eq!(
        (status, &body["errcode"]),
        (429, &json!("M_LIMIT_EXCEEDED")),
        "{body}"
    );
    let mut ws = connect_first_frame(&server, token, "").await;
    let (code, reason) = next(&mut ws).await.unwrap_err();
    assert_eq!(
        (code, close_errcode(&reason)),
        (4429, json!("M_LIMIT_EXCEEDED")),
        "{reason}"
    );

    // Frames of the wrong kind or size: an error frame, or the socket closed; never a crash.
    first.send(Message::binary(vec![1, 2, 3])).await.unwrap();
    assert_eq!(next_ok(&mut first).await["errcode"], "M_NOT_JSON");
    let huge = json!({ "type": "ping", "id": "x".repeat(2 * 1024 * 1024) }).to_string();
    let _ = first.send(Message::text(huge)).await;
    let closed = loop {
        match next(&mut first).await {
            Ok(_) => continue,
            Err(closed) => break closed,
        }
    };
    assert_ne!(
        closed.1, "no frame within 30 s",
        "an oversized frame closes the stream"
    );
    drop(first);

    // A closed stream gives its slot back (once the server has noticed).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut again = loop {
        match try_connect(&server, Some(token), "").await {
            Ok(ws) => break ws,
            Err((429, _)) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(refused) => panic!("{refused:?}"),
        }
    };
    assert_eq!(next_ok(&mut again).await["type"], "sync");
}

/// The server reads a socket a couple of kilobytes at a time (memory per idle stream); a frame
/// many times that size still arrives whole, and is sent as one event.
#[tokio::test]
async fn a_frame_larger_than_the_read_buffer_arrives_whole() {
    let server = Server::start().await;
    let (alice, bob, room) = two_in_a_room(&server).await;
    let mut ws = connect(&server, &bob, &format!("filter={}", encode(&filter(50)))).await;
    assert_eq!(next_ok(&mut ws).await["type"], "sync");
    // 40,000 characters, not one repeated: a frame cut or spliced wrongly would not match.
    let body: String = (0..40_000).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
    let txn = txn_id();
    ws.send(send_frame(&room, &txn, &body)).await.unwrap();
    let event_id = loop {
        let frame = next_ok(&mut ws).await;
        if frame["type"] == "send_result" {
            assert_eq!(frame["txn_id"], txn.as_str(), "{frame}");
            break frame["event_id"].as_str().unwrap().to_owned();
        }
        assert_eq!(frame["type"], "sync", "{frame}");
    };
    let event = alice
        .ok(
            Method::GET,
            &format!("/rooms/{}/event/{}", encode(&room), encode(&event_id)),
            None,
        )
        .await;
    assert_eq!(event["content"]["body"].as_str(), Some(body.as_str()));
}

/// Counts each body once; panics on a repeat.
fn collect(seen: &mut HashSet<String>, body: &Value, room: &str) {
    for b in bodies(body, room) {
        assert!(seen.insert(b.clone()), "{b} delivered twice");
    }
}

#[tokio::test]
async fn reconnecting_with_since_loses_and_repeats_nothing() {
    const MESSAGES: usize = 60;
    let server = Server::start().await;
    let (alice, bob, room) = two_in_a_room(&server).await;
    let query = format!("filter={}", encode(&filter(100)));
    let mut ws = connect(&server, &bob, &query).await;
    let mut since = read_syncs(&mut ws, |_| true).await;

    let sender = {
        let (alice, room) = (alice.clone(), room.clone());
        tokio::spawn(async move {
            for i in 0..MESSAGES {
                alice.send_text(&room, &format!("m{i}")).await;
            }
        })
    };
    let mut seen = HashSet::new();
    // Forced disconnects while messages flow: drop the socket after every few frames and
    // resume from the last token received.
    while seen.len() < MESSAGES {
        for _ in 0..3 {
            if seen.len() == MESSAGES {
                break;
            }
            since = read_syncs(&mut ws, |body| {
                collect(&mut seen, body, &room);
                true
            })
            .await;
        }
        drop(ws);
        ws = connect(&server, &bob, &format!("{query}&since={}", encode(&since))).await;
    }
    sender.await.unwrap();
    let expected: HashSet<String> = (0..MESSAGES).map(|i| format!("m{i}")).collect();
    assert_eq!(seen, expected);
    // Nothing more comes for the last token.
    alice.send_text(&room, "last").await;
    read_syncs(&mut ws, |body| {
        collect(&mut seen, body, &room);
        seen.contains("last")
    })
    .await;
    assert_eq!(seen.len(), MESSAGES + 1);
}

/// Connects with a tiny receive buffer, so that a client that stops reading backs the server
/// up quickly.
async fn connect_slow(server: &Server, client: &Client, query: &str) -> Ws {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket
        .connect(format!("127.0.0.1:{}", server.port).parse().unwrap())
        .await
        .unwrap();
    let mut request = url(server, query).into_client_request().unwrap();
    let token = client.token.as_deref().unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (ws, _) = client_async(request, MaybeTlsStream::Plain(stream))
        .await
        .unwrap();
    ws
}

#[tokio::test]
async fn a_slow_reader_is_closed_with_its_token_and_resumes() {
    // Enough bytes to fill the server's socket buffers (up to 4 MiB on Linux loopback) and
    // then the stream's queue of frames.
    const MESSAGES: usize = 200;
    let server = Server::start().await;
    let (alice, bob, room) = two_in_a_room(&server).await;
    let query = format!("filter={}", encode(&filter(MESSAGES as u32 + 10)));
    let mut ws = tokio::time::timeout(Duration::from_secs(30), connect_slow(&server, &bob, &query))
        .await
        .expect("connected");
    let _initial = read_syncs(&mut ws, |_| true).await;

    // Bob stops reading while alice sends.
    let padding = "x".repeat(40_000);
    let started = std::time::Instant::now();
    for i in 0..MESSAGES {
        alice.send_text(&room, &format!("m{i} {padding}")).await;
    }
    eprintln!("sent {MESSAGES} in {:?}", started.elapsed());
    // Bob reads again: every frame the server wrote, then the close with the last one's token.
    let mut seen = HashSet::new();
    let mut last = None;
    let (code, reason) = loop {
        match next(&mut ws).await {
            Ok(frame) => {
                if frame["type"] == "sync" {
                    for b in bodies(&frame["body"], &room) {
                        let name = b.split(' ').next().unwrap().to_owned();
                        assert!(seen.insert(name), "{b} delivered twice");
                    }
                    last = Some(frame["body"]["next_batch"].as_str().unwrap().to_owned());
                }
            }
            Err(closed) => break closed,
        }
    };
    eprintln!(
        "{} delivered before the close; server log:\n{}",
        seen.len(),
        server.log_tail()
    );
    assert_eq!(code, 4408, "{reason}");
    let reason: Value = serde_json::from_str(&reason).unwrap();
    assert_eq!(reason["errcode"], "ORG.HEARTH.SLOW_READER");
    assert_eq!(
        reason["next_batch"].as_str(),
        last.as_deref(),
        "the token of the last frame written"
    );
    assert!(seen.len() < MESSAGES, "the server gave up before the end");

    // Resuming from that token brings the rest, once each.
    let since = last.unwrap();
    let mut ws = connect(&server, &bob, &format!("{query}&since={}", encode(&since))).await;
    read_syncs(&mut ws, |body| {
        for b in bodies(body, &room) {
            let name = b.split(' ').next().unwrap().to_owned();
            assert!(seen.insert(name), "{b} delivered twice");
        }
        seen.len() == MESSAGES
    })
    .await;
    let expected: HashSet<String> = (0..MESSAGES).map(|i| format!("m{i}")).collect();
    assert_eq!(seen, expected);
}
