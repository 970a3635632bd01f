//! The domain: identifiers that must not be mixed up, and the states of requests, tasks and
//! users, with their diagrams. Identifiers are parsed once at the edge ([`crate::contract`])
//! and trusted after it; a state is never compared or stored as free text outside its mapping
//! here.
//!
//! # Request states (`erasure.requests.status`)
//!
//! ```text
//!                  plan (users decided, tasks created; or settled at once)
//!   in-progress ─────────────────────────────────────────────▶ in-progress (planned)
//!        │ settle: every task done          settle: every user rejected
//!        ├──────────────────────▶ completed        ──────────▶ rejected
//!        │ fail: retries exhausted, or a refused message
//!        ├──────────────────────▶ failed ──reopen (redrive)──▶ in-progress
//!        │ cancel: the caller takes it back (no batch starts after it commits)
//!        ▼
//!    cancelled
//! ```
//!
//! Every arrow into a settled state (`completed`, `rejected`, `failed`, `cancelled`) queues the
//! request's callback, when it has one, in its own transaction (`erasure.callbacks`).
//!
//! # Task states (`erasure.tasks.status`), one per (request, bot)
//!
//! ```text
//!   pending ──complete (every row gone)──▶ done
//!   pending ──advance (slice used up)────▶ pending (next slice)
//!   pending ──fail (permanent error)─────▶ failed ──reopen (redrive)──▶ pending
//!   pending ──cancel (its request)───────▶ cancelled
//! ```
//!
//! A task becomes `done` once, guarded by its state, in the transaction that counts it on its
//! request; the request settles in the transaction that completes its last task.
//!
//! # User states (`erasure.request_users.status`), one per `userIds` entry
//!
//! ```text
//!   IN_PROGRESS ──plan: resolves to no one──────────────▶ NOT_FOUND
//!   IN_PROGRESS ──plan or re-check: someone protected──▶ REJECTED (reason)
//!   IN_PROGRESS ──settle──────────────────────────────▶ SUCCESS
//!   IN_PROGRESS ──fail────────────────────────────────▶ FAILED (reason) ──reopen──▶ IN_PROGRESS
//!   IN_PROGRESS ──cancel──────────────────────────────▶ CANCELLED
//! ```
//!
//! The functions of [`crate::store`] are these arrows, one each, each guarded by the states
//! it leaves from.

use serde::{Deserialize, Serialize};

