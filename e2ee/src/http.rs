//! A [`Transport`] over reqwest (feature `http`, native targets only).

use serde_json::Value;

use crate::client::{ClientError, Transport};

/// Authenticated JSON requests to one homeserver.
#[derive(Clone, Debug)]
pub struct ReqwestTransport {
    pub http: reqwest::Client,
    pub base_url: String,
    pub access_token: String,
}

impl ReqwestTransport {
    pub fn new(http: reqwest::Client, base_url: &str, access_token: &str) -> Self {
        ReqwestTransport {
            http,
            base_url: base_url.trim_end_matches('/').to_owned(),
            access_token: access_token.to_owned(),
        }
    }
}

impl Transport for ReqwestTransport {
    async fn request(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, ClientError> {
        let m = reqwest::Method::from_bytes(method.as_bytes())
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        let mut req = self
            .http
            .request(m, format!("{}{path}", self.base_url))
            .bearer_auth(&self.access_token);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        let status = resp.status().as_u16();
        let text = resp
            .text()
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        if !(200..300).contains(&status) {
            return Err(ClientError::Status {
                method: method.to_owned(),
                path: path.to_owned(),
                status,
                body: text,
            });
        }
        serde_json::from_str(&text).map_err(|e| ClientError::Unexpected(e.to_string()))
    }
}
