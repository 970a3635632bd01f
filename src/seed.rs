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
    let bar = progress(spec)?;
    bar.set_message("accounts");
    identities(pool, spec).await?;
    if spec.users >= 4 && spec.bots >= 1 {
        protections(pool, spec).await?;
    }
    if spec.bots == 0 || spec.users == 0 {
        bar.finish_and_clear();
        return Ok(0);
    }
    let shares = [
        (&STORES[0], spec.rows * 6 / 10),
        (&STORES[1], spec.rows / 10),
        (&STORES[2], spec.rows - spec.rows * 6 / 10 - spec.rows / 10),
    ];
    for (store, total) in shares {
        bar.set_message(store.name);
        rows(pool, spec, store, total, &bar).await?;
    }
    bar.set_message("analyze");
    sqlx::query("ANALYZE platform.conversations, platform.sessions, platform.analytics_events")
        .execute(pool)
        .await?;
    bar.finish_and_clear();
    Ok(spec.rows)
}

fn progress(spec: &SeedSpec) -> anyhow::Result<ProgressBar> {
    if !spec.progress {
        return Ok(ProgressBar::hidden());
    }
    let b = ProgressBar::new(spec.rows.max(1) as u64);
    b.set_style(
        ProgressStyle::with_template(
            "{msg:12} [{bar:40}] {pos}/{len} rows ({per_sec}, eta {eta})",
        )?
        .progress_chars("=> "),
    );
    Ok(b)
}

/// The account, its users with their email, enterprise id and Telegram identity, its bots.
async fn identities(pool: &PgPool, spec: &SeedSpec) -> Result<(), sqlx::Error> {
    let p = &spec.prefix;
    sqlx::query("INSERT INTO platform.accounts (id, name) VALUES ($1, $2) ON CONFLICT DO NOTHING")
        .bind(&spec.account)
        .bind(format!("seeded account {}", spec.account))
        .execute(pool)
        .await?;
    for sql in [
        "INSERT INTO platform.users (id, email, enterprise_id)
         SELECT 'u-' || $1 || '-' || i, 'user' || i || '@' || $1 || '.example.com', 'ent-' || $1 || '-' || i
           FROM generate_series(1, $2) i ON CONFLICT DO NOTHING",
        "INSERT INTO platform.channel_identities (channel_id, channel_user_id, user_id)
         SELECT 'telegram', 'tg-' || $1 || '-' || i, 'u-' || $1 || '-' || i
           FROM generate_series(1, $2) i ON CONFLICT DO NOTHING",
    ] {
        sqlx::query(sql).bind(p).bind(spec.users).execute(pool).await?;
    }
    sqlx::query(
        "INSERT INTO platform.bots (id, account_id, name)
         SELECT 'st-' || $1 || '-' || i, $2, 'bot ' || i FROM generate_series(1, $3) i ON CONFLICT DO NOTHING",
    )
    .bind(p)
    .bind(&spec.account)
    .bind(spec.bots)
    .execute(pool)
    .await?;
    Ok(())
}

/// Users 1 to 4: account owner, account member, owner and co-developer of bot 1.
async fn protections(pool: &PgPool, spec: &SeedSpec) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO platform.account_members (account_id, user_id, role)
         VALUES ($2, 'u-' || $1 || '-1', 'owner'), ($2, 'u-' || $1 || '-2', 'member') ON CONFLICT DO NOTHING",
    )
    .bind(&spec.prefix)
    .bind(&spec.account)
    .execute(pool)
    .await?;
    sqlx::query(
        "INSERT INTO platform.bot_collaborators (bot_id, user_id, role)
         VALUES ('st-' || $1 || '-1', 'u-' || $1 || '-3', 'owner'), ('st-' || $1 || '-1', 'u-' || $1 || '-4', 'co_developer')
         ON CONFLICT DO NOTHING",
    )
    .bind(&spec.prefix)
    .execute(pool)
    .await?;
    Ok(())
}

/// A store of the reference model as the seed fills it.
struct SeedStore {
    name: &'static str,
    /// Inserts $4 rows with random users (of $2) and bots (of $3) of the data set $1.
    insert: &'static str,
}

macro_rules! seed_store {
    ($name:literal, $table:literal, $column:literal, $value:literal) => {
        SeedStore {
            name: $name,
            insert: concat!(
                "INSERT INTO platform.",
                $table,
                " (bot_id, user_id, ",
                $column,
                ")
                 SELECT 'st-' || $1 || '-' || (1 + floor(random() * $3))::bigint,
                        'u-' || $1 || '-' || (1 + floor(random() * $2))::bigint, '",
                $value,
                "'
                   FROM generate_series(1, $4)"
            ),
        }
    };
}

const STORES: [SeedStore; 3] = [
    seed_store!("conversations", "conversations", "message", "hello"),
    seed_store!("sessions", "sessions", "channel_id", "telegram"),
    seed_store!("analytics", "analytics_events", "event", "message_received"),
];

/// Inserts `total` rows into one store, scattered over users and bots, in chunks.
async fn rows(
    pool: &PgPool,
    spec: &SeedSpec,
    store: &SeedStore,
    total: i64,
    bar: &ProgressBar,
) -> Result<(), sqlx::Error> {
    const CHUNK: i64 = 100_000;
    let mut done = 0;
    while done < total {
        let n = CHUNK.min(total - done);
        sqlx::query(store.insert)
            .bind(&spec.prefix)
            .bind(spec.users)
            .bind(spec.bots)
            .bind(n)
            .execute(pool)
            .await?;
        done += n;
        bar.inc(n as u64);
    }
    Ok(())
}
