//! Client-Server API §"Room membership": invite, join, leave, kick, ban, unban, forget,
//! `GET /joined_rooms`, `GET /rooms/{roomId}/members`, `GET /rooms/{roomId}/joined_members`.

use conformance_tests::{V3, conformance_test, enc};
use serde_json::json;

async fn membership_of(c: &conformance_tests::Client, room: &str, user: &str) -> serde_json::Value {
    c.get_state(room, "m.room.member", user).await.ok()["membership"].clone()
}

conformance_test! {
    /// §Inviting: an invited user can join an invite-only room; both then appear in
    /// `joined_members`.
    async fn invite_then_join(hs) {
        let alice = hs.user("mem").await;
        let bob = hs.user("memb").await;
        let room = alice.create_room(json!({"preset": "private_chat"})).await;
        alice.invite(&room, &bob.user_id).await.ok();
        assert_eq!(membership_of(&alice, &room, &bob.user_id).await, json!("invite"));
        let joined = bob.join_room_id(&room).await;
        assert_eq!(joined.ok()["room_id"], json!(room));
        let members = alice.get(&format!("{V3}/rooms/{}/joined_members", enc(&room))).await.ok().clone();
        assert!(members["joined"].get(&alice.user_id).is_some() && members["joined"].get(&bob.user_id).is_some(), "{members}");
    }
}

conformance_test! {
    /// §Joining rooms: anyone can join a public room without an invite (`POST /join/{roomId}`).
    async fn join_public_room_without_invite(hs) {
        let alice = hs.user("mem2").await;
        let bob = hs.user("mem2b").await;
        let room = alice.create_room(json!({"preset": "public_chat"})).await;
        assert_eq!(bob.join(&room).await.ok()["room_id"], json!(room));
        assert_eq!(membership_of(&alice, &room, &bob.user_id).await, json!("join"));
    }
}

conformance_test! {
    /// §Joining rooms: joining an invite-only room without an invite fails with 403 `M_FORBIDDEN`.
    async fn join_private_room_without_invite_is_forbidden(hs) {
        let alice = hs.user("mem3").await;
        let bob = hs.user("mem3b").await;
        let room = alice.create_room(json!({"preset": "private_chat"})).await;
        bob.join_room_id(&room).await.expect_err(403, "M_FORBIDDEN");
    }
}

conformance_test! {
    /// §Joining rooms: `POST /join/{roomIdOrAlias}` accepts a room alias.
    async fn join_by_alias(hs) {
        let alice = hs.user("mem4").await;
        let bob = hs.user("mem4b").await;
        let local = format!("joinme-{}", conformance_tests::unique_suffix());
        let room = alice.create_room(json!({"preset": "public_chat", "room_alias_name": local})).await;
        let alias = format!("#{local}:{}", alice.server_name());
        assert_eq!(bob.join(&alias).await.ok()["room_id"], json!(room));
    }
}

conformance_test! {
    /// §Leaving rooms: after `POST /leave` the membership is `leave` and the room is no longer in
    /// `GET /joined_rooms`.
    async fn leave_room(hs) {
        let alice = hs.user("mem5").await;
        let bob = hs.user("mem5b").await;
        let room = alice.create_room(json!({"preset": "public_chat"})).await;
        bob.join(&room).await.ok();
        bob.leave(&room).await.ok();
        assert_eq!(membership_of(&alice, &room, &bob.user_id).await, json!("leave"));
        let joined = bob.get(&format!("{V3}/joined_rooms")).await;
        assert!(!joined.ok()["joined_rooms"].as_array().unwrap().contains(&json!(room)));
    }
}

conformance_test! {
    /// §Leaving rooms: an invitee rejects an invitation by leaving.
    async fn reject_invite_by_leaving(hs) {
        let alice = hs.user("mem6").await;
        let bob = hs.user("mem6b").await;
        let room = alice.create_room(json!({"preset": "private_chat"})).await;
        alice.invite(&room, &bob.user_id).await.ok();
        bob.leave(&room).await.ok();
        assert_eq!(membership_of(&alice, &room, &bob.user_id).await, json!("leave"));
    }
}

conformance_test! {
    /// §Kicking: a kick sets the target's membership to `leave`, sent by the kicker with the reason.
    async fn kick_member(hs) {
        let alice = hs.user("mem7").await;
        let bob = hs.user("mem7b").await;
        let room = alice.create_room(json!({"preset": "public_chat"})).await;
        bob.join(&room).await.ok();
        alice.kick(&room, &bob.user_id, "conformance kick").await.ok();
        let state = alice.get(&format!("{V3}/rooms/{}/state", enc(&room))).await.ok().clone();
        let ev = state.as_array().unwrap().iter()
            .find(|e| e["type"] == "m.room.member" && e["state_key"] == json!(bob.user_id)).unwrap().clone();
        assert_eq!(ev["content"]["membership"], json!("leave"));
        assert_eq!(ev["content"]["reason"], json!("conformance kick"));
        assert_eq!(ev["sender"], json!(alice.user_id));
    }
}

