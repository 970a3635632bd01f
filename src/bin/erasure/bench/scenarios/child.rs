//! child: a chat platform's own tables through a target catalog — conversations, each with
//! `MESSAGES` messages, each with `ATTACHMENTS` attachments, under foreign keys without
//! `ON DELETE CASCADE` — erased through the service (children first, in bounded batches)
//! against plain SQL deleting the same rows on an identical copy (attachments, then messages,
//! then conversations).

use std::time::Instant;

use sqlx::PgPool;

use super::super::{Options, prepare::sql};
use super::{Bench, Figures, Workers, app_token, erase_and_wait, step, warm_up};

pub const CHILD_ACCOUNT: &str = "acct-bench-child";
const SCHEMA: &str = "bench_chat";
const FLOOR: &str = "bench_chat_floor";
const MESSAGES: i64 = 3;
const ATTACHMENTS: i64 = 2;
/// Erased users: `u-c-5` onwards (the seed protects users 1 to 4).
const FIRST_USER: i64 = 5;

/// The catalog the workers of this scenario erase with.
fn catalog() -> String {
    format!(
        r#"[[stores]]
name = "conversations"
table = "{SCHEMA}.conversations"
user_column = "user_id"
bot_column = "bot_id"

[[stores]]
name = "messages"
table = "{SCHEMA}.messages"
parent = {{ store = "conversations", column = "conversation_id", references = "id" }}

[[stores]]
name = "attachments"
table = "{SCHEMA}.attachments"
parent = {{ store = "messages", column = "message_id", references = "id" }}
"#
    )
}

/// The users of the account: erased and others, in bots `st-c-1..`; their conversations in
/// random order, so that a user's rows are scattered as a busy platform's are.
pub async fn seed(bench_pool: &PgPool, opts: &Options) -> anyhow::Result<()> {
    let users = FIRST_USER - 1 + opts.child_users + opts.child_others;
    erasure::seed::seed(
        bench_pool,
        &erasure::seed::SeedSpec {
            account: CHILD_ACCOUNT.into(),
            prefix: "c".into(),
            users,
            bots: opts.child_bots,
            rows: 0,
            progress: false,
        },
    )
    .await?;
    let mut statements = vec![tables(SCHEMA), tables(FLOOR)];
    statements.push(format!(
        "INSERT INTO {SCHEMA}.conversations (bot_id, user_id)
         SELECT 'st-c-' || b, 'u-c-' || u FROM generate_series(1, {users}) u,
                generate_series(1, {bots}) b, generate_series(1, {per}) k ORDER BY random();
         INSERT INTO {SCHEMA}.messages (conversation_id)
         SELECT id FROM {SCHEMA}.conversations, generate_series(1, {MESSAGES}) ORDER BY random();
         INSERT INTO {SCHEMA}.attachments (message_id)
         SELECT id FROM {SCHEMA}.messages, generate_series(1, {ATTACHMENTS}) ORDER BY random();",
        bots = opts.child_bots,
        per = opts.child_conversations,
    ));
    // The floor's copy: the same rows in the same physical order, the same keys and indexes.
    for t in ["conversations", "messages", "attachments"] {
        statements.push(format!(
            "INSERT INTO {FLOOR}.{t} OVERRIDING SYSTEM VALUE SELECT * FROM {SCHEMA}.{t} ORDER BY ctid"
        ));
    }
    for schema in [SCHEMA, FLOOR] {
        statements.push(indexes(schema));
        statements.push(format!(
            "VACUUM ANALYZE {schema}.conversations, {schema}.messages, {schema}.attachments"
        ));
    }
    for statement in &statements {
        sql(bench_pool, statement).await?;
    }
    Ok(())
}

