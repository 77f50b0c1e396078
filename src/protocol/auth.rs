//! What a runner signs to prove its identity, and how the API checks it. Both sides
//! build the signed bytes here so they cannot drift apart.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signature, Verifier, VerifyingKey};

/// The bytes signed in `authenticate`: bound to this connection's nonce and to the
/// runner ID, so a signature can be replayed neither on another connection nor for
/// another runner.
pub fn auth_message(nonce: &str, runner_id: &str) -> Vec<u8> {
    format!("fyn-runner-auth:v1:{nonce}:{runner_id}").into_bytes()
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("public key is not 32 bytes of base64")]
    BadPublicKey,
    #[error("signature is not 64 bytes of base64")]
    BadSignature,
    #[error("signature does not match the runner's key")]
    Mismatch,
}

/// Check a base64 Ed25519 signature over `auth_message(nonce, runner_id)`.
pub fn verify_signature(
    public_key_b64: &str,
    nonce: &str,
    runner_id: &str,
    signature_b64: &str,
) -> Result<(), AuthError> {
    let key_bytes: [u8; 32] = STANDARD
        .decode(public_key_b64)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or(AuthError::BadPublicKey)?;
    let key = VerifyingKey::from_bytes(&key_bytes).map_err(|_| AuthError::BadPublicKey)?;
    let sig_bytes: [u8; 64] = STANDARD
        .decode(signature_b64)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or(AuthError::BadSignature)?;
    let signature = Signature::from_bytes(&sig_bytes);
    key.verify(&auth_message(nonce, runner_id), &signature)
        .map_err(|_| AuthError::Mismatch)
}
