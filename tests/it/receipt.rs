//! Receipts (DESIGN.md section 12): a settled, verified request's receipt is a compact JWS
//! that an independent JOSE implementation verifies against the service's JWKS (Python's
//! jwcrypto, on OpenSSL's Ed25519: nothing in common with the Rust signer), that names no
//! one, that `erasure receipt verify` checks offline, that any change breaks, and that still
//! verifies after the key that signed it is rotated out.

use std::{path::PathBuf, time::Duration};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use erasure::{
    catalog::Catalog,
    domain::UserRef,
    receipt::{Claims, subject_hash},
    startup::{Role, Running},
};
use serde_json::{Value, json};

use crate::helpers::{Api, TestEnv, eventually};

fn fixture(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
        .display()
        .to_string()
}

/// The entries of the request, as the caller gives them, and every identifier they name or
/// resolve to: none may appear in a receipt.
const ENTRIES: &str = r#"["jane.rcpt@example.com",
    {"channelId": "telegram-rcpt", "channelUserId": "5550177"},
    "u-rcpt-owner", "nobody.rcpt@example.com"]"#;
const IDENTIFIERS: &[&str] = &[
    "jane.rcpt@example.com",
    "u-rcpt-jane",
    "telegram-rcpt",
    "5550177",
    "u-rcpt-tg",
    "u-rcpt-owner",
    "nobody.rcpt@example.com",
];

/// Two bots of `acct-rcpt`: Jane (by email) and a Telegram user are erasable, the owner of
/// the first bot is protected, one entry is nobody. Returns the bots and a token.
async fn platform(env: &TestEnv) -> (Vec<String>, String) {
    let bots = env.account("acct-rcpt", 2).await;
    env.user("u-rcpt-jane", Some("jane.rcpt@example.com"), None)
        .await;
    env.user("u-rcpt-tg", None, None).await;
    env.channel_identity("telegram-rcpt", "5550177", "u-rcpt-tg")
        .await;
    env.user("u-rcpt-owner", None, None).await;
    sqlx::query(
        "INSERT INTO platform.bot_collaborators (bot_id, user_id, role) VALUES ($1, 'u-rcpt-owner', 'owner')",
    )
    .bind(&bots[0])
    .execute(&env.pool)
    .await
    .unwrap();
    for u in ["u-rcpt-jane", "u-rcpt-tg", "u-rcpt-owner"] {
        for b in &bots {
            env.rows(u, b, 3).await;
        }
    }
    let (_, _, token) = env.app("acct-rcpt", &["delete_users_data"]).await;
    (bots, token)
}

/// Settings of a service that verifies at once and signs with the first test key.
fn proving(key: &str) -> Vec<(&'static str, String)> {
    vec![
        ("ERASURE_VERIFY_AFTER", "0".into()),
        ("ERASURE_VERIFY_SWEEP_SECONDS", "1".into()),
        ("ERASURE_RECEIPT_ISSUER", "erasure-test".into()),
        ("ERASURE_RECEIPT_KEY_FILE", fixture(key)),
    ]
}