fn tables(schema: &str) -> String {
    format!(
        "CREATE SCHEMA {schema};
         CREATE TABLE {schema}.conversations (
             id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
             bot_id text NOT NULL, user_id text NOT NULL, started_at timestamptz NOT NULL DEFAULT now());
         CREATE TABLE {schema}.messages (
             id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
             conversation_id bigint NOT NULL REFERENCES {schema}.conversations (id),
             body text NOT NULL DEFAULT 'hello, how can I help?');
         CREATE TABLE {schema}.attachments (
             id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
             message_id bigint NOT NULL REFERENCES {schema}.messages (id),
             name text NOT NULL DEFAULT 'photo.jpg');"
    )
}

fn indexes(schema: &str) -> String {
    format!(
        "CREATE INDEX ON {schema}.conversations (user_id, bot_id);
         CREATE INDEX ON {schema}.messages (conversation_id);
         CREATE INDEX ON {schema}.attachments (message_id);"
    )
}

/// The same footing for both sides (see `floor::settle`): vacuumed, checkpointed, the users'
/// rows read once.
async fn settle(pool: &PgPool, schema: &str, users: &[String]) -> anyhow::Result<()> {
    sql(
        pool,
        &format!("VACUUM {schema}.conversations, {schema}.messages, {schema}.attachments"),
    )
    .await?;
    sql(pool, "CHECKPOINT").await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM {schema}.conversations c
           JOIN {schema}.messages m ON m.conversation_id = c.id
           JOIN {schema}.attachments a ON a.message_id = m.id
          WHERE c.user_id = ANY($1)"
    )))
    .bind(users)
    .fetch_one(pool)
    .await?;
    Ok(())
}

/// Plain SQL: the attachments of the users' messages, then their messages, then their
/// conversations; the rows deleted and the seconds it took.
async fn floor(pool: &PgPool, users: &[String]) -> anyhow::Result<(u64, f64)> {
    let started = Instant::now();
    let mut tx = pool.begin().await?;
    let mut rows = 0;
    for statement in [
        format!(
            "DELETE FROM {FLOOR}.attachments WHERE message_id IN
               (SELECT m.id FROM {FLOOR}.messages m JOIN {FLOOR}.conversations c ON c.id = m.conversation_id
                 WHERE c.user_id = ANY($1))"
        ),
        format!(
            "DELETE FROM {FLOOR}.messages WHERE conversation_id IN
               (SELECT id FROM {FLOOR}.conversations WHERE user_id = ANY($1))"
        ),
        format!("DELETE FROM {FLOOR}.conversations WHERE user_id = ANY($1)"),
    ] {
        rows += sqlx::query(sqlx::AssertSqlSafe(statement))
            .bind(users)
            .execute(&mut *tx)
            .await?
            .rows_affected();
    }
    tx.commit().await?;
    Ok((rows, started.elapsed().as_secs_f64()))
}

pub async fn run(bench: &Bench<'_>, figures: &mut Figures) -> anyhow::Result<()> {
    let opts = bench.opts;
    let users: Vec<String> = (FIRST_USER..FIRST_USER + opts.child_users)
        .map(|u| format!("u-c-{u}"))
        .collect();
    let dir = std::env::temp_dir().join(format!(
        "erasure-{}child",
        opts.queue_prefix.replace('.', "-")
    ));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("targets.toml");
    std::fs::write(&path, catalog())?;
    let token = app_token(bench, CHILD_ACCOUNT).await?;
    step("child: plain-SQL floor");
    settle(&bench.pool, FLOOR, &users).await?;
    let (floor_rows, floor_secs) = floor(&bench.pool, &users).await?;
    let extra = [("ERASURE_TARGETS".to_string(), path.display().to_string())];
    let workers = Workers::spawn(opts, opts.workers, &extra).await?;
    step("child: through the service");
    warm_up(bench, &token, opts.workers).await?;
    settle(&bench.pool, SCHEMA, &users).await?;
    let run = erase_and_wait(bench, &token, &users, None).await?;
    workers.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    run.against_floor(figures, "child", users.len(), (floor_rows, floor_secs));
    Ok(())
}
