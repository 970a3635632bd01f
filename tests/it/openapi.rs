//! docs/openapi.yaml describes the running intake: every documented operation is called for
//! real, and every answer's status code is documented and its JSON body matches the documented
//! schema (a small validator for the subset of JSON Schema the document uses).

use std::{collections::BTreeSet, path::Path, time::Duration};

use erasure::startup::Role;
use serde_json::{Value, json};

use crate::helpers::TestEnv;

fn document() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    serde_norway::from_str(&text).expect("docs/openapi.yaml is YAML")
}

/// Follows a local `$ref` (`#/components/...`).
fn resolve<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
    match v["$ref"].as_str() {
        Some(r) => {
            let pointer = r.strip_prefix('#').expect("local references only");
            let target = doc
                .pointer(pointer)
                .unwrap_or_else(|| panic!("{r} does not resolve"));
            resolve(doc, target)
        }
        None => v,
    }
}

/// Validates `value` against `schema`; returns every violation, with its JSON path.
fn validate(doc: &Value, schema: &Value, value: &Value, at: &str) -> Vec<String> {
    let schema = resolve(doc, schema);
    let mut errors = Vec::new();
    let mut fail = |m: String| errors.push(format!("{at}: {m}"));
    if value.is_null() {
        if schema["nullable"] != true {
            fail("null is not allowed".into());
        }
        return errors;
    }
    if let Some(variants) = schema["oneOf"].as_array() {
        let matching = variants
            .iter()
            .filter(|s| validate(doc, s, value, at).is_empty())
            .count();
        if matching != 1 {
            fail(format!("matches {matching} of the oneOf variants, not 1"));
        }
        return errors;
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(value)
    {
        fail(format!("{value} is not one of {allowed:?}"));
    }
    let typed = match schema["type"].as_str() {
        None => true,
        Some("object") => value.is_object(),
        Some("array") => value.is_array(),
        Some("string") => value.is_string(),
        Some("integer") => value.is_i64() || value.is_u64(),
        Some("number") => value.is_number(),
        Some("boolean") => value.is_boolean(),
        Some(other) => panic!("type {other} is not supported by this checker"),
    };
    if !typed {
        fail(format!("{value} is not of type {}", schema["type"]));
        return errors;
    }
    if let Some(s) = value.as_str() {
        if let Some(p) = schema["pattern"].as_str() {
            let prefix = p
                .strip_prefix('^')
                .filter(|r| r.chars().all(|c| c.is_alphanumeric() || c == '-'))
                .unwrap_or_else(|| panic!("pattern {p} is not supported by this checker"));
            if !s.starts_with(prefix) {
                fail(format!("{s:?} does not match {p}"));
            }
        }
        if schema["format"] == "date-time" && chrono::DateTime::parse_from_rfc3339(s).is_err() {
            fail(format!("{s:?} is not a date-time"));
        }
        let len = s.chars().count() as u64;
        if schema["minLength"].as_u64().is_some_and(|m| len < m) {
            fail(format!("{s:?} is shorter than minLength"));
        }
        if schema["maxLength"].as_u64().is_some_and(|m| len > m) {
            fail(format!("{s:?} is longer than maxLength"));
        }
    }
    if let (Some(n), Some(min)) = (value.as_f64(), schema["minimum"].as_f64())
        && n < min
    {
        fail(format!("{n} is below the minimum {min}"));
    }
    if let Some(items) = value.as_array() {
        if schema["minItems"]
            .as_u64()
            .is_some_and(|m| (items.len() as u64) < m)
        {
            fail(format!("fewer than {} items", schema["minItems"]));
        }
        if schema["maxItems"]
            .as_u64()
            .is_some_and(|m| (items.len() as u64) > m)
        {
            fail(format!("more than {} items", schema["maxItems"]));
        }
        for (i, item) in items.iter().enumerate() {
            errors.extend(validate(doc, &schema["items"], item, &format!("{at}[{i}]")));
        }
    }
    if let Some(object) = value.as_object() {
        for required in schema["required"].as_array().into_iter().flatten() {
            let name = required.as_str().unwrap();
            if !object.contains_key(name) {
                errors.push(format!("{at}: required property {name} is missing"));
            }
        }
        let declared = schema["properties"].as_object();
        for (name, v) in object {
            let at = format!("{at}.{name}");
            match declared.and_then(|d| d.get(name)) {
                Some(s) => errors.extend(validate(doc, s, v, &at)),
                None if schema["additionalProperties"].is_object() => {
                    errors.extend(validate(doc, &schema["additionalProperties"], v, &at));
                }
                None => {}
            }
        }
    }
    errors
}

/// The documented path template matching a concrete path.
fn template<'a>(doc: &'a Value, path: &str) -> &'a str {
    let segments: Vec<&str> = path.split('/').collect();
    doc["paths"]
        .as_object()
        .unwrap()
        .keys()
        .find(|t| {
            let ts: Vec<&str> = t.split('/').collect();
            ts.len() == segments.len()
                && ts
                    .iter()
                    .zip(&segments)
                    .all(|(t, s)| t == s || (t.starts_with('{') && t.ends_with('}')))
        })
        .unwrap_or_else(|| panic!("{path} is not documented"))
}

