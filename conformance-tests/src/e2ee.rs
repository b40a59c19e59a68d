//! The suite's [`Client`] as a transport for `hearth-e2ee`'s [`E2eeClient`]: every response the
//! device consumes is first validated against the spec like any other.

use serde_json::Value;

use hearth_e2ee::{ClientError, E2eeClient, Transport};

use crate::client::Client;

impl Transport for Client {
    async fn request(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, ClientError> {
        let resp = Client::request(self, method, path, body).await;
        if (200..300).contains(&resp.status) {
            Ok(resp.body)
        } else {
            Err(ClientError::Status {
                method: method.to_owned(),
                path: path.to_owned(),
                status: resp.status,
                body: resp.text,
            })
        }
    }
}

/// An end-to-end encryption device on top of a logged-in test client.
pub type E2eeDevice = E2eeClient<Client>;

/// A new device for `client`'s session with `one_time_keys` keys on the server (and a fallback
/// key), after one initial `/sync`.
pub async fn new_device(client: &Client, one_time_keys: usize) -> E2eeDevice {
    let mut d = E2eeClient::new(client.clone(), &client.user_id, &client.device_id);
    d.device.set_one_time_key_target(one_time_keys);
    d.upload_initial_keys().await.expect("keys/upload");
    d.sync_once(0).await.expect("initial sync");
    d
}
