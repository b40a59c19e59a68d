//! Checks a homeserver makes on what clients upload, without holding any secret.

use ruma::CanonicalJsonObject;
use ruma::serde::Base64;
use ruma::signatures::{
    SigningKeyAlgorithm, to_canonical_json_string_for_signing, verify_canonical_json_bytes,
};

/// Why a signed object or a ciphertext was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("the object is not valid JSON for signing: {0}")]
    Json(String),
    #[error("no signature by {signer} with key {key_id}")]
    MissingSignature { signer: String, key_id: String },
    #[error("malformed key or signature: {0}")]
    Malformed(String),
    #[error("the signature does not verify")]
    BadSignature,
}

/// Checks that `object` carries a valid ed25519 signature by `signer` (a user ID for device and
/// cross-signing keys) under `key_id` (`ed25519:<device or key id>`), made with `public_key`
/// (unpadded base64). `signatures` and `unsigned` are left out of what was signed, as the spec's
/// "Signing JSON" says.
pub fn verify_signed_json(
    object: &serde_json::Value,
    signer: &str,
    key_id: &str,
    public_key: &str,
) -> Result<(), VerifyError> {
    let object: CanonicalJsonObject =
        serde_json::from_value(object.clone()).map_err(|e| VerifyError::Json(e.to_string()))?;
    let signature = object
        .get("signatures")
        .and_then(|s| s.as_object())
        .and_then(|s| s.get(signer))
        .and_then(|s| s.as_object())
        .and_then(|s| s.get(key_id))
        .and_then(|s| s.as_str())
        .ok_or_else(|| VerifyError::MissingSignature {
            signer: signer.to_owned(),
            key_id: key_id.to_owned(),
        })?;
    let (algorithm, _) = key_id
        .split_once(':')
        .ok_or_else(|| VerifyError::Malformed(format!("key id {key_id} has no algorithm")))?;
    if algorithm != "ed25519" {
        return Err(VerifyError::Malformed(format!(
            "unsupported signing algorithm {algorithm}"
        )));
    }
    let key = Base64::<ruma::serde::base64::Standard>::parse(public_key)
        .map_err(|e| VerifyError::Malformed(format!("public key: {e}")))?;
    let sig = Base64::<ruma::serde::base64::Standard>::parse(signature)
        .map_err(|e| VerifyError::Malformed(format!("signature: {e}")))?;
    let canonical =
        to_canonical_json_string_for_signing(&object).map_err(|e| VerifyError::Json(e.to_string()))?;
    verify_canonical_json_bytes(
        &SigningKeyAlgorithm::Ed25519,
        key.as_bytes(),
        sig.as_bytes(),
        canonical.as_bytes(),
    )
    .map_err(|_| VerifyError::BadSignature)
}

/// Checks that `ciphertext` (the `ciphertext` field of an `m.megolm.v1.aes-sha2` event) decodes
/// as a Megolm message: version, message index, AES ciphertext, MAC and ed25519 signature in
/// their places. The server cannot decrypt it; this only tells ciphertext from plaintext.
pub fn check_megolm_ciphertext(ciphertext: &str) -> Result<(), VerifyError> {
    vodozemac::megolm::MegolmMessage::from_base64(ciphertext)
        .map(|_| ())
        .map_err(|e| VerifyError::Malformed(format!("not a Megolm message: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_is_not_megolm() {
        assert!(check_megolm_ciphertext("hello world").is_err());
        assert!(check_megolm_ciphertext("aGVsbG8gd29ybGQ").is_err());
    }

    #[test]
    fn a_signature_made_by_vodozemac_verifies_and_a_tampered_object_does_not() {
        let account = vodozemac::olm::Account::new();
        let mut keys = serde_json::json!({
            "user_id": "@a:hs", "device_id": "D",
            "algorithms": ["m.olm.v1.curve25519-aes-sha2"],
            "keys": {"ed25519:D": account.ed25519_key().to_base64()}
        });
        let obj: CanonicalJsonObject = serde_json::from_value(keys.clone()).unwrap();
        let canonical = to_canonical_json_string_for_signing(&obj).unwrap();
        let sig = account.sign(canonical.as_bytes()).to_base64();
        keys["signatures"] = serde_json::json!({"@a:hs": {"ed25519:D": sig}});
        let pk = account.ed25519_key().to_base64();
        assert_eq!(verify_signed_json(&keys, "@a:hs", "ed25519:D", &pk), Ok(()));
        keys["device_id"] = "E".into();
        assert_eq!(
            verify_signed_json(&keys, "@a:hs", "ed25519:D", &pk),
            Err(VerifyError::BadSignature)
        );
        assert!(matches!(
            verify_signed_json(&keys, "@b:hs", "ed25519:D", &pk),
            Err(VerifyError::MissingSignature { .. })
        ));
    }
}