/// One real call.
struct Call<'a> {
    method: &'a str,
    path: String,
    headers: Vec<(&'a str, String)>,
    body: Option<Vec<u8>>,
    expect: u16,
}

fn call<'a>(method: &'a str, path: &str, expect: u16) -> Call<'a> {
    Call {
        method,
        path: path.to_string(),
        headers: Vec::new(),
        body: None,
        expect,
    }
}

impl<'a> Call<'a> {
    fn auth(mut self, token: &str) -> Self {
        self.headers.push(("auth", token.to_string()));
        self
    }
    fn header(mut self, name: &'a str, value: &str) -> Self {
        self.headers.push((name, value.to_string()));
        self
    }
    fn json(mut self, body: Value) -> Self {
        self.body = Some(body.to_string().into_bytes());
        self
    }
    fn raw(mut self, body: &[u8]) -> Self {
        self.body = Some(body.to_vec());
        self
    }
}

/// Makes the call, checks it against the document, and returns the JSON body (if any).
async fn check(
    doc: &Value,
    base: &str,
    covered: &mut BTreeSet<(String, String)>,
    c: Call<'_>,
) -> Value {
    let method = reqwest::Method::from_bytes(c.method.as_bytes()).unwrap();
    let mut req = reqwest::Client::new().request(method, format!("{base}{}", c.path));
    for (k, v) in &c.headers {
        req = req.header(*k, v);
    }
    if let Some(b) = c.body {
        req = req.header("content-type", "application/json").body(b);
    }
    let resp = req.send().await.unwrap();
    let code = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let text = resp.text().await.unwrap();
    let what = format!("{} {}", c.method, c.path);
    assert_eq!(code, c.expect, "{what}: {text}");

    let path = template(doc, &c.path);
    let verb = c.method.to_lowercase();
    let operation = &doc["paths"][path][&verb];
    assert!(
        operation.is_object(),
        "{} {path} is not documented",
        c.method
    );
    covered.insert((path.to_string(), verb));
    let response = resolve(doc, &operation["responses"][code.to_string()]);
    assert!(
        response.is_object(),
        "{what} answered {code}, which is not documented"
    );
    let content = &response["content"];
    if let Some(schema) = content["application/json"].get("schema") {
        assert!(
            content_type.starts_with("application/json"),
            "{what}: {content_type}"
        );
        let body: Value = serde_json::from_str(&text).unwrap();
        let errors = validate(doc, schema, &body, "$");
        assert!(errors.is_empty(), "{what} {code}: {errors:#?}\n{body}");
        body
    } else if content.get("application/jose").is_some() {
        assert!(
            content_type.starts_with("application/jose"),
            "{what}: {content_type}"
        );
        assert_eq!(text.split('.').count(), 3, "{what}: a compact JWS");
        Value::String(text)
    } else {
        assert!(
            content.get("text/plain").is_some(),
            "{what} {code}: documented content"
        );
        assert!(
            content_type.starts_with("text/plain"),
            "{what}: {content_type}"
        );
        Value::Null
    }
}