async fn env_with(vars: &[(&'static str, String)]) -> TestEnv {
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    TestEnv::with_vars(&vars).await
}

async fn submit(env: &TestEnv, api: &Api, token: &str, body: Value) -> String {
    let (code, answer) = api.erase(token, &body).await;
    assert_eq!(code, 202, "{answer}");
    let id = answer["requestId"].as_str().unwrap().to_string();
    env.wait_settled(&id, Duration::from_secs(30)).await;
    id
}

/// The receipt, once the service answers 200 (409 `not_verified` until then).
async fn receipt_when_ready(svc: &Running, token: &str, id: &str) -> String {
    let client = erasure::client::Client::new(&format!("http://{}", svc.http_addr));
    eventually(
        Duration::from_secs(30),
        Duration::from_millis(100),
        async || {
            let reply = client.receipt(token, id).reply().await.unwrap();
            if reply.status() == 200 {
                return Some(reply.text().to_string());
            }
            assert_eq!(reply.status(), 409, "{}", reply.text());
            assert_eq!(reply.json()["errors"][0]["code"], "not_verified");
            None
        },
        || format!("no receipt for {id}"),
    )
    .await
}

async fn jwks(svc: &Running) -> Value {
    erasure::client::Client::new(&format!("http://{}", svc.http_addr))
        .jwks()
        .send()
        .await
        .unwrap()
}

/// Verifies `compact` with Python's jwcrypto against `jwks`, and checks that the key's
/// RFC 7638 thumbprint, computed by jwcrypto, is the header's `kid`. The payload, or why not.
async fn jwcrypto(compact: &str, jwks: &Value) -> Result<Value, String> {
    const SCRIPT: &str = r#"
import json, sys
from jwcrypto import jwk, jws
keys = jwk.JWKSet.from_json(sys.argv[1])
token = jws.JWS()
token.deserialize(sys.argv[2])
kid = token.jose_header["kid"]
key = keys.get_key(kid)
if key is None:
    sys.exit("no key " + kid)
if key.thumbprint() != kid:
    sys.exit("the kid is not the key's RFC 7638 thumbprint")
token.verify(key, alg="EdDSA")
sys.stdout.write(token.payload.decode())
"#;
    let out = tokio::process::Command::new("python3")
        .args(["-c", SCRIPT, &jwks.to_string(), compact])
        .output()
        .await
        .expect("python3 runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("No module named 'jwcrypto'"),
        "install jwcrypto (scripts/services.sh --tools does): {stderr}"
    );
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).expect("the payload is JSON"))
    } else {
        Err(stderr.into_owned())
    }
}

