//! Client-Server API §"Profiles": `GET/PUT /profile/{userId}/displayname|avatar_url`,
//! `GET /profile/{userId}`, and §"Events on Change of Profile Information".

use conformance_tests::{V3, conformance_test, enc, eventually};
use serde_json::json;

conformance_test! {
    /// §Profiles: a display name set with PUT is returned by GET `/profile/{userId}/displayname`.
    async fn set_and_get_displayname(hs) {
        let alice = hs.user("prof").await;
        let path = format!("{V3}/profile/{}/displayname", enc(&alice.user_id));
        alice.put(&path, &json!({"displayname": "Alice Conformance"})).await.ok();
        assert_eq!(alice.get(&path).await.ok()["displayname"], json!("Alice Conformance"));
    }
}

conformance_test! {
    /// §Profiles: an avatar URL set with PUT is returned by GET `/profile/{userId}/avatar_url`.
    async fn set_and_get_avatar_url(hs) {
        let alice = hs.user("prof2").await;
        let path = format!("{V3}/profile/{}/avatar_url", enc(&alice.user_id));
        let mxc = format!("mxc://{}/abcdefAvatar", alice.server_name());
        alice.put(&path, &json!({"avatar_url": mxc})).await.ok();
        assert_eq!(alice.get(&path).await.ok()["avatar_url"], json!(mxc));
    }
}

conformance_test! {
    /// §Profiles: `GET /profile/{userId}` returns display name and avatar URL together, and
    /// needs no authentication to read another user's profile.
    async fn full_profile_readable_by_others(hs) {
        let alice = hs.user("prof3").await;
        let bob = hs.user("prof3b").await;
        let mxc = format!("mxc://{}/fullprofile", alice.server_name());
        alice.put(&format!("{V3}/profile/{}/displayname", enc(&alice.user_id)), &json!({"displayname": "Full Alice"})).await.ok();
        alice.put(&format!("{V3}/profile/{}/avatar_url", enc(&alice.user_id)), &json!({"avatar_url": mxc})).await.ok();
        let body = bob.get(&format!("{V3}/profile/{}", enc(&alice.user_id))).await.ok().clone();
        assert_eq!(body["displayname"], json!("Full Alice"));
        assert_eq!(body["avatar_url"], json!(mxc));
    }
}

conformance_test! {
    /// §Profiles: the profile of a user that does not exist answers 404 `M_NOT_FOUND`.
    async fn unknown_user_profile_is_404(hs) {
        let alice = hs.user("prof4").await;
        let ghost = format!("@ghost-{}:{}", conformance_tests::unique_suffix(), alice.server_name());
        // Synapse deviation: it answers 404 `M_UNKNOWN` ("No row found") instead of `M_NOT_FOUND`.
        let errcode = hs.spec_or_synapse("M_NOT_FOUND", "M_UNKNOWN");
        alice.get(&format!("{V3}/profile/{}", enc(&ghost))).await.expect_err(404, errcode);
    }
}

conformance_test! {
    /// §Profiles: a user cannot set another user's display name (403 `M_FORBIDDEN`).
    async fn cannot_set_other_users_displayname(hs) {
        let alice = hs.user("prof5").await;
        let bob = hs.user("prof5b").await;
        bob.put(&format!("{V3}/profile/{}/displayname", enc(&alice.user_id)), &json!({"displayname": "Hijacked"}))
            .await
            // Synapse deviation: it answers 400 (with `M_FORBIDDEN`) where the spec says 403.
            .expect_err(hs.spec_or_synapse(403, 400), "M_FORBIDDEN");
    }
}

conformance_test! {
    /// §Events on Change of Profile Information: a new display name is propagated as an updated
    /// `m.room.member` event in the rooms the user has joined.
    async fn displayname_change_updates_member_events(hs) {
        let alice = hs.user("prof6").await;
        let room = alice.create_room(json!({})).await;
        alice.put(&format!("{V3}/profile/{}/displayname", enc(&alice.user_id)), &json!({"displayname": "Propagated"})).await.ok();
        // Servers may propagate asynchronously (Synapse does): poll for up to 10 s.
        eventually("member event carries the new display name", || async {
            let member = alice.get_state(&room, "m.room.member", &alice.user_id).await;
            (member.ok()["displayname"] == json!("Propagated")).then_some(())
        })
        .await;
    }
}

conformance_test! {
    /// §Profiles: setting a display name requires authentication (401 `M_MISSING_TOKEN`).
    async fn set_displayname_requires_token(hs) {
        let alice = hs.user("prof7").await;
        hs.anonymous().put(&format!("{V3}/profile/{}/displayname", enc(&alice.user_id)), &json!({"displayname": "x"}))
            .await
            .expect_err(401, "M_MISSING_TOKEN");
    }
}
