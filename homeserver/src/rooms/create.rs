//! `/createRoom`: the events a new room starts with, in the order the spec prescribes.

use hearth_federation::{DEFAULT_ROOM_VERSION, rules_for};
use ruma::{OwnedRoomId, OwnedUserId, RoomAliasId, RoomVersionId, UserId};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::{
    error::{Error, Result},
    rooms::{EventSpec, membership::member_content, timeline::NewRoom},
    services::Services,
};

#[derive(Debug, Deserialize)]
pub struct CreateRoomRequest {
    pub visibility: Option<String>,
    pub room_alias_name: Option<String>,
    pub name: Option<String>,
    pub topic: Option<String>,
    #[serde(default)]
    pub invite: Vec<String>,
    pub room_version: Option<String>,
    pub creation_content: Option<Map<String, Value>>,
    #[serde(default)]
    pub initial_state: Vec<InitialState>,
    pub preset: Option<String>,
    #[serde(default)]
    pub is_direct: bool,
    pub power_level_content_override: Option<Map<String, Value>>,
}

#[derive(Debug, Deserialize)]
pub struct InitialState {
    #[serde(rename = "type")]
    pub event_type: String,
    #[serde(default)]
    pub state_key: String,
    pub content: Map<String, Value>,
}

pub async fn create_room(svc: &Services, creator: &UserId, req: CreateRoomRequest) -> Result<OwnedRoomId> {
    svc.rate_limiter
        .check(crate::ratelimit::Action::RoomCreation, creator.as_str())?;
    let version = match &req.room_version {
        Some(v) => RoomVersionId::try_from(v.as_str())
            .ok()
            .filter(|v| rules_for(v).is_some())
            .ok_or_else(|| Error::unsupported_room_version(format!("Room version {v} is not supported")))?,
        None => DEFAULT_ROOM_VERSION,
    };
    let rules = rules_for(&version).expect("checked above");
    let preset = match req.preset.as_deref() {
        Some(p @ ("private_chat" | "public_chat" | "trusted_private_chat")) => p.to_owned(),
        Some(other) => return Err(Error::bad_json(format!("Unknown preset {other}"))),
        None if req.visibility.as_deref() == Some("public") => "public_chat".into(),
        None => "private_chat".into(),
    };
    let is_public = match req.visibility.as_deref() {
        None | Some("private") => false,
        Some("public") => true,
        Some(_) => return Err(Error::bad_json("visibility must be public or private")),
    };
    let invitees = req
        .invite
        .iter()
        .map(|u| UserId::parse(u.as_str()).map_err(|_| Error::invalid_param(format!("Invalid user ID {u}"))))
        .collect::<Result<Vec<OwnedUserId>>>()?;
    let alias = match &req.room_alias_name {
        Some(name) => {
            let alias = RoomAliasId::parse(format!("#{name}:{}", svc.server_name()))
                .map_err(|_| Error::invalid_param("Invalid room_alias_name"))?;
            if name.contains(':') || svc.store.alias(alias.as_str()).await?.is_some() {
                return Err(Error::room_in_use("Room alias already taken"));
            }
            Some(alias)
        }
        None => None,
    };
    let trusted = preset == "trusted_private_chat";
    let v12 = rules.authorization.explicitly_privilege_room_creators;

    // 1. m.room.create
    let mut create = req.creation_content.clone().unwrap_or_default();
    create.insert("room_version".into(), json!(version.as_str()));
    if !rules.authorization.use_room_create_sender {
        create.insert("creator".into(), json!(creator));
    } else {
        create.remove("creator");
    }
    if v12 && trusted {
        let mut additional: Vec<Value> = create
            .get("additional_creators")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for invitee in &invitees {
            if !additional.contains(&json!(invitee)) {
                additional.push(json!(invitee));
            }
        }
        create.insert("additional_creators".into(), json!(additional));
    }
    let mut events = Vec::new();

    // 2. the creator joins
    events.push(EventSpec::state(
        "m.room.member",
        creator.as_str(),
        member_content(svc, creator, "join").await?,
    ));

    // 3. power levels
    let mut users = Map::new();
    if !v12 {
        users.insert(creator.to_string(), json!(100));
        if trusted {
            for invitee in &invitees {
                users.insert(invitee.to_string(), json!(100));
            }
        }
    }
    let mut power_levels = json!({
        "users": users,
        "users_default": 0,
        "events": {
            "m.room.name": 50,
            "m.room.power_levels": 100,
            "m.room.history_visibility": 100,
            "m.room.canonical_alias": 50,
            "m.room.avatar": 50,
            "m.room.tombstone": if v12 { 150 } else { 100 },
            "m.room.server_acl": 100,
            "m.room.encryption": 100,
        },
        "events_default": 0,
        "state_default": 50,
        "ban": 50,
        "kick": 50,
        "redact": 50,
        "invite": 0,
        "notifications": { "room": 50 },
    });
    if let Some(overrides) = req.power_level_content_override {
        let object = power_levels.as_object_mut().expect("literal object");
        for (key, value) in overrides {
            object.insert(key, value);
        }
    }
    events.push(EventSpec::state("m.room.power_levels", "", power_levels));

    // 4. canonical alias
    if let Some(alias) = &alias {
        events.push(EventSpec::state(
            "m.room.canonical_alias",
            "",
            json!({ "alias": alias }),
        ));
    }

    // 5. preset
    let (join_rule, guest_access) = if preset == "public_chat" {
        ("public", "forbidden")
    } else {
        ("invite", "can_join")
    };
    events.push(EventSpec::state(
        "m.room.join_rules",
        "",
        json!({ "join_rule": join_rule }),
    ));
    events.push(EventSpec::state(
        "m.room.history_visibility",
        "",
        json!({ "history_visibility": "shared" }),
    ));
    events.push(EventSpec::state(
        "m.room.guest_access",
        "",
        json!({ "guest_access": guest_access }),
    ));

    // 6. initial_state
    for state in req.initial_state {
        events.push(EventSpec::state(
            &state.event_type,
            &state.state_key,
            Value::Object(state.content),
        ));
    }

    // Encryption in the initial state may make the room strict (rooms::privacy).
    crate::rooms::privacy::add_mode_to_initial_events(&svc.config.privacy, &mut events);

    // 7. name and topic
    if let Some(name) = req.name {
        events.push(EventSpec::state("m.room.name", "", json!({ "name": name })));
    }
    if let Some(topic) = req.topic {
        let content = json!({
            "topic": topic,
            "m.topic": { "m.text": [{ "body": topic, "mimetype": "text/plain" }] },
        });
        events.push(EventSpec::state("m.room.topic", "", content));
    }

    // 8. invites
    for invitee in &invitees {
        let mut content = member_content(svc, invitee, "invite").await?;
        if req.is_direct {
            content["is_direct"] = json!(true);
        }
        events.push(EventSpec::state("m.room.member", invitee.as_str(), content));
    }

    let alias = alias.as_ref().map(|a| a.as_str());
    let room = NewRoom {
        version: &version,
        creator,
        content: Value::Object(create),
        initial: events,
        alias,
        is_public,
    };
    svc.timeline.create_room(svc, room).await
}
