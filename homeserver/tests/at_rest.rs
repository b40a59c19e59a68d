//! Encryption at rest: a search-enabled room's events never reach the database (or its WAL, or
//! a PostgreSQL dump) in plaintext, while clients read them as usual; other rooms are stored
//! as before; rotating the server key keeps everything readable; a wrong key stops start-up.

mod common;

use std::{process::Stdio, time::Duration};

use common::{Backend, Client, Server, encode, hearth_command};
use reqwest::Method;
use serde_json::{Value, json};
use sqlx::Row;

const SEALED_PREFIX: &str = "~hearth-aead1:";

fn search_enabled_room() -> Value {
    json!({
        "name": "quarterly planning",
        "initial_state": [{
            "type": "org.hearth.room.privacy",
            "state_key": "",
            "content": { "mode": "search_enabled" },
        }],
    })
}

async fn bodies(client: &Client, room_id: &str) -> Vec<String> {
    let page = client
        .ok(
            Method::GET,
            &format!("/rooms/{}/messages?dir=b&limit=50", encode(room_id)),
            None,
        )
        .await;
    page["chunk"]
        .as_array()
        .expect("chunk")
        .iter()
        .filter_map(|e| e["content"]["body"].as_str().map(ToOwned::to_owned))
        .collect()
}

