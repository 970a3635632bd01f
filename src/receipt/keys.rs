//! The receipt keys: the Ed25519 key that signs (`ERASURE_RECEIPT_KEY_FILE`, PKCS#8 PEM;
//! unset, a built-in development key) and the public keys `/.well-known/jwks.json` publishes:
//! the current one first, then earlier ones (`ERASURE_RECEIPT_PREVIOUS_KEY_FILES`), so that a
//! receipt signed before a rotation still verifies. Each key's `kid` is its RFC 7638 JWK
//! thumbprint (SHA-256), so a key names itself and a verifier can check the name.

use std::path::Path;

use anyhow::Context;
use jsonwebtoken::{
    Algorithm, DecodingKey, EncodingKey, Header,
    jwk::{AlgorithmParameters, Jwk, ThumbprintHash},
};
use serde_json::{Value, json};

use super::Claims;
use crate::config::ProofSettings;

/// The development key used when `ERASURE_RECEIPT_KEY_FILE` is unset. It is public (it is
/// right here), so receipts it signs prove nothing: the process says so at every start.
const DEVELOPMENT_KEY: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIGl9t2ASMn0jkcxcWTb83dohIDC3gZFfkIpvTBuveOgV
-----END PRIVATE KEY-----
";

/// Why a key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("not an Ed25519 key in PEM form (PKCS#8 private key, or public key): {0}")]
    NotEd25519(String),
    #[error("the key does not sign: {0}")]
    CannotSign(String),
}

/// The signing key and the published ones.
pub struct Keys {
    signing: EncodingKey,
    kid: String,
    /// JWKs, the current key first.
    published: Vec<Value>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("kid", &self.kid)
            .field("published", &self.published.len())
            .finish_non_exhaustive()
    }
}

impl Keys {
    /// The keys the settings name; an unreadable or unusable file stops the process, naming
    /// its variable and path (never its content).
    pub fn load(settings: &ProofSettings) -> anyhow::Result<Self> {
        let read = |var: &str, path: &Path| {
            std::fs::read_to_string(path).with_context(|| format!("{var}={}", path.display()))
        };
        let current = match &settings.receipt_key_file {
            Some(path) => read("ERASURE_RECEIPT_KEY_FILE", path)?,
            None => DEVELOPMENT_KEY.to_string(),
        };
        let mut previous = Vec::new();
        for path in &settings.receipt_previous_key_files {
            let pem = read("ERASURE_RECEIPT_PREVIOUS_KEY_FILES", path)?;
            previous.push(public_jwk(&pem).with_context(|| {
                format!("ERASURE_RECEIPT_PREVIOUS_KEY_FILES: {}", path.display())
            })?);
        }
        Self::new(&current, previous).context("ERASURE_RECEIPT_KEY_FILE: the receipt signing key")
    }

    /// Signs with `current` (PKCS#8 PEM) and publishes it with `previous`.
    fn new(current: &str, previous: Vec<Jwk>) -> Result<Self, KeyError> {
        let signing = EncodingKey::from_ed_pem(current.as_bytes())
            .map_err(|e| KeyError::NotEd25519(e.to_string()))?;
        let jwk = Jwk::from_encoding_key(&signing, Algorithm::EdDSA)
            .map_err(|e| KeyError::NotEd25519(e.to_string()))?;
        let kid = thumbprint(&jwk).ok_or_else(|| KeyError::NotEd25519("no thumbprint".into()))?;
        // A key that loads may still not sign: find out at start, not at the first receipt.
        jsonwebtoken::crypto::sign(b"probe", &signing, Algorithm::EdDSA)
            .map_err(|e| KeyError::CannotSign(e.to_string()))?;
        let mut published = vec![jwks_entry(&jwk, &kid)];
        for jwk in previous {
            let Some(old) = thumbprint(&jwk) else {
                continue;
            };
            if published.iter().all(|p| p["kid"] != old.as_str()) {
                published.push(jwks_entry(&jwk, &old));
            }
        }
        Ok(Self {
            signing,
            kid,
            published,
        })
    }

