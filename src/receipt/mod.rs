//! Receipts of erasure (DESIGN.md section 12): what a settled request's receipt states and
//! names no one by: each `userIds` entry appears only as a salted SHA-256, so whoever holds an
//! identifier can find it in the receipt, and the receipt alone tells nobody whom it is about.
//!
//! Which states have a receipt, and when, is decided once, by [`Proof::of`]. The fixed part of
//! a receipt (its salt and the subjects' hashes) is sealed with the request's proof
//! ([`crate::store::proofs`]), while the entries as given are still there to hash.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::{
    domain::{RequestStatus, UserRef},
    store::proofs::Seal,
};

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
            RequestStatus::Rejected => Self::AtOnce,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_state_has_one_answer_and_the_settled_ones_have_a_receipt() {
        assert_eq!(Proof::of(RequestStatus::Completed), Proof::Verified);
        assert_eq!(Proof::AtOnce.statuses(), [RequestStatus::Rejected]);
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
