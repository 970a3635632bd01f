//! Reads of the platform's identity and protection model (`platform.users`,
//! `channel_identities`, `accounts`, `account_members`, `bots`, `bot_collaborators`): whom an
//! identifier names, who is protected, which bots an account has. Never written.

use super::sql;
use crate::{
    domain::{AccountId, BotId, PlatformUserId, RequestId},
    rules::{Protections, Tie},
};

/// The account each of `bot_ids` belongs to (bots unknown to the platform are absent).
pub async fn bot_accounts<'e, E: sqlx::PgExecutor<'e>>(
    exec: E,
    bot_ids: &[BotId],
) -> Result<Vec<(BotId, AccountId)>, sqlx::Error> {
    sql::query_as("SELECT id, account_id FROM platform.bots WHERE id = ANY($1)")
        .bind(bot_ids)
        .fetch_all(exec)
        .await
}

/// Which of `accounts` the platform knows.
pub async fn known_accounts<'e, E: sqlx::PgExecutor<'e>>(
    exec: E,
    accounts: &[&AccountId],
) -> Result<Vec<AccountId>, sqlx::Error> {
    sql::query_scalar("SELECT id FROM platform.accounts WHERE id = ANY($1)")
        .bind(accounts)
        .fetch_all(exec)
        .await
}

/// Every bot of each of `accounts`, in order of bot id.
pub async fn account_bots<'e, E: sqlx::PgExecutor<'e>>(
    exec: E,
    accounts: &[&AccountId],
) -> Result<Vec<(AccountId, BotId)>, sqlx::Error> {
    sql::query_as(
        "SELECT account_id, id FROM platform.bots WHERE account_id = ANY($1) ORDER BY account_id, id",
    )
    .bind(accounts)
    .fetch_all(exec)
    .await
}

/// One `userIds` entry of a request with the platform users it resolves to.
#[derive(sqlx::FromRow, Debug)]
pub struct ResolvedEntry {
    pub request_id: RequestId,
    pub position: i32,
    pub user_ids: Vec<PlatformUserId>,
}

impl AsRef<[PlatformUserId]> for ResolvedEntry {
    fn as_ref(&self) -> &[PlatformUserId] {
        &self.user_ids
    }
}

/// Maps every entry of the requests to platform user ids: a string matches a user id, an
/// email (case-insensitively), an enterprise id or a channel user id on any channel; a channel
/// pair matches that channel's identity. In order of request and position.
pub async fn resolve_users<'e, E: sqlx::PgExecutor<'e>>(
    exec: E,
    ids: &[&RequestId],
) -> Result<Vec<ResolvedEntry>, sqlx::Error> {
    sql::query_as(
        "WITH e AS (
            SELECT request_id, position, kind, user_ref,
                   CASE WHEN kind = 'channel' THEN (user_ref::jsonb) ->> 'channelId' END AS channel_id,
                   CASE WHEN kind = 'channel' THEN (user_ref::jsonb) ->> 'channelUserId' END AS channel_user_id
              FROM erasure.request_users WHERE request_id = ANY($1))
         SELECT e.request_id, e.position,
                COALESCE(array_agg(DISTINCT m.user_id ORDER BY m.user_id)
                         FILTER (WHERE m.user_id IS NOT NULL), '{}') AS user_ids
           FROM e
           LEFT JOIN LATERAL (
                SELECT u.id AS user_id FROM platform.users u WHERE e.kind = 'id' AND u.id = e.user_ref
                UNION SELECT u.id FROM platform.users u WHERE e.kind = 'id' AND lower(u.email) = lower(e.user_ref)
                UNION SELECT u.id FROM platform.users u WHERE e.kind = 'id' AND u.enterprise_id = e.user_ref
                UNION SELECT c.user_id FROM platform.channel_identities c
                       WHERE e.kind = 'id' AND c.channel_user_id = e.user_ref
                UNION SELECT c.user_id FROM platform.channel_identities c
                       WHERE e.kind = 'channel' AND c.channel_id = e.channel_id
                         AND c.channel_user_id = e.channel_user_id
           ) m ON true
          GROUP BY e.request_id, e.position
          ORDER BY e.request_id, e.position",
    )
    .bind(ids)
    .fetch_all(exec)
    .await
}

/// Who among `users` is protected, and why: their account memberships and bot
/// collaborations anywhere on the platform.
pub async fn protections<'e, E: sqlx::PgExecutor<'e>>(
    exec: E,
    users: &[PlatformUserId],
) -> Result<Protections, sqlx::Error> {
    let ties: Vec<(PlatformUserId, bool, String)> = sql::query_as(
        "SELECT user_id, true, role FROM platform.account_members WHERE user_id = ANY($1)
         UNION ALL
         SELECT user_id, false, role FROM platform.bot_collaborators WHERE user_id = ANY($1)",
    )
    .bind(users)
    .fetch_all(exec)
    .await?;
    Ok(ties
        .into_iter()
        .map(|(user, account, role)| {
            let tie = if account {
                Tie::Account { role }
            } else {
                Tie::Bot { role }
            };
            (user, tie)
        })
        .collect())
}
