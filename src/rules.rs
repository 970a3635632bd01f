//! The rules of erasure (DESIGN.md section 2) as one pure function: given what each `userIds`
//! entry resolves to and who among those users is protected, decide each entry's outcome and
//! the users to erase. The planner applies it once, and every task slice applies it again to
//! the entries still in progress (a user may have become protected meanwhile).

use std::collections::HashMap;

use crate::domain::{PlatformUserId, RejectionReason, UserOutcome};

/// How a user is tied to an account or a bot on the platform (`platform.account_members`,
/// `platform.bot_collaborators`), by the platform's own role names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tie {
    Account { role: String },
    Bot { role: String },
}

impl Tie {
    /// The reason this tie protects its user: an owner's before a member's, an account's
    /// before a bot's (the order of [`RejectionReason`]).
    pub fn reason(&self) -> RejectionReason {
        match self {
            Self::Account { role } if role == "owner" => RejectionReason::AccountOwner,
            Self::Account { .. } => RejectionReason::AccountMember,
            Self::Bot { role } if role == "owner" => RejectionReason::BotOwner,
            Self::Bot { .. } => RejectionReason::BotCoDeveloper,
        }
    }
}

/// The strongest reason each protected user must not be erased.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Protections(HashMap<PlatformUserId, RejectionReason>);

impl Protections {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn of(&self, user: &PlatformUserId) -> Option<RejectionReason> {
        self.0.get(user).copied()
    }
}

impl FromIterator<(PlatformUserId, Tie)> for Protections {
    fn from_iter<I: IntoIterator<Item = (PlatformUserId, Tie)>>(ties: I) -> Self {
        let mut strongest: HashMap<PlatformUserId, RejectionReason> = HashMap::new();
        for (user, tie) in ties {
            let reason = tie.reason();
            strongest
                .entry(user)
                .and_modify(|r| *r = (*r).min(reason))
                .or_insert(reason);
        }
        Self(strongest)
    }
}

/// The rules' answer: one outcome per entry (in order), and every user to erase (sorted,
/// each once).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub outcomes: Vec<UserOutcome>,
    pub erase: Vec<PlatformUserId>,
}

/// Applies the rules to entries, each given as the platform users it resolves to:
/// - an entry that resolves to no one is `NOT_FOUND`;
/// - an entry any of whose users is protected is `REJECTED` whole, with the strongest reason
///   among its users (erasing less than asked is safe, erasing a protected user is not);
/// - every other entry stays `IN_PROGRESS`, and its users are erased.
pub fn decide<E: AsRef<[PlatformUserId]>>(entries: &[E], protections: &Protections) -> Decision {
    let mut erase = Vec::new();
    let outcomes = entries
        .iter()
        .map(|entry| {
            let users = entry.as_ref();
            if users.is_empty() {
                return UserOutcome::NotFound;
            }
            match users.iter().filter_map(|u| protections.of(u)).min() {
                Some(reason) => UserOutcome::Rejected(reason),
                None => {
                    erase.extend(users.iter().cloned());
                    UserOutcome::InProgress
                }
            }
        })
        .collect();
    erase.sort();
    erase.dedup();
    Decision { outcomes, erase }
}

#[cfg(test)]
mod tests {
    use super::*;
    use RejectionReason::*;

    fn users(ids: &[&str]) -> Vec<PlatformUserId> {
        ids.iter().map(|&u| PlatformUserId::from(u)).collect()
    }

    fn account(role: &str) -> Tie {
        Tie::Account { role: role.into() }
    }

    fn bot(role: &str) -> Tie {
        Tie::Bot { role: role.into() }
    }

    /// The decision's outcomes, one per entry, and the users it erases.
    fn assert_decided(d: &Decision, outcomes: &[UserOutcome], erase: &[&str], why: &str) {
        assert_eq!(d.outcomes, outcomes, "{why}");
        assert_eq!(d.erase, users(erase), "{why}");
    }

    fn protected(ties: &[(&str, Tie)]) -> Protections {
        ties.iter()
            .map(|(u, t)| (PlatformUserId::from(*u), t.clone()))
            .collect()
    }

    #[test]
    fn an_entry_that_resolves_to_no_one_is_not_found() {
        let d = decide(&[users(&[])], &Protections::default());
        assert_eq!(d.outcomes, [UserOutcome::NotFound]);
        assert!(d.erase.is_empty());
    }

    #[test]
    fn unprotected_users_are_erased_each_once() {
        let d = decide(
            &[users(&["u-2", "u-1"]), users(&["u-1"]), users(&["u-3"])],
            &Protections::default(),
        );
        assert_eq!(d.outcomes, vec![UserOutcome::InProgress; 3]);
        assert_eq!(d.erase, users(&["u-1", "u-2", "u-3"]));
    }

    #[test]
    fn every_tie_protects_with_its_reason() {
        for (tie, reason) in [
            (account("owner"), AccountOwner),
            (account("member"), AccountMember),
            (bot("owner"), BotOwner),
            (bot("co_developer"), BotCoDeveloper),
        ] {
            let d = decide(&[users(&["u-1"])], &protected(&[("u-1", tie)]));
            assert_eq!(d.outcomes, [UserOutcome::Rejected(reason)]);
            assert!(d.erase.is_empty());
        }
    }

    #[test]
    fn the_strongest_reason_wins_for_one_user_and_across_an_entry() {
        let p = protected(&[
            ("u-1", bot("co_developer")),
            ("u-1", account("member")),
            ("u-2", bot("owner")),
        ]);
        assert_eq!(p.of(&"u-1".into()), Some(AccountMember));
        let d = decide(&[users(&["u-2", "u-1"])], &p);
        assert_eq!(d.outcomes, [UserOutcome::Rejected(AccountMember)]);
    }

    #[test]
    fn an_entry_with_one_protected_user_is_rejected_whole_and_keeps_its_other_users() {
        let p = protected(&[("u-2", account("owner"))]);
        let d = decide(&[users(&["u-1", "u-2"]), users(&["u-3"])], &p);
        let outcomes = [UserOutcome::Rejected(AccountOwner), UserOutcome::InProgress];
        let why = "u-1 is kept: its entry also named a protected user";
        assert_decided(&d, &outcomes, &["u-3"], why);
    }

    #[test]
    fn a_user_named_by_two_entries_is_erased_only_if_neither_is_rejected() {
        let d = decide(
            &[users(&["u-1", "u-9"]), users(&["u-1"])],
            &protected(&[("u-9", bot("owner"))]),
        );
        let outcomes = [UserOutcome::Rejected(BotOwner), UserOutcome::InProgress];
        assert_decided(
            &d,
            &outcomes,
            &["u-1"],
            "the second entry asks for u-1 alone",
        );
    }
}
