//! Secrets at rest and personal data after retention: HS256 client secrets are sealed with
//! XChaCha20-Poly1305 under `ERASURE_SECRET_KEY`; identifiers past the retention window are
//! replaced by an HMAC-SHA256 under `ERASURE_PII_HMAC_KEY`.

use base64::Engine;
use chacha20poly1305::{
    XChaCha20Poly1305, XNonce,
    aead::{Aead, KeyInit},
};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};

const NONCE_LEN: usize = 24;

fn cipher(key: &[u8]) -> XChaCha20Poly1305 {
    // The configured key may be any length of 32 bytes or more; SHA-256 fits it to the cipher.
    let k = Sha256::digest(key);
    XChaCha20Poly1305::new_from_slice(&k).expect("a 32-byte key")
}

/// Seals a secret: `nonce || ciphertext`.
pub fn seal(key: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let mut nonce = [0u8; NONCE_LEN];
    rand::rng().fill_bytes(&mut nonce);
    let mut out = nonce.to_vec();
    out.extend(
        cipher(key)
            .encrypt(XNonce::from_slice(&nonce), plaintext)
            .expect("encryption cannot fail"),
    );
    out
}

/// Opens a sealed secret; `None` if it was sealed under another key or tampered with.
pub fn open(key: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
    if sealed.len() < NONCE_LEN {
        return None;
    }
    let (nonce, ct) = sealed.split_at(NONCE_LEN);
    cipher(key).decrypt(XNonce::from_slice(nonce), ct).ok()
}

/// A fresh client secret: 32 random bytes, URL-safe base64 without padding.
pub fn new_client_secret() -> String {
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// The HMAC that stands for an identifier once the retention window has passed.
pub fn pii_ref(key: &[u8], identifier: &str) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(identifier.as_bytes());
    format!("hmac:{}", hex::encode(mac.finalize().into_bytes()))
}

/// Digest of a request body, to tell a retried call from a different one under the same key.
pub fn body_digest(body: &[u8]) -> String {
    hex::encode(Sha256::digest(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_secrets_open_only_with_their_key() {
        let sealed = seal(b"key-one-key-one-key-one-key-one!", b"s3cret");
        assert!(!sealed.windows(6).any(|w| w == b"s3cret"));
        assert_eq!(
            open(b"key-one-key-one-key-one-key-one!", &sealed).unwrap(),
            b"s3cret"
        );
        assert!(open(b"key-two-key-two-key-two-key-two!", &sealed).is_none());
        assert!(open(b"key-one-key-one-key-one-key-one!", &sealed[..10]).is_none());
    }

    #[test]
    fn pii_refs_are_stable_and_keyed() {
        let a = pii_ref(b"k1", "jane@example.com");
        assert_eq!(a, pii_ref(b"k1", "jane@example.com"));
        assert_ne!(a, pii_ref(b"k2", "jane@example.com"));
        assert!(a.starts_with("hmac:") && !a.contains("jane"));
    }
}