/// Declares an identifier newtype: text in the database and on the wire, never mixed up with
/// another kind of identifier.
macro_rules! id {
    ($(#[doc = $doc:literal])* $name:ident) => {
        $(#[doc = $doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, sqlx::Type)]
        #[serde(transparent)]
        #[sqlx(transparent)]
        pub struct $name(String);

        impl $name {
            /// Wraps a value already validated at the edge (or read back from the database).
            pub fn new(value: impl Into<String>) -> Self {
                Self(value.into())
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self(s.to_string())
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                Self(s)
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }
    };
}

id!(
    /// An account of the platform (`platform.accounts.id`).
    AccountId
);
id!(
    /// A bot of the platform (`platform.bots.id`, `st-…`).
    BotId
);
id!(
    /// A platform user (`platform.users.id`, `u-…`): what data is keyed by.
    PlatformUserId
);
id!(
    /// A `userIds` entry as the caller gave it (a channel pair as its canonical JSON text), or
    /// its HMAC once the retention window has passed. Personal data: never logged.
    UserRef
);

/// A request id: `eud-` followed by a producer-chosen token.
#[derive(
    Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, sqlx::Type,
)]
#[serde(try_from = "String")]
#[sqlx(transparent)]
pub struct RequestId(String);

impl RequestId {
    pub fn generate() -> Self {
        Self(format!("eud-{}", uuid::Uuid::new_v4()))
    }
    /// Accepts `eud-` plus 1 to 124 characters of letters, digits, `-`, `_`, `.` or `:`.
    pub fn parse(s: &str) -> Option<Self> {
        let rest = s.strip_prefix("eud-")?;
        let ok = !rest.is_empty()
            && s.len() <= 128
            && rest
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c));
        ok.then(|| Self(s.to_string()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for RequestId {
    type Error = &'static str;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s).ok_or("a request id is eud- followed by letters, digits, -_.:")
    }
}

impl PartialEq<String> for RequestId {
    fn eq(&self, other: &String) -> bool {
        self.0 == *other
    }
}

impl PartialEq<&str> for RequestId {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A state that is text in the database and on the wire, with one spelling per variant.
#[derive(Debug, thiserror::Error)]
#[error("unknown {kind} {value:?} (one of: {})", .expected.join(", "))]
pub struct UnknownState {
    kind: &'static str,
    value: String,
    expected: &'static [&'static str],
}

/// Declares a state enum with its one spelling per variant: `as_str`, parsing, serde and
/// sqlx (as `text`) all use it. Variants are ordered as declared.
macro_rules! states {
    ($(#[doc = $doc:literal])* $name:ident as $kind:literal { $($(#[doc = $vdoc:literal])* $variant:ident = $text:literal,)* }) => {
        $(#[doc = $doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $($(#[doc = $vdoc])* $variant,)*
        }

        impl $name {
            pub const ALL: &[$name] = &[$($name::$variant,)*];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)*
                }
            }
        }

        impl std::str::FromStr for $name {
            type Err = UnknownState;
            fn from_str(s: &str) -> Result<Self, UnknownState> {
                match s {
                    $($text => Ok($name::$variant),)*
                    _ => Err(UnknownState {
                        kind: $kind,
                        value: s.to_string(),
                        expected: &[$($text,)*],
                    }),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        /// Compares with the wire spelling (tests read like the contract).
        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }

        impl sqlx::Type<sqlx::Postgres> for $name {
            fn type_info() -> sqlx::postgres::PgTypeInfo {
                <&str as sqlx::Type<sqlx::Postgres>>::type_info()
            }
            fn compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
                <&str as sqlx::Type<sqlx::Postgres>>::compatible(ty)
            }
        }

        impl sqlx::postgres::PgHasArrayType for $name {
            fn array_type_info() -> sqlx::postgres::PgTypeInfo {
                <&str as sqlx::postgres::PgHasArrayType>::array_type_info()
            }
        }

        impl sqlx::Encode<'_, sqlx::Postgres> for $name {
            fn encode_by_ref(
                &self,
                buf: &mut sqlx::postgres::PgArgumentBuffer,
            ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
                <&str as sqlx::Encode<sqlx::Postgres>>::encode(self.as_str(), buf)
            }
        }

        impl sqlx::Decode<'_, sqlx::Postgres> for $name {
            fn decode(value: sqlx::postgres::PgValueRef<'_>) -> Result<Self, sqlx::error::BoxDynError> {
                let text = <&str as sqlx::Decode<sqlx::Postgres>>::decode(value)?;
                Ok(text.parse()?)
            }
        }
    };
}

states!(
    /// A request's state (diagram above); `in-progress` until every user is settled.
    RequestStatus as "request status" {
        InProgress = "in-progress",
        Completed = "completed",
        Rejected = "rejected",
        Failed = "failed",
        Cancelled = "cancelled",
    }
);

impl RequestStatus {
    /// Whether the request has ended (for now: `failed` can be reopened by a redrive).
    pub fn is_settled(self) -> bool {
        self != Self::InProgress
    }
}

states!(
    /// A per-(request, bot) task's state (diagram above).
    TaskStatus as "task status" {
        Pending = "pending",
        Done = "done",
        Failed = "failed",
        Cancelled = "cancelled",
    }
);

impl TaskStatus {
    /// Whether the task still has work to do: neither `done` nor `cancelled` (a `failed` one
    /// runs again when its message is redriven).
    pub fn is_open(self) -> bool {
        !matches!(self, Self::Done | Self::Cancelled)
    }
}

states!(
    /// A `userIds` entry's state, as the status document spells it (diagram above).
    UserStatus as "user status" {
        InProgress = "IN_PROGRESS",
        Success = "SUCCESS",
        NotFound = "NOT_FOUND",
        Rejected = "REJECTED",
        Failed = "FAILED",
        Cancelled = "CANCELLED",
    }
);

