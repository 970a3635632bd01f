//! The `erasure` command line (DESIGN.md section 5), but for `erasure bench`, which the
//! binary adds (`src/bin/erasure/bench/`).

mod receipt;
mod targets;

use std::{path::PathBuf, time::Duration};

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use crate::{
    callback::{sign, ssrf},
    client::Client,
    config::{Config, DbPooler, SETTINGS},
    contract::RequestId,
    domain::{AccountId, RequestStatus},
    intake::auth,
    queue::{Topology, redrive},
    secrets, seed,
    startup::{self, Role},
    store::{self, apps, requests},
    telemetry,
};

pub const ABOUT: &str =
    "Erases users' data from a conversational-bot platform, durably, and proves it did";

#[derive(Parser, Debug)]
#[command(name = "erasure", version, about = ABOUT)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the service: HTTP intake, outbox relay and workers.
    Serve {
        #[arg(long, value_enum, default_value = "all")]
        role: Role,
    },
    /// Create the database if missing and apply migrations.
    Migrate,
    /// Print the effective configuration, secrets masked.
    Config,
    /// Manage API apps.
    App {
        #[command(subcommand)]
        command: AppCommand,
    },
    /// Print a JWT for an app.
    Token {
        #[arg(long)]
        client_id: String,
        /// The client secret; prefer the environment, as arguments show in process lists.
        #[arg(long, env = "ERASURE_CLIENT_SECRET", hide_env_values = true)]
        secret: String,
        /// Lifetime in seconds (adds an `exp` claim).
        #[arg(long, default_value_t = 3600)]
        ttl: i64,
        /// A single-use token (a fresh `jti`), for apps created with `--enforce-jti`.
        #[arg(long)]
        jti: bool,
    },
    /// Fill the platform schema with demo data.
    Seed {
        #[arg(long, default_value_t = 100)]
        users: i64,
        #[arg(long, default_value_t = 3)]
        bots: i64,
        #[arg(long, default_value_t = 10_000)]
        rows: i64,
        /// Account that owns the seeded bots (created if missing).
        #[arg(long, default_value = "acct-demo")]
        account: String,
        /// Tag in every seeded id: users `u-<tag>-N`, bots `st-<tag>-N`.
        #[arg(long, default_value = "demo")]
        tag: String,
    },
    /// Submit an erase request through the HTTP API.
    Submit(SubmitArgs),
    /// Show a request's status; `--watch` follows it with a progress bar until it settles.
    Status {
        request_id: String,
        #[command(flatten)]
        client: ClientArgs,
        #[arg(long)]
        watch: bool,
    },
    /// Cancel a request in progress through the HTTP API; prints its status document.
    Cancel {
        request_id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// A request's signed receipt through the HTTP API (`erasure receipt ID`), or a receipt
    /// checked offline (`erasure receipt verify FILE --jwks FILE_OR_URL`).
    Receipt(receipt::ReceiptArgs),
    /// Move dead-lettered messages back for another attempt.
    Redrive {
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
    /// Inspect requests.
    Requests {
        #[command(subcommand)]
        command: RequestsCommand,
    },
    /// Inspect queues.
    Queue {
        #[command(subcommand)]
        command: QueueCommand,
    },
    /// The target catalog (ERASURE_TARGETS).
    Targets {
        #[command(subcommand)]
        command: TargetsCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum TargetsCommand {
    /// Check the catalog against its databases: exit 0 when it is usable, 1 otherwise.
    Check {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum AppCommand {
    /// Register an API app of an existing account; prints {"clientId", "clientSecret"}.
    Create {
        #[arg(long)]
        account: String,
        /// Scopes (repeatable).
        #[arg(long = "scope", default_values_t = vec![auth::SCOPE.to_string()])]
        scopes: Vec<String>,
        /// Register an RS256 app with this PEM public key instead of an HS256 secret.
        #[arg(long)]
        public_key: Option<PathBuf>,
        /// The app's default callback URL, for requests that name none.
        #[arg(long)]
        callback_url: Option<String>,
        /// Single-use tokens: each must carry `jti`, `iat` and `exp` (at most an hour apart).
        #[arg(long)]
        enforce_jti: bool,
    },
    /// Disable an app: its tokens are refused from then on.
    Disable { client_id: String },
    /// Give an app a new webhook secret (printed once); the previous one also signs for 24 hours.
    RotateWebhookSecret { client_id: String },
}

#[derive(Subcommand, Debug)]
pub enum RequestsCommand {
    /// List recent requests.
    List {
        /// Only requests in this state (in-progress, completed, rejected, failed, cancelled).
        #[arg(long)]
        status: Option<RequestStatus>,
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
}

#[derive(Subcommand, Debug)]
pub enum QueueCommand {
    /// Depth and consumers of every queue.
    Stats,
}

#[derive(Args, Debug)]
pub struct ClientArgs {
    /// Base URL of the intake (default: http://$ERASURE_HTTP_ADDR).
    #[arg(long)]
    pub url: Option<String>,
    /// The JWT (or set ERASURE_TOKEN).
    #[arg(long, env = "ERASURE_TOKEN", hide_env_values = true)]
    pub token: String,
}

#[derive(Args, Debug)]
pub struct SubmitArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// A user id, email, enterprise id or channel user id (repeatable); `channel:CHANNEL:ID`
    /// names a user on one channel.
    #[arg(long = "user", required = true)]
    pub users: Vec<String>,
    /// A bot id (repeatable).
    #[arg(long = "bot")]
    pub bots: Vec<String>,
    /// Erase from every bot of the app's account.
    #[arg(long)]
    pub all_bots: bool,
    #[arg(long)]
    pub idempotency_key: Option<String>,
}

/// The configuration from the environment, and logging set up from it: how every command,
/// the binary's own included, starts.
pub fn configure() -> anyhow::Result<Config> {
    let config = Config::from_env()?;
    telemetry::init_logs(config.log.format, &config.log.filter);
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
    Ok(config)
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = configure()?;
    if config.database.pooler == DbPooler::Transaction {
        store::sql::use_transaction_pooler(config.database.statement_timeout);
    }
    match cli.command {
        Command::Serve { role } => serve(config, role).await,
        Command::Migrate => {
            store::migrate_only(&config.database).await?;
            println!("migrations applied");
            Ok(())
        }
        Command::Config => {
            for ((var, value), setting) in config.describe().into_iter().zip(SETTINGS) {
                println!("{var}={value}\t# {}", setting.help);
            }
            for warning in config.warnings() {
                println!("# {warning}");
            }
            Ok(())
        }
        Command::App { command } => app(&config, command).await,
        Command::Token {
            client_id,
            secret,
            ttl,
            jti,
        } => token(&client_id, &secret, ttl, jti),
        Command::Cancel { request_id, client } => cancel(&config, &request_id, &client).await,
        Command::Seed {
            users,
            bots,
            rows,
            account,
            tag,
        } => {
            let pool = store::open(&config.database, 4).await?;
            let spec = seed::SeedSpec {
                account: account.clone(),
                prefix: tag,
                users,
                bots,
                rows,
                progress: true,
            };
            let created = seed::seed(&pool, &spec).await?;
            println!(
                "seeded account {account}: users {}..{}, bots {}..{}, {created} rows",
                spec.user_id(1),
                spec.user_id(users),
                spec.bot_id(1),
                spec.bot_id(bots)
            );
            Ok(())
        }
        Command::Submit(args) => submit(&config, args).await,
        Command::Status {
            request_id,
            client,
            watch,
        } => status(&config, &request_id, &client, watch).await,
        Command::Receipt(args) => receipt::run(&config, args).await,
        Command::Redrive { limit } => {
            let pool = store::open(&config.database, 2).await?;
            let topology = Topology::from_settings(&config.queue);
            let n = redrive::redrive(&pool, &config.queue.amqp_url, &topology, limit).await?;
            println!("redrove {n} message(s) from {}", topology.dead_queue());
            Ok(())
        }
        Command::Requests {
            command: RequestsCommand::List { status, limit },
        } => list_requests(&config, status, limit).await,
        Command::Targets {
            command: TargetsCommand::Check { json },
        } => targets::check(&config, json).await,
        Command::Queue {
            command: QueueCommand::Stats,
        } => {
            let topology = Topology::from_settings(&config.queue);
            println!("{:<40} {:>10} {:>10}", "queue", "messages", "consumers");
            for (q, messages, consumers) in
                redrive::stats(&config.queue.amqp_url, &topology).await?
            {
                println!("{q:<40} {messages:>10} {consumers:>10}");
            }
            Ok(())
        }
    }
}

/// Reads only: a database without the service's schema is an error naming the fix, never
/// created or migrated by a command an operator runs to look.
async fn list_requests(
    config: &Config,
    status: Option<RequestStatus>,
    limit: i64,
) -> anyhow::Result<()> {
    let pool = store::connect(&config.database.url, 2, config.database.statement_timeout).await?;
    let listed = requests::list(&pool, status, limit)
        .await
        .map_err(not_migrated_hint);
    pool.close().await;
    for r in listed? {
        println!("{}", serde_json::to_string(&r)?);
    }
    Ok(())
}

/// Says what to run when a read-only command finds no database or no schema.
fn not_migrated_hint(e: sqlx::Error) -> anyhow::Error {
    let code = e.as_database_error().and_then(|d| d.code());
    let hint = match code.as_deref() {
        // invalid_catalog_name
        Some("3D000") => {
            "the database of DATABASE_URL does not exist: `erasure migrate` creates it"
        }
        // undefined_table, invalid_schema_name
        Some("42P01" | "3F000") => {
            "the database of DATABASE_URL has no erasure schema: `erasure migrate` applies it"
        }
        _ => return e.into(),
    };
    anyhow::Error::new(e).context(hint)
}

async fn serve(config: Config, role: Role) -> anyhow::Result<()> {
    let running = startup::start(config, role).await?;
    let cancel = running.cancel.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutdown requested: finishing in-flight work");
        cancel.cancel();
    });
    running.wait().await;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

async fn app(config: &Config, command: AppCommand) -> anyhow::Result<()> {
    let pool = store::open(&config.database, 2).await?;
    match command {
        AppCommand::Create {
            account,
            scopes,
            public_key,
            callback_url,
            enforce_jti,
        } => {
            let account = AccountId::new(account);
            if store::platform::known_accounts(store::sql::on(&pool), &[&account])
                .await?
                .is_empty()
            {
                bail!("account {account} does not exist");
            }
            if let Some(url) = &callback_url {
                let allow = ssrf::AllowList(config.callback.allow_hosts.clone());
                ssrf::check_url(url, &allow).map_err(|e| anyhow::anyhow!("--callback-url: {e}"))?;
            }
            let client_id = format!("cs-{}", uuid::Uuid::new_v4());
            let key = &config.keys.secret_key.bytes;
            let webhook_secret = sign::new_secret();
            let webhook_sealed = secrets::seal(key, webhook_secret.as_bytes());
            let pem = match &public_key {
                Some(path) => {
                    let pem = std::fs::read_to_string(path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    jsonwebtoken::DecodingKey::from_rsa_pem(pem.as_bytes())
                        .context("not an RSA public key in PEM form")?;
                    Some(pem)
                }
                None => None,
            };
            let secret = pem.is_none().then(secrets::new_client_secret);
            let sealed = secret.as_ref().map(|s| secrets::seal(key, s.as_bytes()));
            apps::insert(
                &pool,
                &apps::NewApp {
                    client_id: &client_id,
                    account_id: &account,
                    scopes: &scopes,
                    algorithm: if pem.is_some() { "RS256" } else { "HS256" },
                    secret_sealed: sealed.as_deref(),
                    public_key_pem: pem.as_deref(),
                    webhook_secret_sealed: Some(&webhook_sealed),
                    callback_url: callback_url.as_deref(),
                    enforce_jti,
                },
            )
            .await?;
            let printed = match secret {
                Some(secret) => serde_json::json!({"clientId": client_id, "clientSecret": secret,
                                                   "webhookSecret": webhook_secret}),
                None => serde_json::json!({"clientId": client_id, "algorithm": "RS256",
                                           "webhookSecret": webhook_secret}),
            };
            println!("{printed}");
            Ok(())
        }
        AppCommand::RotateWebhookSecret { client_id } => {
            let secret = sign::new_secret();
            let sealed = secrets::seal(&config.keys.secret_key.bytes, secret.as_bytes());
            if !apps::rotate_webhook_secret(&pool, &client_id, &sealed).await? {
                bail!("no app {client_id}");
            }
            println!(
                "{}",
                serde_json::json!({"clientId": client_id, "webhookSecret": secret})
            );
            Ok(())
        }
        AppCommand::Disable { client_id } => {
            if !apps::disable(&pool, &client_id).await? {
                bail!("no app {client_id}");
            }
            println!("disabled {client_id}");
            Ok(())
        }
    }
}

/// `erasure token`: an HS256 token, single-use with `--jti`.
fn token(client_id: &str, secret: &str, ttl: i64, jti: bool) -> anyhow::Result<()> {
    let token = if jti {
        auth::mint_single_use(client_id, secret, ttl)?
    } else {
        auth::mint_hs256(client_id, secret, Some(ttl))?
    };
    println!("{token}");
    Ok(())
}

/// `erasure cancel ID`: cancels through the HTTP API and prints the status document.
async fn cancel(config: &Config, request_id: &str, client: &ClientArgs) -> anyhow::Result<()> {
    RequestId::parse(request_id).context("a request id starts with eud-")?;
    let doc = intake(config, client)
        .cancel(&client.token, request_id)
        .send()
        .await?;
    println!("{}", serde_json::to_string_pretty(&doc)?);
    Ok(())
}

/// The intake at `--url`, or at this configuration's listen address.
fn intake(config: &Config, args: &ClientArgs) -> Client {
    match &args.url {
        Some(url) => Client::new(url),
        None => Client::new(&format!("http://{}", config.http.addr)),
    }
}

async fn submit(config: &Config, args: SubmitArgs) -> anyhow::Result<()> {
    let users: Vec<serde_json::Value> = args
        .users
        .iter()
        .map(
            |u| match u.strip_prefix("channel:").and_then(|r| r.split_once(':')) {
                Some((channel, id)) => {
                    serde_json::json!({"channelId": channel, "channelUserId": id})
                }
                None => serde_json::Value::String(u.clone()),
            },
        )
        .collect();
    let body = serde_json::json!({"userIds": users, "botIds": args.bots, "RemoveDataFromAllBots": args.all_bots});
    let mut call = intake(config, &args.client).erase(&args.client.token, &body);
    if let Some(k) = &args.idempotency_key {
        call = call.idempotency_key(k);
    }
    let reply = call.reply().await?;
    println!("{}", reply.text());
    if !reply.is_success() {
        bail!("the intake answered {}", reply.status());
    }
    Ok(())
}

async fn status(
    config: &Config,
    request_id: &str,
    client: &ClientArgs,
    watch: bool,
) -> anyhow::Result<()> {
    RequestId::parse(request_id).context("a request id starts with eud-")?;
    let intake = intake(config, client);
    let fetch = || intake.status(&client.token, request_id).send();
    let mut doc = fetch().await?;
    if watch {
        let bar = ProgressBar::new(doc.progress.tasks_total.max(1) as u64);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} {msg} [{bar:40}] {pos}/{len} tasks ({elapsed})",
            )?
            .progress_chars("=> "),
        );
        while doc.status == RequestStatus::InProgress {
            bar.set_length(doc.progress.tasks_total.max(1) as u64);
            bar.set_position(doc.progress.tasks_done as u64);
            let rows = &doc.progress.rows_deleted;
            bar.set_message(format!("{} rows deleted", rows.total()));
            tokio::time::sleep(Duration::from_millis(500)).await;
            doc = fetch().await?;
        }
        bar.finish_and_clear();
    }
    println!("{}", serde_json::to_string_pretty(&doc)?);
    Ok(())
}
