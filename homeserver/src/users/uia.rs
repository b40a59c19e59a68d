//! User-interactive authentication (client-server API §User-interactive authentication API).
//!
//! A session belongs to one API call: the spec has the client resubmit "the same request" with
//! `auth` added, "in the same API call". So a session remembers the method, path and body
//! (without `auth`) it started with, and a request that differs is refused (403) instead of
//! borrowing its completed stages: a password entered to delete device A cannot delete B.
//! Sessions expire after `uia.session_timeout_secs` and are deleted when a new one starts.

use std::sync::OnceLock;

use ruma::UserId;
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::{
    error::{Error, Result},
    ratelimit::Action,
    services::Services,
    users::{
        login::{Identity, user_id_of},
        verify_password,
    },
    util::{now_ms, random_string},
};

/// One acceptable sequence of stages.
pub type Flow = Vec<&'static str>;

/// What a session is bound to: method, path (below the API version) and a keyed hash of the
/// body without `auth`. Keyed with a secret of this process, so the stored value says nothing
/// about a password in the body; sessions do not outlive a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation(String);

impl Operation {
    pub fn new(method: &str, path: &str, body: &Value) -> Self {
        static KEY: OnceLock<String> = OnceLock::new();
        let key = KEY.get_or_init(|| random_string(32));
        let mut body = body.clone();
        if let Some(object) = body.as_object_mut() {
            object.remove("auth");
        }
        let mut canonical = String::new();
        write_canonical(&body, &mut canonical);
        let digest = Sha256::new()
            .chain_update(key.as_bytes())
            .chain_update(canonical.as_bytes())
            .finalize();
        let hex = crate::util::hex(&digest);
        Self(format!("{method} {path} {hex}"))
    }
}