states!(
    /// Why a user is not erased, strongest first: owner before member, account before bot.
    /// The order is the rule: of several reasons, the least is the one reported.
    RejectionReason as "rejection reason" {
        AccountOwner = "account_owner",
        AccountMember = "account_member",
        BotOwner = "bot_owner",
        BotCoDeveloper = "bot_co_developer",
    }
);

/// A `userIds` entry's outcome: its state with the reason where the state has one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UserOutcome {
    InProgress,
    Success,
    NotFound,
    Rejected(RejectionReason),
    /// Retries exhausted; the reason is short and names no one.
    Failed(String),
    /// The request was cancelled before this entry settled.
    Cancelled,
}

impl UserOutcome {
    pub fn status(&self) -> UserStatus {
        match self {
            Self::InProgress => UserStatus::InProgress,
            Self::Success => UserStatus::Success,
            Self::NotFound => UserStatus::NotFound,
            Self::Rejected(_) => UserStatus::Rejected,
            Self::Failed(_) => UserStatus::Failed,
            Self::Cancelled => UserStatus::Cancelled,
        }
    }

    /// The `reason` column and field.
    pub fn reason(&self) -> Option<String> {
        match self {
            Self::Rejected(r) => Some(r.as_str().to_string()),
            Self::Failed(r) => Some(r.clone()),
            _ => None,
        }
    }

    /// From the `status` and `reason` columns.
    pub fn from_columns(status: UserStatus, reason: Option<String>) -> Result<Self, UnknownState> {
        Ok(match status {
            UserStatus::InProgress => Self::InProgress,
            UserStatus::Success => Self::Success,
            UserStatus::NotFound => Self::NotFound,
            UserStatus::Rejected => Self::Rejected(reason.as_deref().unwrap_or("").parse()?),
            UserStatus::Failed => Self::Failed(reason.unwrap_or_default()),
            UserStatus::Cancelled => Self::Cancelled,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_have_one_spelling_each_way() {
        for s in RequestStatus::ALL {
            assert_eq!(s.as_str().parse::<RequestStatus>().unwrap(), *s);
        }
        for s in UserStatus::ALL {
            assert_eq!(s.as_str().parse::<UserStatus>().unwrap(), *s);
        }
        assert!("IN-PROGRESS".parse::<RequestStatus>().is_err());
        assert_eq!(
            serde_json::to_string(&RequestStatus::InProgress).unwrap(),
            r#""in-progress""#
        );
        assert_eq!(
            serde_json::from_str::<UserStatus>(r#""NOT_FOUND""#).unwrap(),
            UserStatus::NotFound
        );
    }

    #[test]
    fn the_strongest_rejection_reason_is_the_least() {
        use RejectionReason::*;
        let mut reasons = vec![BotCoDeveloper, AccountMember, BotOwner, AccountOwner];
        reasons.sort();
        assert_eq!(
            reasons,
            [AccountOwner, AccountMember, BotOwner, BotCoDeveloper]
        );
        assert_eq!(
            [BotOwner, AccountMember].into_iter().min(),
            Some(AccountMember)
        );
    }

    #[test]
    fn an_outcome_round_trips_through_its_columns() {
        for o in [
            UserOutcome::InProgress,
            UserOutcome::Success,
            UserOutcome::NotFound,
            UserOutcome::Rejected(RejectionReason::BotOwner),
            UserOutcome::Failed("database error 42P01".into()),
        ] {
            assert_eq!(
                UserOutcome::from_columns(o.status(), o.reason()).unwrap(),
                o
            );
        }
        assert!(UserOutcome::from_columns(UserStatus::Rejected, Some("tired".into())).is_err());
    }

    #[test]
    fn the_diagrams_name_every_state() {
        let diagrams: String = include_str!("domain.rs")
            .lines()
            .filter_map(|l| l.strip_prefix("//!"))
            .collect::<Vec<_>>()
            .join("\n");
        let states = RequestStatus::ALL
            .iter()
            .map(|s| s.as_str())
            .chain(TaskStatus::ALL.iter().map(|s| s.as_str()))
            .chain(UserStatus::ALL.iter().map(|s| s.as_str()));
        for state in states {
            assert!(diagrams.contains(state), "the diagrams lack {state}");
        }
    }
}
