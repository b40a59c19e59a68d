//! User-interactive authentication (client-server API §User-interactive authentication API).

use serde_json::{Value, json};

use crate::{
    error::{ApiError, ApiResult},
    services::{Services, now_ms},
    users::{random_string, verify_password},
};

/// One acceptable sequence of stages.
pub type Flow = Vec<&'static str>;

/// Runs one UIA step. `Ok(())` when a flow is complete; otherwise the 401 response the client
/// continues from. `user_id` is the authenticated user for operations on an existing account.
pub async fn authenticate(
    svc: &Services,
    body: &Value,
    flows: &[Flow],
    user_id: Option<&str>,
    registration_token: Option<&str>,
) -> ApiResult<()> {
    let Some(auth) = body.get("auth").filter(|a| a.is_object()) else {
        return Err(challenge(svc, flows, None, user_id, &[], None).await?);
    };
    let session = auth.get("session").and_then(Value::as_str);
    let mut completed: Vec<String> = Vec::new();
    if let Some(session) = session {
        match svc.store.uia_session(session).await? {
            Some((owner, done)) => {
                if owner.as_deref() != user_id {
                    return Err(ApiError::forbidden("Session belongs to another user"));
                }
                completed = serde_json::from_str(&done).unwrap_or_default();
            }
            None => {
                return Err(ApiError::new(
                    axum::http::StatusCode::BAD_REQUEST,
                    "M_UNKNOWN",
                    "Unknown session",
                ));
            }
        }
    }
    let stage = auth.get("type").and_then(Value::as_str);
    if let Some(stage) = stage {
        if !flows.iter().any(|f| f.contains(&stage)) {
            return Err(ApiError::bad_json(format!("Unsupported auth type {stage}")));
        }
        let result = check_stage(svc, stage, auth, user_id, registration_token).await;
        if let Err(error) = result {
            return Err(challenge(svc, flows, session, user_id, &completed, Some(error)).await?);
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
    Err(challenge(svc, flows, session, user_id, &completed, None).await?)
}

async fn check_stage(
    svc: &Services,
    stage: &str,
    auth: &Value,
    user_id: Option<&str>,
    registration_token: Option<&str>,
) -> Result<(), ApiError> {
    match stage {
        "m.login.dummy" => Ok(()),
        "m.login.registration_token" => {
            let given = auth.get("token").and_then(Value::as_str);
            match (given, registration_token) {
                (Some(given), Some(expected)) if constant_time_eq(given, expected) => Ok(()),
                _ => Err(ApiError::unauthorized("Invalid registration token")),
            }
        }
        "m.login.password" => {
            let user_id = user_id.ok_or_else(|| ApiError::forbidden("No user"))?;
            let claimed = crate::users::login_user_id(auth, svc.server_name())
                .map_err(|_| ApiError::forbidden("Invalid username or password"))?;
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
                Err(ApiError::forbidden("Invalid username or password"))
            }
        }
        _ => Err(ApiError::bad_json("Unsupported auth type")),
    }
}

/// The 401 that tells the client which stages remain.
async fn challenge(
    svc: &Services,
    flows: &[Flow],
    session: Option<&str>,
    user_id: Option<&str>,
    completed: &[String],
    error: Option<ApiError>,
) -> ApiResult<ApiError> {
    let session = match session {
        Some(s) => {
            svc.store
                .set_uia_completed(s, &serde_json::to_string(completed).map_err(ApiError::internal)?)
                .await?;
            s.to_owned()
        }
        None => {
            let s = random_string(24);
            svc.store.create_uia_session(&s, user_id, now_ms()).await?;
            s
        }
    };
    let mut out = ApiError::new(
        axum::http::StatusCode::UNAUTHORIZED,
        "M_FORBIDDEN",
        "Authentication required",
    );
    if let Some(error) = error {
        out.errcode = error.errcode;
        out.message = error.message;
    } else if completed.is_empty() {
        // The first challenge carries no errcode/error per the spec's examples; keep fields
        // that clients read and leave errcode for failed stages only.
        out.errcode = "";
    }
    let flows: Vec<Value> = flows.iter().map(|f| json!({ "stages": f })).collect();
    Ok(out
        .with("flows", json!(flows))
        .with("params", json!({}))
        .with("session", json!(session))
        .with("completed", json!(completed)))
}

fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
