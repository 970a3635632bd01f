//! Demo and benchmark data for the platform schema, generated inside PostgreSQL (no per-row
//! round trips). Rows of a user are scattered through each table, not clustered.

use indicatif::{ProgressBar, ProgressStyle};
use sqlx::PgPool;

/// What to create. Ids are `{prefix}` based so that several data sets can share a database.
#[derive(Clone, Debug)]
pub struct SeedSpec {
    pub account: String,
    pub prefix: String,
    pub users: i64,
    pub bots: i64,
    pub rows: i64,
    pub progress: bool,
}

impl SeedSpec {
    pub fn user_id(&self, i: i64) -> String {
        format!("u-{}-{i}", self.prefix)
    }
    pub fn bot_id(&self, i: i64) -> String {
        format!("st-{}-{i}", self.prefix)
    }
    pub fn email(&self, i: i64) -> String {
        format!("user{i}@{}.example.com", self.prefix)
    }
}

/// Creates the account, users (with email, enterprise id and a Telegram identity), bots, and
/// `rows` rows split 60/10/30 between conversations, sessions and analytics. Users 1 to 4 are
/// protected (account owner, account member, bot owner, bot co-developer) when there are
/// that many. Returns the rows created.
pub async fn seed(pool: &PgPool, spec: &SeedSpec) -> anyhow::Result<i64> {
    let bar = if spec.progress {
        let b = ProgressBar::new(spec.rows.max(1) as u64);
        b.set_style(
            ProgressStyle::with_template(
                "{msg:12} [{bar:40}] {pos}/{len} rows ({per_sec}, eta {eta})",
            )?
            .progress_chars("=> "),
        );
        b
    } else {
        ProgressBar::hidden()
    };
    bar.set_message("accounts");
    let p = &spec.prefix;
    sqlx::query("INSERT INTO platform.accounts (id, name) VALUES ($1, $2) ON CONFLICT DO NOTHING")
        .bind(&spec.account)
        .bind(format!("seeded account {}", spec.account))
        .execute(pool)
        .await?;
    bar.set_message("users");
    sqlx::query(
        "INSERT INTO platform.users (id, email, enterprise_id)
         SELECT 'u-' || $1 || '-' || i, 'user' || i || '@' || $1 || '.example.com', 'ent-' || $1 || '-' || i
           FROM generate_series(1, $2) i ON CONFLICT DO NOTHING",
    )
    .bind(p)
    .bind(spec.users)
    .execute(pool)
    .await?;
    sqlx::query(
        "INSERT INTO platform.channel_identities (channel_id, channel_user_id, user_id)
         SELECT 'telegram', 'tg-' || $1 || '-' || i, 'u-' || $1 || '-' || i
           FROM generate_series(1, $2) i ON CONFLICT DO NOTHING",
    )
    .bind(p)
    .bind(spec.users)
    .execute(pool)
    .await?;
    sqlx::query(
        "INSERT INTO platform.bots (id, account_id, name)
         SELECT 'st-' || $1 || '-' || i, $2, 'bot ' || i FROM generate_series(1, $3) i ON CONFLICT DO NOTHING",
    )
    .bind(p)
    .bind(&spec.account)
    .bind(spec.bots)
    .execute(pool)
    .await?;
    if spec.users >= 4 && spec.bots >= 1 {
        sqlx::query(
            "INSERT INTO platform.account_members (account_id, user_id, role)
             VALUES ($2, 'u-' || $1 || '-1', 'owner'), ($2, 'u-' || $1 || '-2', 'member') ON CONFLICT DO NOTHING",
        )
        .bind(p)
        .bind(&spec.account)
        .execute(pool)
        .await?;
        sqlx::query(
            "INSERT INTO platform.bot_collaborators (bot_id, user_id, role)
             VALUES ('st-' || $1 || '-1', 'u-' || $1 || '-3', 'owner'), ('st-' || $1 || '-1', 'u-' || $1 || '-4', 'co_developer')
             ON CONFLICT DO NOTHING",
        )
        .bind(p)
        .execute(pool)
        .await?;
    }
    if spec.bots == 0 || spec.users == 0 {
        bar.finish_and_clear();
        return Ok(0);
    }
    let shares = [
        ("conversations", spec.rows * 6 / 10),
        ("sessions", spec.rows / 10),
        ("analytics", spec.rows - spec.rows * 6 / 10 - spec.rows / 10),
    ];
    const CHUNK: i64 = 100_000;
    for (store, total) in shares {
        bar.set_message(store);
        let mut done = 0;
        while done < total {
            let n = CHUNK.min(total - done);
            let sql = match store {
                "conversations" => {
                    "INSERT INTO platform.conversations (bot_id, user_id, message)
                     SELECT 'st-' || $1 || '-' || (1 + floor(random() * $3))::bigint,
                            'u-' || $1 || '-' || (1 + floor(random() * $2))::bigint, 'hello'
                       FROM generate_series(1, $4)"
                }
                "sessions" => {
                    "INSERT INTO platform.sessions (bot_id, user_id, channel_id)
                     SELECT 'st-' || $1 || '-' || (1 + floor(random() * $3))::bigint,
                            'u-' || $1 || '-' || (1 + floor(random() * $2))::bigint, 'telegram'
                       FROM generate_series(1, $4)"
                }
                _ => {
                    "INSERT INTO platform.analytics_events (bot_id, user_id, event)
                     SELECT 'st-' || $1 || '-' || (1 + floor(random() * $3))::bigint,
                            'u-' || $1 || '-' || (1 + floor(random() * $2))::bigint, 'message_received'
                       FROM generate_series(1, $4)"
                }
            };
            sqlx::query(sql)
                .bind(p)
                .bind(spec.users)
                .bind(spec.bots)
                .bind(n)
                .execute(pool)
                .await?;
            done += n;
            bar.inc(n as u64);
        }
    }
    bar.set_message("analyze");
    sqlx::query("ANALYZE platform.conversations, platform.sessions, platform.analytics_events")
        .execute(pool)
        .await?;
    bar.finish_and_clear();
    Ok(spec.rows)
}