conformance_test! {
    /// §Kicking: a member without sufficient power level cannot kick (403 `M_FORBIDDEN`).
    async fn kick_without_power_is_forbidden(hs) {
        let alice = hs.user("mem8").await;
        let bob = hs.user("mem8b").await;
        let carol = hs.user("mem8c").await;
        let room = alice.create_room(json!({"preset": "public_chat"})).await;
        bob.join(&room).await.ok();
        carol.join(&room).await.ok();
        bob.kick(&room, &carol.user_id, "no power").await.expect_err(403, "M_FORBIDDEN");
    }
}

conformance_test! {
    /// §Banning: a banned user has membership `ban` and cannot rejoin (403 `M_FORBIDDEN`).
    async fn ban_prevents_rejoin(hs) {
        let alice = hs.user("mem9").await;
        let bob = hs.user("mem9b").await;
        let room = alice.create_room(json!({"preset": "public_chat"})).await;
        bob.join(&room).await.ok();
        alice.ban(&room, &bob.user_id, "conformance ban").await.ok();
        assert_eq!(membership_of(&alice, &room, &bob.user_id).await, json!("ban"));
        // The spec gives 403; Synapse says `M_BAD_STATE`, others `M_FORBIDDEN`: check status only.
        let resp = bob.join(&room).await;
        assert_eq!(resp.status, 403, "{}", resp.text);
        assert!(resp.errcode().is_some());
    }
}

conformance_test! {
    /// §Banning: a user can be banned before ever joining.
    async fn ban_non_member(hs) {
        let alice = hs.user("mem10").await;
        let bob = hs.user("mem10b").await;
        let room = alice.create_room(json!({"preset": "public_chat"})).await;
        alice.ban(&room, &bob.user_id, "pre-emptive").await.ok();
        assert_eq!(membership_of(&alice, &room, &bob.user_id).await, json!("ban"));
        // The spec gives 403; Synapse says `M_BAD_STATE`, others `M_FORBIDDEN`: check status only.
        let resp = bob.join(&room).await;
        assert_eq!(resp.status, 403, "{}", resp.text);
        assert!(resp.errcode().is_some());
    }
}

conformance_test! {
    /// §Unbanning: unban sets membership to `leave`; the user can join again.
    async fn unban_allows_rejoin(hs) {
        let alice = hs.user("mem11").await;
        let bob = hs.user("mem11b").await;
        let room = alice.create_room(json!({"preset": "public_chat"})).await;
        alice.ban(&room, &bob.user_id, "temporary").await.ok();
        alice.unban(&room, &bob.user_id).await.ok();
        assert_eq!(membership_of(&alice, &room, &bob.user_id).await, json!("leave"));
        bob.join(&room).await.ok();
    }
}

conformance_test! {
    /// §Leaving rooms (forget): a room can be forgotten after leaving it.
    async fn forget_after_leave(hs) {
        let alice = hs.user("mem12").await;
        let bob = hs.user("mem12b").await;
        let room = alice.create_room(json!({"preset": "public_chat"})).await;
        bob.join(&room).await.ok();
        bob.leave(&room).await.ok();
        bob.forget(&room).await.ok();
    }
}

conformance_test! {
    /// §Leaving rooms (forget): forgetting a room one is still joined to fails with 400.
    async fn forget_while_joined_is_400(hs) {
        let alice = hs.user("mem13").await;
        let room = alice.create_room(json!({})).await;
        let resp = alice.forget(&room).await;
        assert_eq!(resp.status, 400, "{}", resp.text);
    }
}

conformance_test! {
    /// §`GET /joined_rooms` lists exactly the rooms the user is joined to.
    async fn joined_rooms_lists_rooms(hs) {
        let alice = hs.user("mem14").await;
        let r1 = alice.create_room(json!({})).await;
        let r2 = alice.create_room(json!({})).await;
        let list = alice.get(&format!("{V3}/joined_rooms")).await.ok()["joined_rooms"].clone();
        let list = list.as_array().unwrap();
        assert_eq!(list.len(), 2, "{list:?}");
        assert!(list.contains(&json!(r1)) && list.contains(&json!(r2)));
    }
}

