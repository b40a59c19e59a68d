//! The hot path of every message: build the PDU, hash and sign it, check the authorization
//! rules, and append it to the log with its DAG edges — on SQLite in a temporary directory.
//! Run with `cargo bench -p hearth --bench event_append`.

use criterion::{Criterion, criterion_group, criterion_main};
use hearth::{
    config::Config,
    rooms::{EventSpec, create::create_room},
};
use ruma::UserId;
use serde_json::json;

fn event_append(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut config = Config::dev();
    config.data_dir = dir.path().to_owned();
    let svc = runtime.block_on(hearth::build(config)).expect("services");
    let user = UserId::parse("@bench:localhost:8008").expect("user ID");
    let room_id = runtime.block_on(async {
        svc.store
            .create_user(user.as_str(), None, "bench", 0)
            .await
            .expect("user");
        let request =
            serde_json::from_value(json!({ "preset": "private_chat", "name": "bench" })).expect("request");
        create_room(&svc, &user, request).await.expect("room")
    });

    c.bench_function("append m.room.message (build, hash, sign, auth, persist)", |b| {
        b.to_async(&runtime).iter(|| async {
            let spec = EventSpec::message("m.room.message", json!({ "msgtype": "m.text", "body": "hello" }));
            svc.timeline
                .append(&svc, &room_id, &user, spec, None)
                .await
                .expect("append")
        })
    });
}

criterion_group!(benches, event_append);
criterion_main!(benches);