    /// The current key's id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The receipt: a compact JWS of `claims`, header `{"typ": "JWT", "alg": "EdDSA", "kid"}`.
    pub fn sign(&self, claims: &Claims) -> Result<String, KeyError> {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.signing)
            .map_err(|e| KeyError::CannotSign(e.to_string()))
    }

    /// The JWKS: every published key.
    pub fn jwks(&self) -> Value {
        json!({ "keys": self.published })
    }
}

/// The public JWK of a PEM key: a PKCS#8 private key (a retired key file kept as it was) or
/// a public key (what is left of it once the private part is destroyed).
fn public_jwk(pem: &str) -> Result<Jwk, KeyError> {
    if let Ok(private) = EncodingKey::from_ed_pem(pem.as_bytes()) {
        return Jwk::from_encoding_key(&private, Algorithm::EdDSA)
            .map_err(|e| KeyError::NotEd25519(e.to_string()));
    }
    let public = DecodingKey::from_ed_pem(pem.as_bytes())
        .map_err(|e| KeyError::NotEd25519(e.to_string()))?;
    Jwk::from_decoding_key(&public, Some(Algorithm::EdDSA))
        .map_err(|e| KeyError::NotEd25519(e.to_string()))
}

/// The RFC 7638 thumbprint (SHA-256, base64url) of an Ed25519 JWK; `None` for other keys.
pub(super) fn thumbprint(jwk: &Jwk) -> Option<String> {
    match &jwk.algorithm {
        AlgorithmParameters::OctetKeyPair(_) => jwk.thumbprint(ThumbprintHash::SHA256).ok(),
        _ => None,
    }
}

/// A key as the JWKS publishes it.
fn jwks_entry(jwk: &Jwk, kid: &str) -> Value {
    let AlgorithmParameters::OctetKeyPair(okp) = &jwk.algorithm else {
        unreachable!("only Ed25519 keys are loaded")
    };
    json!({"kty": "OKP", "crv": "Ed25519", "x": okp.x, "kid": kid, "use": "sig", "alg": "EdDSA"})
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 8037 appendix A.1's private key (`d`), as PKCS#8.
    const RFC8037: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIJ1hsZ3v/VpguoRK9JLsLMREScVpezJpGXA7rAMcrn9g
-----END PRIVATE KEY-----
";

    #[test]
    fn the_kid_is_the_rfc_7638_thumbprint_of_rfc_8037() {
        let keys = Keys::new(RFC8037, Vec::new()).unwrap();
        // RFC 8037 A.2 (the public key) and A.3 (its thumbprint).
        assert_eq!(keys.kid(), "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k");
        assert_eq!(
            keys.jwks()["keys"][0],
            json!({"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo",
                   "kid": "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k", "use": "sig", "alg": "EdDSA"})
        );
    }

    #[test]
    fn signing_gives_rfc_8037s_signature() {
        // RFC 8037 A.4: the payload "Example of Ed25519 signing" under {"alg":"EdDSA"}.
        let signing = EncodingKey::from_ed_pem(RFC8037.as_bytes()).unwrap();
        let input = "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc";
        let signature =
            jsonwebtoken::crypto::sign(input.as_bytes(), &signing, Algorithm::EdDSA).unwrap();
        assert_eq!(
            signature,
            "hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg"
        );
    }

    #[test]
    fn previous_keys_are_published_after_the_current_one_once_each() {
        let current = Keys::new(DEVELOPMENT_KEY, Vec::new()).unwrap();
        let old = public_jwk(RFC8037).unwrap();
        let keys = Keys::new(
            DEVELOPMENT_KEY,
            vec![
                old.clone(),
                old,
                public_jwk(DEVELOPMENT_KEY).unwrap(), // the current key again
            ],
        )
        .unwrap();
        let jwks = keys.jwks();
        let kids: Vec<&str> = jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap())
            .collect();
        assert_eq!(
            kids,
            [current.kid(), "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"]
        );
    }

    #[test]
    fn a_retired_key_may_be_kept_as_its_public_half() {
        // `openssl pkey -pubout` of RFC8037.
        let public = "-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEA11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=
-----END PUBLIC KEY-----
";
        assert_eq!(
            thumbprint(&public_jwk(public).unwrap()).unwrap(),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
        assert!(Keys::new(public, Vec::new()).is_err(), "it cannot sign");
        assert!(
            public_jwk("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n").is_err()
        );
    }
}