/// JSON with object keys sorted, so that key order does not change the hash.
fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(&map[key], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// Runs one UIA step. `Ok(())` when a flow is complete; otherwise the 401 response the client
/// continues from. `auth` is the request's `auth` dict; `user_id` is the authenticated user for operations on an existing account.
pub async fn authenticate(
    svc: &Services,
    operation: &Operation,
    auth: Option<&Value>,
    flows: &[Flow],
    user_id: Option<&str>,
    registration_token: Option<&str>,
) -> Result<()> {
    let Some(auth) = auth.filter(|a| a.is_object()) else {
        return Err(challenge(svc, operation, flows, None, user_id, &[], None).await?);
    };
    let session = auth.get("session").and_then(Value::as_str);
    let mut completed: Vec<String> = Vec::new();
    if let Some(session) = session {
        match svc.store.uia_session(session, oldest_live(svc)).await? {
            Some((owner, done, bound_to)) => {
                if owner.as_deref() != user_id {
                    return Err(Error::forbidden("Session belongs to another user"));
                }
                if bound_to != operation.0 {
                    return Err(Error::forbidden(
                        "Requested operation has changed during the UI authentication session",
                    ));
                }
                completed = serde_json::from_str(&done).unwrap_or_default();
            }
            None => {
                return Err(Error::unknown("Unknown or expired session"));
            }
        }
    }
    let stage = auth.get("type").and_then(Value::as_str);
    if let Some(stage) = stage {
        if !flows.iter().any(|f| f.contains(&stage)) {
            return Err(Error::bad_json(format!("Unsupported auth type {stage}")));
        }
        // Wrong passwords are limited per user (the account is already authenticated, so
        // only its own token holders can spend this).
        let password_of = user_id.filter(|_| stage == "m.login.password");
        if let Some(user_id) = password_of {
            svc.rate_limiter.check_failures(Action::UiaFailure, user_id)?;
        }
        let result = check_stage(svc, stage, auth, user_id, registration_token).await;
        if let Err(error) = result {
            if let Some(user_id) = password_of {
                svc.rate_limiter.record_failure(Action::UiaFailure, user_id);
            }
            return Err(challenge(svc, operation, flows, session, user_id, &completed, Some(error)).await?);
        }
        if !completed.iter().any(|c| c == stage) {
            completed.push(stage.to_owned());
        }
    }
    if flows
        .iter()
        .any(|f| f.iter().all(|s| completed.iter().any(|c| c == s)))
    {
        if let Some(session) = session {
            svc.store.delete_uia_session(session).await?;
        }
        return Ok(());
    }
    Err(challenge(svc, operation, flows, session, user_id, &completed, None).await?)
}

/// The password stage that guards changes to an existing account (`user_id`'s).
pub async fn confirm_password(
    svc: &Services,
    operation: &Operation,
    auth: Option<&Value>,
    user_id_typed: &UserId,
) -> Result<()> {
    let user_id = user_id_typed.as_str();
    authenticate(
        svc,
        operation,
        auth,
        &[vec!["m.login.password"]],
        Some(user_id),
        None,
    )
    .await
}

/// Sessions created before this are expired.
fn oldest_live(svc: &Services) -> i64 {
    let timeout_ms = svc.config.uia.session_timeout_secs.saturating_mul(1000);
    now_ms().saturating_sub(i64::try_from(timeout_ms).unwrap_or(i64::MAX))
}

async fn check_stage(
    svc: &Services,
    stage: &str,
    auth: &Value,
    user_id: Option<&str>,
    registration_token: Option<&str>,
) -> Result<(), Error> {
    match stage {
        "m.login.dummy" => Ok(()),
        "m.login.registration_token" => {
            let given = auth.get("token").and_then(Value::as_str);
            match (given, registration_token) {
                (Some(given), Some(expected)) if constant_time_eq(given, expected) => Ok(()),
                _ => Err(Error::unauthorized("Invalid registration token")),
            }
        }
        "m.login.password" => {
            let user_id = user_id.ok_or_else(|| Error::forbidden("No user"))?;
            let claimed = serde_json::from_value::<Identity>(auth.clone())
                .map_err(Error::internal)
                .and_then(|identity| user_id_of(&identity, svc.server_name()))
                .map_err(|_| Error::forbidden("Invalid username or password"))?;
            let password = auth.get("password").and_then(Value::as_str).unwrap_or_default();
            let user = svc.store.user(user_id).await?;
            let ok = claimed.as_str() == user_id
                && match user.and_then(|u| u.password_hash) {
                    Some(hash) => verify_password(password, &hash).await,
                    None => false,
                };
            if ok {
                Ok(())
            } else {
                Err(Error::forbidden("Invalid username or password"))
            }
        }
        _ => Err(Error::bad_json("Unsupported auth type")),
    }
}

/// The 401 that tells the client which stages remain.
async fn challenge(
    svc: &Services,
    operation: &Operation,
    flows: &[Flow],
    session: Option<&str>,
    user_id: Option<&str>,
    completed: &[String],
    error: Option<Error>,
) -> Result<Error> {
    let session = match session {
        Some(s) => {
            svc.store
                .set_uia_completed(s, &serde_json::to_string(completed).map_err(Error::internal)?)
                .await?;
            s.to_owned()
        }
        None => {
            let s = random_string(24);
            svc.store
                .create_uia_session(&s, user_id, &operation.0, now_ms(), oldest_live(svc))
                .await?;
            s
        }
    };
    let errcode = match error {
        Some(error) => Some((error.errcode(), error.to_string())),
        // The first challenge carries no errcode/error per the spec's examples; keep fields
        // that clients read and leave errcode for failed stages only.
        None if completed.is_empty() => None,
        None => Some(("M_FORBIDDEN", "Authentication required".to_owned())),
    };
    let info = Challenge {
        flows: flows.iter().map(|stages| FlowInfo { stages }).collect(),
        params: Params {},
        session: &session,
        completed,
    };
    let challenge = match serde_json::to_value(info).map_err(Error::internal)? {
        Value::Object(fields) => fields,
        _ => Default::default(),
    };
    Ok(Error::AuthRequired { errcode, challenge })
}

/// What a 401 tells the client about its UIA session, beside `errcode` and `error`.
#[derive(Serialize)]
struct Challenge<'a> {
    flows: Vec<FlowInfo<'a>>,
    params: Params,
    session: &'a str,
    completed: &'a [String],
}

#[derive(Serialize)]
struct FlowInfo<'a> {
    stages: &'a Flow,
}

/// No stage here needs parameters.
#[derive(Serialize)]
struct Params {}

fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn operations_differ_by_method_path_and_body_but_not_auth_or_key_order() {
        let a = Operation::new(
            "DELETE",
            "/devices/A",
            &json!({"x": 1, "y": [1, {"b": 2, "a": 1}]}),
        );
        let same = Operation::new(
            "DELETE",
            "/devices/A",
            &json!({"y": [1, {"a": 1, "b": 2}], "x": 1, "auth": {"session": "s"}}),
        );
        assert_eq!(a, same);
        assert_ne!(
            a,
            Operation::new(
                "DELETE",
                "/devices/B",
                &json!({"x": 1, "y": [1, {"b": 2, "a": 1}]})
            )
        );
        assert_ne!(
            a,
            Operation::new("POST", "/devices/A", &json!({"x": 1, "y": [1, {"b": 2, "a": 1}]}))
        );
        assert_ne!(
            a,
            Operation::new(
                "DELETE",
                "/devices/A",
                &json!({"x": 2, "y": [1, {"b": 2, "a": 1}]})
            )
        );
        // The stored value does not contain the body.
        let secret = Operation::new("POST", "/account/password", &json!({"new_password": "hunter2"}));
        assert!(!secret.0.contains("hunter2"));
    }
}
