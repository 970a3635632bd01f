//! jti: accepted calls per second at the intake for an app with single-use tokens
//! (`--enforce-jti`: one indexed insert into `erasure.used_jtis` per call) against an app
//! without, each call with its own fresh token, as fast as `--small-concurrency` calls in
//! flight allow. Three rounds, alternating which app goes first; the figures are the medians.
//! No workers: this is the intake alone.

use erasure::intake::auth;
use serde_json::json;

use super::{Bench, Figures, SMALL_ACCOUNT, percentile, register_app, small::submit, step};

const ROUNDS: usize = 3;

pub async fn run(bench: &Bench<'_>, figures: &mut Figures) -> anyhow::Result<()> {
    let n = bench.opts.small_requests;
    let plain = app(bench, false).await?;
    let enforced = app(bench, true).await?;
    let (mut plain_rates, mut enforced_rates) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let order = if round % 2 == 0 {
            [(&plain, false), (&enforced, true)]
        } else {
            [(&enforced, true), (&plain, false)]
        };
        for (app, single_use) in order {
            step(&format!(
                "jti: round {}, {}",
                round + 1,
                if single_use {
                    "enforce-jti app"
                } else {
                    "plain app"
                }
            ));
            let per_s = accepted_per_s(bench, app, single_use, n).await?;
            let mode = if single_use { "enforced" } else { "plain" };
            figures.set(format!("jti_{mode}_round{}_per_s", round + 1), per_s);
            if single_use {
                enforced_rates.push(per_s);
            } else {
                plain_rates.push(per_s);
            }
        }
    }
    plain_rates.sort_by(f64::total_cmp);
    enforced_rates.sort_by(f64::total_cmp);
    let (p, e) = (
        percentile(&plain_rates, 0.5),
        percentile(&enforced_rates, 0.5),
    );
    figures.set("jti_plain_accepted_per_s", p);
    figures.set("jti_enforced_accepted_per_s", e);
    figures.set("jti_drop_pct", (1.0 - e / p) * 100.0);
    Ok(())
}

/// An app of the small account: (client id, secret).
async fn app(bench: &Bench<'_>, enforce_jti: bool) -> anyhow::Result<(String, String)> {
    register_app(bench, SMALL_ACCOUNT, enforce_jti).await
}

/// `n` calls, each with a token minted beforehand (single-use ones with a fresh `jti`, plain
/// ones alike but without): what differs is only the intake's check.
async fn accepted_per_s(
    bench: &Bench<'_>,
    (client_id, secret): &(String, String),
    single_use: bool,
    n: i64,
) -> anyhow::Result<f64> {
    let mut tokens = Vec::with_capacity(n as usize);
    for _ in 0..n {
        tokens.push(if single_use {
            auth::mint_single_use(client_id, secret, 600)?
        } else {
            auth::mint_hs256(client_id, secret, Some(600))?
        });
    }
    let bodies = (0..n)
        .map(|i| json!({"userIds": [format!("u-s-{}", 5 + i)], "botIds": ["st-s-1", "st-s-2"]}))
        .collect();
    let accepted = submit(bench, &tokens, bodies, None, bench.opts.small_concurrency).await?;
    anyhow::ensure!(accepted.refused == 0, "{} calls refused", accepted.refused);
    Ok(accepted.per_s)
}