#[test]
fn the_document_is_openapi_3_and_every_reference_resolves() {
    let doc = document();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.0"));
    fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
        match v {
            Value::Object(m) => {
                if let Some(r) = m.get("$ref").and_then(Value::as_str) {
                    out.push(r);
                }
                m.values().for_each(|v| refs(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }
    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(all.len() > 10);
    for r in all {
        assert!(
            doc.pointer(r.trim_start_matches('#')).is_some(),
            "{r} resolves"
        );
    }
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["authHeader"]["in"], "header");
    assert_eq!(schemes["authHeader"]["name"], "auth");
    assert_eq!(schemes["bearer"]["scheme"], "bearer");
    // The validator itself refuses what it should.
    let accepted = json!({"$ref": "#/components/schemas/Accepted"});
    assert!(
        validate(
            &doc,
            &accepted,
            &json!({"requestId": "eud-1", "status": "in-progress"}),
            "$"
        )
        .is_empty()
    );
    assert!(
        !validate(
            &doc,
            &accepted,
            &json!({"requestId": "x-1", "status": "in-progress"}),
            "$"
        )
        .is_empty()
    );
    assert!(!validate(&doc, &accepted, &json!({"status": "in-progress"}), "$").is_empty());
    assert!(
        !validate(
            &doc,
            &accepted,
            &json!({"requestId": "eud-1", "status": "done"}),
            "$"
        )
        .is_empty()
    );
}

/// The receipt and its keys, in the platform of the test below: a completed request's receipt
/// waits for the verification (`ERASURE_VERIFY_AFTER`, 5 minutes here), while one whose every
/// user is rejected (here the owner of a bot) has its receipt at once.
async fn check_receipts(
    doc: &Value,
    base: &str,
    covered: &mut BTreeSet<(String, String)>,
    env: &TestEnv,
    completed: &str,
) {
    let bot = "st-acct-api-2";
    env.user("u-api-owner", None, None).await;
    sqlx::query(
        "INSERT INTO platform.bot_collaborators (bot_id, user_id, role) VALUES ($1, 'u-api-owner', 'owner')",
    )
    .bind(bot)
    .execute(&env.pool)
    .await
    .unwrap();
    let (_, _, token) = env.app("acct-api", &["delete_users_data"]).await;
    let (_, _, no_scope) = env.app("acct-api", &["read_only"]).await;
    let (token, no_scope) = (token.as_str(), no_scope.as_str());
    let erase = "/api/public/bot/eraseUsersData";
    let rejected = check(
        doc,
        base,
        covered,
        call("POST", erase, 202)
            .auth(token)
            .json(json!({"userIds": ["u-api-owner"], "botIds": [bot]})),
    )
    .await;
    let rejected = rejected["requestId"].as_str().unwrap().to_string();
    assert_eq!(
        env.wait_settled(&rejected, Duration::from_secs(30)).await,
        "rejected"
    );
    let receipts = [
        call("GET", &format!("{erase}/{rejected}/receipt"), 200).auth(token),
        call("GET", &format!("{erase}/{completed}/receipt"), 409).auth(token),
        call(
            "GET",
            &format!("{erase}/eud-{}/receipt", uuid::Uuid::new_v4()),
            404,
        )
        .auth(token),
        call("GET", &format!("{erase}/{completed}/receipt"), 401),
        call("GET", &format!("{erase}/{completed}/receipt"), 403).auth(no_scope),
        call("GET", "/.well-known/jwks.json", 200),
    ];
    for c in receipts {
        check(doc, base, covered, c).await;
    }
}

/// The cancel route: 409 for a settled request, 404 unknown, 401 without a token, and 200 for
/// a cancelled one (cancelling twice answers 200).
async fn check_cancel(
    doc: &Value,
    base: &str,
    covered: &mut BTreeSet<(String, String)>,
    env: &TestEnv,
    token: &str,
    settled: &str,
) {
    let cancel = |id: &str| format!("/api/public/bot/eraseUsersData/{id}/cancel");
    let unknown = format!("eud-{}", uuid::Uuid::new_v4());
    for c in [
        call("POST", &cancel(settled), 409).auth(token),
        call("POST", &cancel(&unknown), 404).auth(token),
        call("POST", &cancel(settled), 401),
    ] {
        check(doc, base, covered, c).await;
    }
    sqlx::query("UPDATE erasure.requests SET status = 'cancelled' WHERE request_id = $1")
        .bind(settled)
        .execute(&env.pool)
        .await
        .unwrap();
    let doc_ = check(
        doc,
        base,
        covered,
        call("POST", &cancel(settled), 200).auth(token),
    )
    .await;
    assert_eq!(doc_["status"], "cancelled");
}

#[tokio::test]
async fn every_documented_operation_answers_as_documented() {
    let doc = document();
    let env = TestEnv::with_vars(&[("ERASURE_MAX_BODY_BYTES", "4096")]).await;
    let bots = env.account("acct-api", 2).await;
    let foreign = env.account("acct-other", 1).await;
    env.user("u-api-1", None, None).await;
    env.user("u-api-2", None, None).await;
    env.channel_identity("telegram", "5550001", "u-api-2").await;
    env.rows("u-api-1", &bots[0], 3).await;
    let (_, _, token) = env.app("acct-api", &["delete_users_data"]).await;
    let (_, _, no_scope) = env.app("acct-api", &["read_only"]).await;
    let svc = env.start(Role::All).await;
    let base = format!("http://{}", svc.http_addr);
    let mut covered = BTreeSet::new();
    let erase = "/api/public/bot/eraseUsersData";
    let body = json!({"userIds": ["u-api-1", {"channelId": "telegram", "channelUserId": "5550001"}],
                      "botIds": bots});

    let first = check(
        &doc,
        &base,
        &mut covered,
        call("DELETE", erase, 202)
            .auth(&token)
            .header("Idempotency-Key", "k-1")
            .json(body.clone()),
    )
    .await;
    let id = first["requestId"].as_str().unwrap().to_string();
    let cases = [
        call("POST", erase, 202)
            .auth(&token)
            .json(json!({"userIds": ["u-api-1"], "RemoveDataFromAllBots": true})),
        call("DELETE", erase, 202)
            .header("Authorization", &format!("Bearer {token}"))
            .json(json!({"userIds": ["nobody@example.com"], "botIds": [bots[1]]})),
        call("DELETE", erase, 422)
            .auth(&token)
            .header("Idempotency-Key", "k-1")
            .json(json!({"userIds": ["u-api-2"], "botIds": [bots[0]]})),
        call("DELETE", erase, 400)
            .auth(&token)
            .json(json!({"userIds": [], "botIds": [bots[0]]})),
        call("POST", erase, 400).auth(&token).raw(b"{not json"),
        call("DELETE", erase, 400)
            .auth(&token)
            .json(json!({"userIds": ["u-api-1"], "botIds": ["st-nowhere"]})),
        call("DELETE", erase, 401).json(body.clone()),
        call("POST", erase, 401)
            .auth("not-a-jwt")
            .json(body.clone()),
        call("DELETE", erase, 403)
            .auth(&no_scope)
            .json(body.clone()),
        call("DELETE", erase, 403)
            .auth(&token)
            .json(json!({"userIds": ["u-api-1"], "botIds": [foreign[0]]})),
        call("DELETE", erase, 413)
            .auth(&token)
            .json(json!({"userIds": ["x".repeat(5000)], "botIds": [bots[0]]})),
        call("GET", &format!("{erase}/status/{id}"), 200).auth(&token),
        call(
            "GET",
            &format!("{erase}/status/eud-{}", uuid::Uuid::new_v4()),
            404,
        )
        .auth(&token),
        call("GET", &format!("{erase}/status/{id}"), 401),
        call("GET", &format!("{erase}/status/{id}"), 403).auth(&no_scope),
        call("GET", "/healthz", 200),
        call("GET", "/metrics", 200),
    ];
    for c in cases {
        check(&doc, &base, &mut covered, c).await;
    }
    // Readiness needs the consumers attached, which may take a moment after start.
    for _ in 0..100 {
        let r = reqwest::get(format!("{base}/readyz")).await.unwrap();
        if r.status() == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ready = check(&doc, &base, &mut covered, call("GET", "/readyz", 200)).await;
    assert_eq!(ready["ready"], true);

    // A settled request's document too: outcomes, completion time, rows.
    assert_eq!(
        env.wait_settled(&id, Duration::from_secs(30)).await,
        "completed"
    );
    check_receipts(&doc, &base, &mut covered, &env, &id).await;
    let settled = check(
        &doc,
        &base,
        &mut covered,
        call("GET", &format!("{erase}/status/{id}"), 200).auth(&token),
    )
    .await;
    assert!(settled["completedOn"].is_string());
    assert_eq!(settled["response"][1]["userId"]["channelId"], "telegram");
    check_cancel(&doc, &base, &mut covered, &env, &token, &id).await;

    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, ops)| {
            ops.as_object()
                .unwrap()
                .keys()
                .map(move |verb| (path.clone(), verb.clone()))
        })
        .collect();
    assert_eq!(covered, documented, "every documented operation was called");
    svc.shutdown().await;
}
