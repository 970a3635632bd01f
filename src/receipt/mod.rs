//! Receipts of erasure (DESIGN.md section 12): a compact JWS, EdDSA over Ed25519, that states
//! what a settled request erased, where and under which catalog, and names no one: each
//! `userIds` entry appears only as a salted SHA-256, so whoever holds an identifier can find
//! it in the receipt, and the receipt alone tells nobody whom it is about.
//!
//! Which states have a receipt, and when, is decided once, by [`Proof::of`]. The claims are
//! fixed when the request's proof is sealed ([`crate::store::proofs`]): `iat` is that moment
//! and Ed25519 signatures are deterministic, so a receipt fetched twice under one key is the
//! same bytes. [`keys`] holds the signing key and the published ones; [`verify`] checks a
//! receipt offline, as `erasure receipt verify` does.

pub mod keys;

use std::collections::BTreeMap;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, jwk::JwkSet};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{
    catalog::ANONYMIZE,
    contract::format_time,
    domain::{RequestStatus, UserRef},
    store::proofs::{ReceiptFacts, Seal},
};
pub use keys::Keys;

/// What a request's receipt waits for, by the request's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proof {
    /// Its receipt comes once the late rows are counted and erased (`ERASURE_VERIFY_AFTER`).
    Verified,
    /// Nothing was erased that could come back: the receipt is sealed at once.
    AtOnce,
    /// No receipt while in this state: not settled, or `failed` (to be redriven).
    Unsettled,
}

impl Proof {
    /// The one place that decides: a state added to [`RequestStatus`] gets its answer here
    /// (the match is exhaustive, so it cannot be forgotten).
    pub fn of(status: RequestStatus) -> Self {
        match status {
            RequestStatus::Completed => Self::Verified,
            RequestStatus::Rejected | RequestStatus::Cancelled => Self::AtOnce,
            RequestStatus::InProgress | RequestStatus::Failed => Self::Unsettled,
        }
    }

    /// Every state this proof applies to.
    pub fn statuses(self) -> Vec<RequestStatus> {
        RequestStatus::ALL
            .iter()
            .copied()
            .filter(|s| Self::of(*s) == self)
            .collect()
    }
}