/// Runs the `erasure` binary: (exit 0, stdout, stderr).
async fn cli(args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_erasure"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("ERASURE_LOG", "warn")
        .output()
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A scratch directory, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("erasure-receipt-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
    fn write(&self, name: &str, text: &str) -> String {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `erasure receipt verify` of `compact` against `jwks` (a file or URL), with `--subject`.
async fn verify_cli(compact: &str, jwks: &str, subject: Option<&str>) -> (bool, String, String) {
    let scratch = Scratch::new();
    let file = scratch.write("receipt.jws", compact);
    let mut args = vec!["receipt", "verify", file.as_str(), "--jwks", jwks];
    if let Some(s) = subject {
        args.extend(["--subject", s]);
    }
    cli(&args).await
}

fn part(compact: &str, i: usize) -> Value {
    let segment = compact.split('.').nth(i).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(segment).unwrap()).unwrap()
}

fn with_part(compact: &str, i: usize, value: &Value) -> String {
    let mut parts: Vec<String> = compact.split('.').map(str::to_string).collect();
    parts[i] = URL_SAFE_NO_PAD.encode(value.to_string());
    parts.join(".")
}

/// A running service of `env` and a request of `entries` (all of them when `None`) on both
/// bots, completed and verified, with its receipt.
struct Proved {
    svc: Running,
    api: Api,
    token: String,
    bots: Vec<String>,
    id: String,
    compact: String,
}

async fn proved(env: &TestEnv, entries: Option<Value>) -> Proved {
    let (bots, token) = platform(env).await;
    let svc = env.start(Role::All).await;
    let api = Api::new(&svc);
    let entries = entries.unwrap_or_else(|| serde_json::from_str(ENTRIES).unwrap());
    let id = submit(
        env,
        &api,
        &token,
        json!({"userIds": entries, "botIds": bots}),
    )
    .await;
    let compact = receipt_when_ready(&svc, &token, &id).await;
    Proved {
        svc,
        api,
        token,
        bots,
        id,
        compact,
    }
}

#[tokio::test]
async fn a_verified_receipt_states_the_erasure_names_no_one_and_verifies_independently() {
    let env = env_with(&proving("receipt-key-1.pem")).await;
    let p = proved(&env, None).await;
    let (svc, token, bots, id, compact) = (&p.svc, &p.token, &p.bots, &p.id, &p.compact);
    let keys = jwks(svc).await;

    // jwcrypto verifies it, with the key whose thumbprint is the header's kid.
    let payload = jwcrypto(compact, &keys).await.expect("jwcrypto verifies");
    let header = part(compact, 0);
    assert_eq!(header["alg"], "EdDSA");
    assert_eq!(header["kid"], keys["keys"][0]["kid"]);
    assert_eq!(keys["keys"][0]["kty"], "OKP");
    assert_eq!(keys["keys"][0]["crv"], "Ed25519");

    let claims: Claims = serde_json::from_value(payload.clone()).unwrap();
    let doc = p.api.status_doc(token, id).await;
    assert_eq!(claims.iss, "erasure-test");
    assert_eq!(&claims.request_id, id);
    assert_eq!(claims.account_id, "acct-rcpt");
    assert_eq!(claims.status, "completed");
    assert_eq!(claims.created_on, doc.created_on);
    assert_eq!(claims.completed_on, doc.completed_on);
    assert_eq!(
        claims.verified_on,
        Some(doc.verification.unwrap().verified_on)
    );
    assert_eq!(&claims.bots, bots);
    assert_eq!(claims.catalog, Catalog::built_in().digest);
    // Jane and the Telegram user, 3 rows each per store and bot.
    for store in ["conversations", "sessions", "analytics"] {
        for bot in bots {
            assert_eq!(
                payload["rows"][store][bot],
                json!({"deleted": 6, "anonymized": 0}),
                "{store} in {bot}"
            );
        }
    }
    let outcomes: Vec<&str> = claims.subjects.iter().map(|s| s.outcome.as_str()).collect();
    assert_eq!(outcomes, ["SUCCESS", "SUCCESS", "REJECTED", "NOT_FOUND"]);
    let channel = UserRef::new(r#"{"channelId":"telegram-rcpt","channelUserId":"5550177"}"#);
    assert_eq!(
        claims.subjects[1].hash,
        subject_hash(&claims.salt, &channel)
    );
    assert_eq!(
        claims.outcome_of(&UserRef::new("jane.rcpt@example.com")),
        Some("SUCCESS")
    );

    // Nobody is named, in the token or in what it decodes to.
    let decoded = format!("{}{}", part(compact, 0), payload).to_lowercase();
    for identifier in IDENTIFIERS {
        let needle = identifier.to_lowercase();
        assert!(
            !decoded.contains(&needle) && !compact.to_lowercase().contains(&needle),
            "the receipt names {identifier}"
        );
    }

    // The same receipt every time, over HTTP and through `erasure receipt ID`.
    assert_eq!(&receipt_when_ready(svc, token, id).await, compact);
    let base = format!("http://{}", svc.http_addr);
    let (ok, out, err) = cli(&["receipt", id, "--url", &base, "--token", token]).await;
    assert!(ok, "{err}");
    assert_eq!(out.trim(), compact);
    p.svc.shutdown().await;
}

#[tokio::test]
async fn erasure_receipt_verify_checks_offline_and_finds_a_subject_or_not() {
    let env = env_with(&proving("receipt-key-1.pem")).await;
    let Proved {
        svc, id, compact, ..
    } = proved(&env, None).await;
    let scratch = Scratch::new();
    let jwks_file = scratch.write("jwks.json", &jwks(&svc).await.to_string());
    svc.shutdown().await;

    // Offline from here: the key set is a file.
    let (ok, out, err) = verify_cli(&compact, &jwks_file, None).await;
    assert!(ok, "{err}");
    assert!(out.starts_with("signature verified: EdDSA, key "), "{out}");
    assert!(out.contains(&format!("\"requestId\": \"{id}\"")), "{out}");
    for (subject, outcome) in [
        ("jane.rcpt@example.com", "SUCCESS"),
        ("channel:telegram-rcpt:5550177", "SUCCESS"),
        (
            r#"{"channelId": "telegram-rcpt", "channelUserId": "5550177"}"#,
            "SUCCESS",
        ),
        ("u-rcpt-owner", "REJECTED"),
        ("nobody.rcpt@example.com", "NOT_FOUND"),
    ] {
        let (ok, out, err) = verify_cli(&compact, &jwks_file, Some(subject)).await;
        assert!(ok, "{subject}: {err}");
        assert!(
            out.contains(&format!("subject: in the receipt, outcome {outcome}")),
            "{subject}: {out}"
        );
    }
    // The platform user id behind the email was not what the caller gave: not a subject.
    for absent in [
        "u-rcpt-jane",
        "JANE.RCPT@example.com",
        "someone@example.com",
    ] {
        let (ok, _, err) = verify_cli(&compact, &jwks_file, Some(absent)).await;
        assert!(!ok, "{absent} is not a subject");
        assert!(err.contains("subject: not in this receipt"), "{err}");
    }
}

#[tokio::test]
async fn any_change_to_a_receipt_breaks_its_signature() {
    let env = env_with(&proving("receipt-key-1.pem")).await;
    let Proved {
        svc, bots, compact, ..
    } = proved(&env, Some(json!(["jane.rcpt@example.com"]))).await;
    let keys = jwks(&svc).await;
    let scratch = Scratch::new();
    let jwks_file = scratch.write("jwks.json", &keys.to_string());

    let mut payload = part(&compact, 1);
    payload["rows"]["conversations"][&bots[0]]["deleted"] = json!(1_000_000);
    let mut outcome = part(&compact, 1);
    outcome["subjects"][0]["outcome"] = json!("NOT_FOUND");
    let mut typ = part(&compact, 0);
    typ["typ"] = json!("JOSE");
    let mut none = part(&compact, 0);
    none["alg"] = json!("none");
    let signature = compact.rsplit('.').next().unwrap();
    let flipped: String = signature
        .char_indices()
        .map(|(i, c)| match (i, c) {
            (20, 'A') => 'B',
            (20, _) => 'A',
            _ => c,
        })
        .collect();
    let cases = [
        ("payload: rows", with_part(&compact, 1, &payload)),
        ("payload: outcome", with_part(&compact, 1, &outcome)),
        ("header: typ", with_part(&compact, 0, &typ)),
        (
            "header: alg none, no signature",
            format!(
                "{}.{}.",
                URL_SAFE_NO_PAD.encode(none.to_string()),
                compact.split('.').nth(1).unwrap()
            ),
        ),
        (
            "signature",
            format!("{}{flipped}", &compact[..compact.len() - signature.len()]),
        ),
    ];
    assert!(jwcrypto(&compact, &keys).await.is_ok());
    for (what, tampered) in cases {
        assert_ne!(tampered, compact, "{what}");
        let (ok, out, _) = verify_cli(&tampered, &jwks_file, None).await;
        assert!(!ok, "{what}: erasure receipt verify accepted it:\n{out}");
        assert!(
            jwcrypto(&tampered, &keys).await.is_err(),
            "{what}: jwcrypto accepted it"
        );
    }
    svc.shutdown().await;
}

#[tokio::test]
async fn a_receipt_signed_before_a_key_rotation_still_verifies_with_the_jwks() {
    let mut env = env_with(&proving("receipt-key-1.pem")).await;
    let Proved {
        svc,
        token,
        id,
        compact: before,
        ..
    } = proved(&env, Some(json!(["jane.rcpt@example.com"]))).await;
    let old_kid = part(&before, 0)["kid"].clone();
    svc.shutdown().await;

    // Rotated: a new key signs, the old one is kept as its public half only.
    env.vars.insert(
        "ERASURE_RECEIPT_KEY_FILE".into(),
        fixture("receipt-key-2.pem"),
    );
    env.vars.insert(
        "ERASURE_RECEIPT_PREVIOUS_KEY_FILES".into(),
        fixture("receipt-key-1.pub.pem"),
    );
    let svc = env.start(Role::All).await;
    let keys = jwks(&svc).await;
    let kids: Vec<&Value> = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| &k["kid"])
        .collect();
    assert_eq!(kids.len(), 2);
    assert_eq!(
        kids[1], &old_kid,
        "the old key is still published, after the new"
    );
    let url = format!("http://{}/.well-known/jwks.json", svc.http_addr);
    let (ok, out, err) = verify_cli(&before, &url, Some("jane.rcpt@example.com")).await;
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!("key {}", old_kid.as_str().unwrap())),
        "{out}"
    );
    assert!(jwcrypto(&before, &keys).await.is_ok());

    let after = receipt_when_ready(&svc, &token, &id).await;
    assert_eq!(part(&after, 0)["kid"], *kids[0], "the new key signs now");
    assert_eq!(part(&after, 1), part(&before, 1), "the same claims");
    assert!(jwcrypto(&after, &keys).await.is_ok());

    // Without the old key in the set, the old receipt does not verify.
    let only_new = json!({"keys": [keys["keys"][0]]});
    assert!(jwcrypto(&before, &only_new).await.is_err());
    let scratch = Scratch::new();
    let file = scratch.write("jwks.json", &only_new.to_string());
    assert!(!verify_cli(&before, &file, None).await.0);
    svc.shutdown().await;
}