/// Every byte the database keeps: the SQLite file, its WAL and shared memory; or a `pg_dump`.
async fn database_bytes(server: &Server) -> Vec<u8> {
    match server.backend {
        Backend::Sqlite => {
            let mut bytes = Vec::new();
            for name in ["hearth.db", "hearth.db-wal", "hearth.db-shm"] {
                bytes.extend(std::fs::read(server.dir().join(name)).unwrap_or_default());
            }
            assert!(!bytes.is_empty(), "no SQLite files found");
            bytes
        }
        Backend::Postgres => {
            let out = std::process::Command::new("pg_dump")
                .arg("--no-owner")
                .arg(&server.db_url)
                .output()
                .expect("run pg_dump");
            assert!(
                out.status.success(),
                "pg_dump: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            out.stdout
        }
    }
}

/// Every byte of the files under `dir`.
fn directory_bytes(dir: &std::path::Path) -> Vec<u8> {
    let mut bytes = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read the directory").flatten() {
        let path = entry.path();
        if path.is_dir() {
            bytes.extend(directory_bytes(&path));
        } else {
            bytes.extend(std::fs::read(&path).unwrap_or_default());
        }
    }
    bytes
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

async fn stored_json(server: &Server, room_id: &str) -> Vec<(String, String)> {
    let db = server.db().await;
    let rows = sqlx::query("SELECT type, json FROM events WHERE room_id = $1 ORDER BY stream_ordering")
        .bind(room_id.to_owned())
        .fetch_all(&db)
        .await
        .expect("events");
    db.close().await;
    rows.into_iter().map(|r| (r.get(0), r.get(1))).collect()
}

#[tokio::test]
async fn search_enabled_rooms_are_encrypted_at_rest_and_read_normally() {
    // Rooms without a mode stay plain here, so a plain room can be compared.
    let mut server =
        Server::start_with_config(Backend::from_env(), "[privacy]\ndefault_mode = \"none\"\n").await;
    let alice = server.register("alice").await;
    let room = alice.create_room(search_enabled_room()).await;
    let plain = alice.create_room(json!({ "name": "plain" })).await;
    let secrets = ["xylophonequartz", "marmaladezeppelin", "obsidianwombat"];
    for word in secrets {
        alice.send_text(&room, &format!("the word is {word}")).await;
    }
    let edited = alice.send_text(&room, "draft with gingerbreadnebula").await;
    alice
        .send(
            &room,
            "m.room.message",
            json!({
                "msgtype": "m.text", "body": "* fixed", "m.new_content": {"msgtype": "m.text", "body": "fixed"},
                "m.relates_to": {"rel_type": "m.replace", "event_id": edited},
            }),
        )
        .await;
    alice.send_text(&plain, "plainly visible lanternfish").await;

    // Clients read everything as usual.
    let read = bodies(&alice, &room).await;
    for word in secrets {
        assert!(
            read.iter().any(|b| b.contains(word)),
            "{word} missing from {read:?}"
        );
    }
    assert!(
        bodies(&alice, &plain)
            .await
            .iter()
            .any(|b| b.contains("lanternfish"))
    );

    // From the mode event on, every stored event of the room is sealed; the plain room's are JSON.
    let stored = stored_json(&server, &room).await;
    let mode_at = stored
        .iter()
        .position(|(t, _)| t == "org.hearth.room.privacy")
        .expect("mode event stored");
    for (event_type, json) in &stored[mode_at..] {
        assert!(
            json.starts_with(SEALED_PREFIX),
            "{event_type} stored in the clear: {json}"
        );
    }
    for (event_type, json) in stored_json(&server, &plain).await {
        assert!(
            json.starts_with('{'),
            "{event_type} of a plain room changed: {json}"
        );
    }

    // Nothing of the room's text is anywhere in the database (or its WAL / the dump).
    let bytes = database_bytes(&server).await;
    for word in secrets.iter().chain(&["gingerbreadnebula", "quarterly planning"]) {
        assert!(!contains(&bytes, word), "{word} found in the database");
    }
    assert!(
        contains(&bytes, "lanternfish"),
        "the plain room is stored as before"
    );

    // Both rooms are searchable, yet no indexed word is in the index's files (every file of the
    // directory is sealed, the plain room's terms included).
    for (word, room_id) in [("xylophonequartz", &room), ("lanternfish", &plain)] {
        let (status, found) = alice
            .request(
                Method::POST,
                "/search",
                Some(&json!({"search_categories": {"room_events": {"search_term": word}}})),
            )
            .await;
        assert_eq!(status, 200, "{found}");
        let results = &found["search_categories"]["room_events"]["results"];
        assert_eq!(results[0]["result"]["room_id"], json!(room_id), "{found}");
    }
    let index_bytes = directory_bytes(&server.dir().join("data").join("search"));
    assert!(!index_bytes.is_empty(), "no index files found");
    for word in secrets
        .iter()
        .chain(&["gingerbreadnebula", "lanternfish", "xylophon"])
    {
        assert!(!contains(&index_bytes, word), "{word} found in the search index");
    }

    // After a restart (keys loaded from the database), still readable; sync too.
    server.restart().await;
    let read = bodies(&alice, &room).await;
    assert!(read.iter().any(|b| b.contains("xylophonequartz")), "{read:?}");
    let sync = alice.ok(Method::GET, "/sync", None).await;
    assert!(
        sync.to_string().contains("obsidianwombat"),
        "sync lost the room's text"
    );
}

#[tokio::test]
async fn redaction_and_state_work_in_sealed_rooms() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let room = alice.create_room(search_enabled_room()).await;
    let target = alice.send_text(&room, "regrettable periwinkle").await;
    alice
        .ok(
            Method::PUT,
            &format!(
                "/rooms/{}/redact/{}/{}",
                encode(&room),
                encode(&target),
                common::txn_id()
            ),
            Some(&json!({ "reason": "oops" })),
        )
        .await;
    let event = alice
        .ok(
            Method::GET,
            &format!("/rooms/{}/event/{}", encode(&room), encode(&target)),
            None,
        )
        .await;
    assert_eq!(event["content"], json!({}), "redacted content: {event}");
    alice
        .set_state(
            &room,
            "m.room.topic",
            "",
            json!({ "topic": "confidential tangerine" }),
        )
        .await;
    let topic = alice
        .ok(Method::GET, &Client::state_path(&room, "m.room.topic", ""), None)
        .await;
    assert_eq!(topic["topic"], "confidential tangerine");
    // Hostile: the room's mode cannot be removed to get plaintext storage back.
    let (status, body) = alice
        .request(
            Method::PUT,
            &Client::state_path(&room, "org.hearth.room.privacy", ""),
            Some(&json!({})),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    assert!(!contains(&database_bytes(&server).await, "tangerine"));
}

#[tokio::test]
async fn rotation_rewraps_room_keys_and_everything_stays_readable() {
    let mut server = Server::start().await;
    let alice = server.register("alice").await;
    let room = alice.create_room(search_enabled_room()).await;
    alice.send_text(&room, "before rotation abracadabra").await;
    let sealed_before = stored_json(&server, &room).await;
    server.stop().await;

    let old_key = std::fs::read_to_string(server.dir().join("data/at_rest.key")).expect("generated key");
    let out = hearth_command()
        .args(["keys", "rotate-at-rest", "--config"])
        .arg(server.config_path())
        .output()
        .expect("run rotate-at-rest");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let new_key = std::fs::read_to_string(server.dir().join("data/at_rest.key")).unwrap();
    assert_ne!(old_key, new_key, "the key file holds the new key");
    assert_eq!(
        std::fs::read_to_string(server.dir().join("data/at_rest.previous")).unwrap(),
        old_key
    );
    // Events were not rewritten.
    assert_eq!(stored_json(&server, &room).await, sealed_before);

    server.restart().await;
    alice.send_text(&room, "after rotation hocuspocus").await;
    let read = bodies(&alice, &room).await;
    assert!(read.iter().any(|b| b.contains("abracadabra")), "{read:?}");
    assert!(read.iter().any(|b| b.contains("hocuspocus")), "{read:?}");
    server.restart().await;
    assert_eq!(bodies(&alice, &room).await.len(), read.len());
}

#[tokio::test]
async fn a_wrong_key_refuses_to_start() {
    let mut server = Server::start().await;
    let alice = server.register("alice").await;
    let room = alice.create_room(search_enabled_room()).await;
    alice.send_text(&room, "guarded").await;
    server.stop().await;

    let key_path = server.dir().join("data/at_rest.key");
    let right = std::fs::read_to_string(&key_path).unwrap();
    std::fs::write(&key_path, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=").unwrap();
    let mut child = hearth_command()
        .args(["serve", "--config"])
        .arg(server.config_path())
        .current_dir(server.dir())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn hearth");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("hearth started with a wrong at-rest key");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let stderr = std::io::read_to_string(child.stderr.take().unwrap()).unwrap();
    assert!(!status.success());
    assert!(
        stderr.contains("not the key this database was encrypted with"),
        "{stderr}"
    );

    // A malformed key is refused too, with a message naming the problem.
    std::fs::write(&key_path, "not base64 at all").unwrap();
    let out = hearth_command()
        .args(["serve", "--config"])
        .arg(server.config_path())
        .current_dir(server.dir())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("at-rest key"));

    std::fs::write(&key_path, right).unwrap();
    server.restart().await;
    assert!(bodies(&alice, &room).await.iter().any(|b| b == "guarded"));
}
