//! `erasure receipt ID` fetches a request's receipt through the HTTP API; `erasure receipt
//! verify FILE --jwks FILE_OR_URL [--subject ID]` checks one offline (given the key set as a
//! file), prints its claims, and says whether an identifier is among its subjects. An error
//! (exit 1) when the signature does not verify, or the subject is not in it.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};

use super::{ClientArgs, intake};
use crate::{
    client::Client,
    config::Config,
    contract::{RequestId, UserEntry},
    domain::UserRef,
    intake::JWKS_PATH,
    receipt,
};

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct ReceiptArgs {
    #[command(subcommand)]
    command: Option<ReceiptCommand>,
    /// The request whose receipt to print (a compact JWS, as the API answers it).
    #[arg(required = true)]
    request_id: Option<String>,
    /// Base URL of the intake (default: http://$ERASURE_HTTP_ADDR).
    #[arg(long)]
    url: Option<String>,
    /// The JWT (or set ERASURE_TOKEN); `verify` needs none.
    #[arg(long, env = "ERASURE_TOKEN", hide_env_values = true, required = true)]
    token: Option<String>,
}

#[derive(Subcommand, Debug)]
enum ReceiptCommand {
    /// Check a receipt's signature offline, print its claims, and look for a subject.
    Verify {
        /// The receipt: a file holding the compact JWS.
        file: PathBuf,
        /// The key set: a file, or the URL of the service's /.well-known/jwks.json (or of
        /// the service itself).
        #[arg(long)]
        jwks: String,
        /// An identifier as it was given in `userIds`; `channel:CHANNEL:ID` (as `erasure
        /// submit` takes it) or `{"channelId": …, "channelUserId": …}` names a channel pair.
        #[arg(long)]
        subject: Option<String>,
    },
}

pub async fn run(config: &Config, args: ReceiptArgs) -> anyhow::Result<()> {
    match (args.command, args.request_id) {
        (
            Some(ReceiptCommand::Verify {
                file,
                jwks,
                subject,
            }),
            _,
        ) => verify(&file, &jwks, subject.as_deref()).await,
        (None, Some(id)) => {
            RequestId::parse(&id).context("a request id starts with eud-")?;
            let client = ClientArgs {
                url: args.url,
                token: args.token.context("--token or ERASURE_TOKEN is needed")?,
            };
            let jws = intake(config, &client)
                .receipt(&client.token, &id)
                .text()
                .await?;
            println!("{jws}");
            Ok(())
        }
        (None, None) => bail!("name a request id, or `verify FILE --jwks FILE_OR_URL`"),
    }
}

async fn verify(file: &PathBuf, jwks: &str, subject: Option<&str>) -> anyhow::Result<()> {
    let compact = std::fs::read_to_string(file)
        .with_context(|| format!("reading the receipt {}", file.display()))?;
    let keys = key_set(jwks).await?;
    let verified = receipt::verify(&compact, &keys)?;
    println!("signature verified: EdDSA, key {}", verified.kid);
    println!("{}", serde_json::to_string_pretty(&verified.payload)?);
    let Some(subject) = subject else {
        return Ok(());
    };
    let claims = verified
        .claims
        .context("the claims are not those of a receipt: no subjects to look in")?;
    match claims.outcome_of(&entry(subject)) {
        Some(outcome) => {
            println!("subject: in the receipt, outcome {outcome}");
            Ok(())
        }
        None => bail!("subject: not in this receipt"),
    }
}

/// The key set's text: fetched when `source` is a URL, read from the file otherwise.
async fn key_set(source: &str) -> anyhow::Result<String> {
    if !(source.starts_with("http://") || source.starts_with("https://")) {
        return std::fs::read_to_string(source)
            .with_context(|| format!("reading the key set {source}"));
    }
    let base = source.strip_suffix(JWKS_PATH).unwrap_or(source);
    let set = Client::new(base).jwks().send().await?;
    Ok(set.to_string())
}

/// A subject as the caller gave it, as the receipt hashed it: a channel pair as its
/// canonical JSON text.
fn entry(subject: &str) -> UserRef {
    #[derive(serde::Deserialize)]
    struct Pair {
        #[serde(alias = "channel_id")]
        #[serde(rename = "channelId")]
        channel: String,
        #[serde(alias = "channel_user_id")]
        #[serde(rename = "channelUserId")]
        user: String,
    }
    let pair = match subject
        .strip_prefix("channel:")
        .and_then(|r| r.split_once(':'))
    {
        Some((channel, user)) => Some((channel.to_string(), user.to_string())),
        None => serde_json::from_str::<Pair>(subject)
            .ok()
            .map(|p| (p.channel, p.user)),
    };
    match pair {
        Some((channel_id, channel_user_id)) => UserEntry::Channel {
            channel_id,
            channel_user_id,
        }
        .user_ref(),
        None => UserRef::new(subject),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_channel_subject_is_hashed_as_the_canonical_pair() {
        let canonical = r#"{"channelId":"telegram","channelUserId":"555"}"#;
        assert_eq!(entry("channel:telegram:555").as_str(), canonical);
        assert_eq!(
            entry(r#"{"channelUserId": "555", "channelId": "telegram"}"#).as_str(),
            canonical
        );
        assert_eq!(
            entry(r#"{"channel_id":"telegram","channel_user_id":"555"}"#).as_str(),
            canonical
        );
        assert_eq!(entry("jane@example.com").as_str(), "jane@example.com");
    }
}