#[tokio::test]
async fn no_receipt_before_verification_nor_for_another_account_and_a_rejection_has_one_at_once() {
    let env = TestEnv::with_vars(&[("ERASURE_VERIFY_AFTER", "3600")]).await;
    let (bots, token) = platform(&env).await;
    env.account("acct-rcpt-other", 1).await;
    let (_, _, other) = env.app("acct-rcpt-other", &["delete_users_data"]).await;
    let svc = env.start(Role::All).await;
    let api = Api::new(&svc);
    let client = erasure::client::Client::new(&api.base);
    let code_of = async |token: &str, id: &str| {
        let reply = client.receipt(token, id).reply().await.unwrap();
        (reply.status(), reply.json()["errors"][0]["code"].clone())
    };

    let completed = submit(
        &env,
        &api,
        &token,
        json!({"userIds": ["jane.rcpt@example.com"], "botIds": bots}),
    )
    .await;
    assert_eq!(
        code_of(&token, &completed).await,
        (409, json!("not_verified")),
        "completed, verified only in an hour"
    );
    // Requests in progress and failed have none either (recorded here as they would be).
    for (id, status) in [
        ("eud-rcpt-running", "in-progress"),
        ("eud-rcpt-failed", "failed"),
    ] {
        sqlx::query(
            "INSERT INTO erasure.requests (request_id, account_id, requested_by, source, status, completed_at)
             VALUES ($1, 'acct-rcpt', 'test', 'queue', $2, CASE WHEN $2 = 'failed' THEN now() END)",
        )
        .bind(id)
        .bind(status)
        .execute(&env.pool)
        .await
        .unwrap();
        assert_eq!(
            code_of(&token, id).await,
            (409, json!("not_verified")),
            "{status}"
        );
    }

    // Every user rejected: settled at once, its receipt at once, without verifiedOn.
    let rejected = submit(
        &env,
        &api,
        &token,
        json!({"userIds": ["u-rcpt-owner"], "botIds": [bots[0]]}),
    )
    .await;
    assert_eq!(env.request_status(&rejected).await.unwrap(), "rejected");
    let compact = client.receipt(&token, &rejected).text().await.unwrap();
    let payload = jwcrypto(&compact, &jwks(&svc).await).await.unwrap();
    assert_eq!(payload["status"], "rejected");
    assert!(payload.get("verifiedOn").is_none(), "{payload}");
    assert_eq!(payload["subjects"][0]["outcome"], "REJECTED");
    assert_eq!(payload["rows"], json!({}));

    // Another account's request is unknown to this app, receipt or status.
    for id in [&completed, &rejected] {
        assert_eq!(code_of(&other, id).await, (404, json!("not_found")));
        assert_eq!(api.status(&other, id).await.0, 404);
    }
    assert_eq!(
        code_of(&token, &format!("eud-{}", uuid::Uuid::new_v4()))
            .await
            .0,
        404
    );
    assert_eq!(code_of("not-a-jwt", &completed).await.0, 401);
    svc.shutdown().await;
}