/// A receipt's claims (DESIGN.md section 12), in the order they are written.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Claims {
    pub iss: String,
    pub iat: i64,
    pub request_id: String,
    pub account_id: String,
    pub status: String,
    pub created_on: String,
    pub completed_on: Option<String>,
    /// Absent when the request's state needs no verification.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified_on: Option<String>,
    pub bots: Vec<String>,
    /// Store → bot → rows.
    pub rows: BTreeMap<String, BTreeMap<String, Rows>>,
    /// SHA-256 (hex) of the effective target catalog when the proof was sealed.
    pub catalog: String,
    pub salt: String,
    /// One per `userIds` entry, in order.
    pub subjects: Vec<Subject>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rows {
    pub deleted: i64,
    pub anonymized: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subject {
    pub hash: String,
    pub outcome: String,
}

impl Claims {
    /// The claims of a sealed request (`None` before its proof is sealed).
    pub fn of(issuer: &str, facts: &ReceiptFacts) -> Option<Self> {
        let proved_at = facts.proved_at?;
        let subjects: Vec<Subject> = serde_json::from_value(facts.subjects.clone()?).ok()?;
        let mut rows: BTreeMap<String, BTreeMap<String, Rows>> = BTreeMap::new();
        for (store, bot, action, n) in &facts.rows {
            let r = rows
                .entry(store.clone())
                .or_default()
                .entry(bot.to_string())
                .or_default();
            if action == ANONYMIZE {
                r.anonymized += n;
            } else {
                r.deleted += n;
            }
        }
        Some(Self {
            iss: issuer.to_string(),
            iat: proved_at.timestamp(),
            request_id: facts.request_id.to_string(),
            account_id: facts.account_id.to_string(),
            status: facts.status.to_string(),
            created_on: format_time(facts.created_at),
            completed_on: facts.completed_at.map(format_time),
            verified_on: facts.verified_at.map(format_time),
            bots: facts.bots.iter().map(ToString::to_string).collect(),
            rows,
            catalog: facts.catalog_digest.clone()?,
            salt: facts.salt.clone()?,
            subjects,
        })
    }

    /// The outcome of the subject `entry` (as given: a channel pair as its canonical JSON
    /// text), if it is in the receipt.
    pub fn outcome_of(&self, entry: &UserRef) -> Option<&str> {
        let hash = subject_hash(&self.salt, entry);
        self.subjects
            .iter()
            .find(|s| s.hash == hash)
            .map(|s| s.outcome.as_str())
    }
}

/// A receipt's fixed part for a request proved now under the catalog of `catalog_digest`:
/// a fresh salt, and entries hashed with [`subject_hash`].
pub fn seal(catalog_digest: &str) -> Seal {
    Seal {
        salt: new_salt(),
        hash: subject_hash,
        catalog_digest: catalog_digest.to_string(),
    }
}

/// A fresh salt for one receipt: 16 random bytes, unpadded base64url.
pub fn new_salt() -> String {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A subject's hash: unpadded base64url of SHA-256 over `salt` + `:` + the entry as given.
pub fn subject_hash(salt: &str, entry: &UserRef) -> String {
    let digest = Sha256::new()
        .chain_update(salt.as_bytes())
        .chain_update(b":")
        .chain_update(entry.as_str().as_bytes())
        .finalize();
    URL_SAFE_NO_PAD.encode(digest)
}

/// Why a receipt does not verify.
#[derive(Debug, thiserror::Error)]
pub enum Invalid {
    #[error("the key set is not a JWKS: {0}")]
    KeySet(String),
    #[error("not a compact JWS: {0}")]
    Malformed(String),
    #[error("signed with {0}, not EdDSA")]
    Algorithm(String),
    #[error("the header names no key (kid)")]
    NoKeyId,
    #[error("no key {0} in the key set")]
    UnknownKey(String),
    #[error("key {0} of the key set is not the key its thumbprint names")]
    Mislabelled(String),
    #[error("the signature does not verify: {0}")]
    Signature(String),
}

/// A receipt whose signature verified: the key that signed it and its claims.
#[derive(Debug)]
pub struct Verified {
    pub kid: String,
    /// The claims as signed.
    pub payload: serde_json::Value,
    /// The claims read as this version knows them (`None` if they do not fit).
    pub claims: Option<Claims>,
}

/// Checks a compact JWS against a JWKS (its text), offline: EdDSA only, the key its `kid`
/// names, and that key's RFC 7638 thumbprint must be that `kid`.
pub fn verify(compact: &str, jwks: &str) -> Result<Verified, Invalid> {
    let set: JwkSet = serde_json::from_str(jwks).map_err(|e| Invalid::KeySet(e.to_string()))?;
    let compact = compact.trim();
    let header =
        jsonwebtoken::decode_header(compact).map_err(|e| Invalid::Malformed(e.to_string()))?;
    if header.alg != Algorithm::EdDSA {
        return Err(Invalid::Algorithm(format!("{:?}", header.alg)));
    }
    let kid = header.kid.ok_or(Invalid::NoKeyId)?;
    let jwk = set
        .find(&kid)
        .ok_or_else(|| Invalid::UnknownKey(kid.clone()))?;
    if keys::thumbprint(jwk).as_deref() != Some(kid.as_str()) {
        return Err(Invalid::Mislabelled(kid));
    }
    let key = DecodingKey::from_jwk(jwk).map_err(|e| Invalid::KeySet(e.to_string()))?;
    let mut validation = Validation::new(Algorithm::EdDSA);
    // A receipt does not expire and names no audience: only its signature is checked.
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    let data = jsonwebtoken::decode::<serde_json::Value>(compact, &key, &validation)
        .map_err(|e| Invalid::Signature(e.to_string()))?;
    let claims = serde_json::from_value(data.claims.clone()).ok();
    Ok(Verified {
        kid,
        payload: data.claims,
        claims,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_state_has_one_answer_and_the_settled_ones_have_a_receipt() {
        assert_eq!(Proof::of(RequestStatus::Completed), Proof::Verified);
        assert_eq!(
            Proof::AtOnce.statuses(),
            [RequestStatus::Rejected, RequestStatus::Cancelled]
        );
        assert_eq!(
            Proof::Unsettled.statuses(),
            [RequestStatus::InProgress, RequestStatus::Failed]
        );
        let all: usize = [Proof::Verified, Proof::AtOnce, Proof::Unsettled]
            .iter()
            .map(|p| p.statuses().len())
            .sum();
        assert_eq!(all, RequestStatus::ALL.len());
    }

    #[test]
    fn a_subject_hash_is_unpadded_base64url_of_the_salted_entry() {
        // printf 's4lt:jane@example.com' | openssl dgst -sha256 -binary | base64 | tr '+/' '-_' | tr -d '='
        let hash = subject_hash("s4lt", &UserRef::new("jane@example.com"));
        assert_eq!(hash, "SJ4m6yqBvdsu3MJbavi2tbt1E-9t6VbsUOHLZHSr9ZA");
        assert_ne!(
            hash,
            subject_hash("other", &UserRef::new("jane@example.com"))
        );
    }

    #[test]
    fn salts_are_fresh() {
        let (a, b) = (new_salt(), new_salt());
        assert_ne!(a, b);
        assert_eq!(URL_SAFE_NO_PAD.decode(&a).unwrap().len(), 16);
    }
}
