//! The server's ed25519 signing key.

use base64::{Engine, engine::general_purpose::STANDARD_NO_PAD};
use ruma::signatures::{Ed25519KeyPair, KeyPair};

/// An ed25519 key the server signs events and federation requests with.
pub struct SigningKey {
    pair: Ed25519KeyPair,
    pkcs8: Vec<u8>,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("key_id", &self.key_id())
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("invalid signing key: {0}")]
pub struct KeyError(String);

impl SigningKey {
    /// A new random key with the given version (the part after `ed25519:` in the key ID).
    pub fn generate(version: &str) -> Result<Self, KeyError> {
        let pkcs8 = Ed25519KeyPair::generate();
        Self::from_pkcs8(&pkcs8, version)
    }

    /// Loads a key from its PKCS#8 DER document.
    pub fn from_pkcs8(der: &[u8], version: &str) -> Result<Self, KeyError> {
        let pair = Ed25519KeyPair::from_der(der, version.to_owned()).map_err(|e| KeyError(e.to_string()))?;
        Ok(Self {
            pair,
            pkcs8: der.to_vec(),
        })
    }

    /// The PKCS#8 DER document, for persisting the key.
    pub fn pkcs8(&self) -> &[u8] {
        &self.pkcs8
    }

    /// The key ID as it appears in `signatures` and `/_matrix/key/v2/server`: `ed25519:VERSION`.
    pub fn key_id(&self) -> String {
        format!("ed25519:{}", self.pair.version())
    }

    /// The public key, unpadded standard base64 as the spec publishes it.
    pub fn public_key_base64(&self) -> String {
        STANDARD_NO_PAD.encode(self.pair.public_key())
    }

    /// The underlying ruma key pair, for ruma's signing functions.
    pub fn pair(&self) -> &impl KeyPair {
        &self.pair
    }

    /// The ruma key pair itself, for APIs that name its type (X-Matrix request signing).
    pub fn ed25519(&self) -> &Ed25519KeyPair {
        &self.pair
    }

    /// The version part of the key ID (after `ed25519:`).
    pub fn version(&self) -> &str {
        self.pair.version()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_survives_a_round_trip_through_pkcs8() {
        let key = SigningKey::generate("a1").unwrap();
        let again = SigningKey::from_pkcs8(key.pkcs8(), "a1").unwrap();
        assert_eq!(key.public_key_base64(), again.public_key_base64());
        assert_eq!(again.key_id(), "ed25519:a1");
    }

    #[test]
    fn garbage_is_not_a_key() {
        assert!(SigningKey::from_pkcs8(b"not a key", "x").is_err());
    }
}