conformance_test! {
    /// §`GET /rooms/{roomId}/members`: lists member events, filterable by `membership` and
    /// `not_membership`.
    async fn members_with_filters(hs) {
        let alice = hs.user("mem15").await;
        let bob = hs.user("mem15b").await;
        let carol = hs.user("mem15c").await;
        let room = alice.create_room(json!({"preset": "public_chat"})).await;
        bob.join(&room).await.ok();
        alice.invite(&room, &carol.user_id).await.ok();
        let all = alice.get(&format!("{V3}/rooms/{}/members", enc(&room))).await.ok()["chunk"].clone();
        assert_eq!(all.as_array().unwrap().len(), 3, "{all}");
        let joined = alice.get(&format!("{V3}/rooms/{}/members?membership=join", enc(&room))).await.ok()["chunk"].clone();
        let keys: Vec<&str> = joined.as_array().unwrap().iter().filter_map(|e| e["state_key"].as_str()).collect();
        assert_eq!(keys.len(), 2);
        assert!(!keys.contains(&carol.user_id.as_str()));
        let not_joined = alice.get(&format!("{V3}/rooms/{}/members?not_membership=join", enc(&room))).await.ok()["chunk"].clone();
        let keys: Vec<&str> = not_joined.as_array().unwrap().iter().filter_map(|e| e["state_key"].as_str()).collect();
        assert_eq!(keys, vec![carol.user_id.as_str()]);
    }
}

conformance_test! {
    /// §`GET /rooms/{roomId}/joined_members`: maps joined users to their display names.
    async fn joined_members_has_display_names(hs) {
        let alice = hs.user("mem16").await;
        alice.put(&format!("{V3}/profile/{}/displayname", enc(&alice.user_id)), &json!({"displayname": "Alice JM"})).await.ok();
        let room = alice.create_room(json!({})).await;
        let body = alice.get(&format!("{V3}/rooms/{}/joined_members", enc(&room))).await.ok().clone();
        assert_eq!(body["joined"][&alice.user_id]["display_name"], json!("Alice JM"));
    }
}

conformance_test! {
    /// §`GET /rooms/{roomId}/members`: a user who was never in the room gets 403 `M_FORBIDDEN`.
    async fn members_forbidden_for_non_member(hs) {
        let alice = hs.user("mem17").await;
        let bob = hs.user("mem17b").await;
        let room = alice.create_room(json!({"preset": "private_chat"})).await;
        bob.get(&format!("{V3}/rooms/{}/members", enc(&room))).await.expect_err(403, "M_FORBIDDEN");
    }
}

conformance_test! {
    /// §Inviting: a member without invite power cannot invite (403 `M_FORBIDDEN`).
    async fn invite_without_power_is_forbidden(hs) {
        let alice = hs.user("mem18").await;
        let bob = hs.user("mem18b").await;
        let carol = hs.user("mem18c").await;
        let room = alice.create_room(json!({"preset": "public_chat", "power_level_content_override": {"invite": 50}})).await;
        bob.join(&room).await.ok();
        bob.invite(&room, &carol.user_id).await.expect_err(403, "M_FORBIDDEN");
    }
}

conformance_test! {
    /// §Inviting: inviting a user who is already joined fails with 403.
    async fn invite_joined_user_is_forbidden(hs) {
        let alice = hs.user("mem19").await;
        let bob = hs.user("mem19b").await;
        let room = alice.create_room(json!({"preset": "public_chat"})).await;
        bob.join(&room).await.ok();
        let resp = alice.invite(&room, &bob.user_id).await;
        assert_eq!(resp.status, 403, "{}", resp.text);
    }
}

conformance_test! {
    /// §Leaving rooms: leaving a room one is not in is refused (Synapse: 403 `M_FORBIDDEN`;
    /// the spec allows any 4xx here, so only the error shape is checked).
    async fn leave_unknown_room_fails(hs) {
        let alice = hs.user("mem20").await;
        let bob = hs.user("mem20b").await;
        let room = alice.create_room(json!({"preset": "private_chat"})).await;
        let resp = bob.leave(&room).await;
        assert!((400..500).contains(&resp.status), "{} {}", resp.status, resp.text);
        assert!(resp.errcode().is_some());
    }
}

conformance_test! {
    /// §Leaving rooms (forget): a forgotten room no longer appears in `/sync`, even with
    /// `include_leave`.
    async fn forgotten_room_leaves_sync(hs) {
        let alice = hs.user("mem21").await;
        let bob = hs.user("mem21b").await;
        let room = alice.create_room(json!({"preset": "public_chat"})).await;
        bob.join(&room).await.ok();
        bob.leave(&room).await.ok();
        bob.forget(&room).await.ok();
        let filter = json!({"room": {"include_leave": true}}).to_string();
        let s = bob.sync(&conformance_tests::SyncOpts::default().filter(filter)).await;
        assert!(s.pointer(&format!("/rooms/leave/{room}")).is_none(), "{s}");
        assert!(s.pointer(&format!("/rooms/join/{room}")).is_none());
    }
}
