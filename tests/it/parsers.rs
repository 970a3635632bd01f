//! Property tests of the two parsers that take untrusted bytes: the HTTP erase body and the
//! queue's erase message. Neither may panic; every input either parses into a value that
//! respects the limits or is refused with specific errors; valid values round-trip.

use std::collections::HashSet;

use erasure::contract::{
    EraseMessage, EraseRequest, Limits, RequestId, UserEntry, parse_erase_body,
};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

const LIMITS: Limits = Limits {
    max_user_ids: 8,
    max_bot_ids: 6,
    max_id_bytes: 24,
};

const CODES: &[&str] = &[
    "invalid_json",
    "invalid_type",
    "missing_field",
    "empty_list",
    "too_many",
    "blank_id",
    "id_too_long",
    "invalid_characters",
    "duplicate",
    "conflicting_fields",
];

/// Keys the parsers read, mixed with noise, so generated objects often hit real fields.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("userIds".to_string()),
        Just("botIds".to_string()),
        Just("RemoveDataFromAllBots".to_string()),
        Just("removeDataFromAllBots".to_string()),
        Just("channelId".to_string()),
        Just("channelUserId".to_string()),
        Just("channel_id".to_string()),
        Just("channel_user_id".to_string()),
        Just("version".to_string()),
        Just("requestId".to_string()),
        Just("accountId".to_string()),
        Just("requestedBy".to_string()),
        Just("requestedAt".to_string()),
        "[a-zA-Z_]{1,12}",
    ]
}

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        Just(json!(1)),
        Just(json!("eud-1")),
        Just(json!("2026-11-28T10:00:00Z")),
        ".{0,30}".prop_map(Value::String),
        "[a-z0-9@.-]{0,30}".prop_map(Value::String),
    ]
}

/// Arbitrary JSON, biased towards the shapes the parsers expect.
fn json_value() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(4, 64, 10, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..12).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..8)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// An identifier the parsers must accept: not blank, no control characters, within limits.
fn id() -> impl Strategy<Value = String> {
    "[^\\p{Cc}]{1,12}".prop_filter("not blank, within the byte limit", |s| {
        !s.trim().is_empty() && s.len() <= LIMITS.max_id_bytes
    })
}

fn user_entry() -> impl Strategy<Value = UserEntry> {
    prop_oneof![
        id().prop_map(UserEntry::Id),
        (id(), id()).prop_map(|(channel_id, channel_user_id)| UserEntry::Channel {
            channel_id,
            channel_user_id
        }),
    ]
}

fn unique<T: std::hash::Hash + Eq + Clone>(v: Vec<T>) -> Vec<T> {
    let mut seen = HashSet::new();
    v.into_iter().filter(|x| seen.insert(x.clone())).collect()
}

fn valid_request() -> impl Strategy<Value = EraseRequest> {
    (
        prop::collection::vec(user_entry(), 1..=LIMITS.max_user_ids).prop_map(unique),
        prop::collection::vec(id(), 1..=LIMITS.max_bot_ids).prop_map(unique),
        any::<bool>(),
    )
        .prop_map(|(user_ids, bot_ids, all)| EraseRequest {
            user_ids,
            bot_ids: if all {
                Vec::new()
            } else {
                bot_ids.into_iter().map(Into::into).collect()
            },
            remove_data_from_all_bots: all,
            callback_url: None,
        })
}

fn body_of(r: &EraseRequest, snake_case: bool) -> Value {
    let users: Vec<Value> = r
        .user_ids
        .iter()
        .map(|u| match u {
            UserEntry::Channel {
                channel_id,
                channel_user_id,
            } if snake_case => {
                json!({"channel_id": channel_id, "channel_user_id": channel_user_id})
            }
            _ => u.to_json(),
        })
        .collect();
    json!({"userIds": users, "botIds": r.bot_ids, "RemoveDataFromAllBots": r.remove_data_from_all_bots})
}

/// A parsed request honours every rule the parser is there to enforce.
fn assert_valid(r: &EraseRequest) {
    assert!(!r.user_ids.is_empty() && r.user_ids.len() <= LIMITS.max_user_ids);
    assert!(r.bot_ids.len() <= LIMITS.max_bot_ids);
    assert_eq!(r.bot_ids.is_empty(), r.remove_data_from_all_bots);
    assert_eq!(unique(r.user_ids.clone()).len(), r.user_ids.len());
    assert_eq!(unique(r.bot_ids.clone()).len(), r.bot_ids.len());
    let ok = |s: &str| {
        !s.trim().is_empty() && s.len() <= LIMITS.max_id_bytes && !s.chars().any(char::is_control)
    };
    for u in &r.user_ids {
        match u {
            UserEntry::Id(s) => assert!(ok(s), "{s:?}"),
            UserEntry::Channel {
                channel_id,
                channel_user_id,
            } => assert!(ok(channel_id) && ok(channel_user_id)),
        }
    }
    assert!(r.bot_ids.iter().all(|b| ok(b.as_str())));
}

fn assert_specific(errors: &[erasure::contract::FieldError]) {
    assert!(!errors.is_empty(), "a refusal names at least one problem");
    for e in errors {
        assert!(CODES.contains(&e.code.as_str()), "unknown code {}", e.code);
        assert!(!e.message.is_empty());
        // Only whole-body problems lack a field.
        if e.field.is_none() {
            assert!(
                matches!(e.code.as_str(), "invalid_json" | "invalid_type"),
                "{e:?}"
            );
        }
    }
}

fn message_strategy() -> impl Strategy<Value = EraseMessage> {
    (
        valid_request(),
        "[A-Za-z0-9_.:-]{1,40}",
        id(),
        id(),
        prop::option::of(0i64..4_000_000_000),
    )
        .prop_map(
            |(request, rid, account_id, requested_by, at)| EraseMessage {
                request_id: RequestId::parse(&format!("eud-{rid}")).unwrap(),
                account_id: account_id.into(),
                request,
                requested_by,
                requested_at: at.map(|s| chrono::DateTime::from_timestamp(s, 0).unwrap()),
            },
        )
}

#[test]
fn two_spellings_with_different_values_are_refused() {
    let codes = |body: Value| {
        parse_erase_body(&serde_json::to_vec(&body).unwrap(), &LIMITS)
            .unwrap_err()
            .into_iter()
            .map(|e| (e.code, e.field.unwrap_or_default()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        codes(json!({"userIds": ["u-1"], "botIds": ["st-1"],
                     "RemoveDataFromAllBots": false, "removeDataFromAllBots": true})),
        [(
            "conflicting_fields".to_string(),
            "removeDataFromAllBots".to_string()
        )]
    );
    assert_eq!(
        codes(
            json!({"userIds": [{"channelId": "tg", "channel_id": "wa", "channelUserId": "5"}],
                     "botIds": ["st-1"]})
        ),
        [(
            "conflicting_fields".to_string(),
            "userIds[0].channel_id".to_string()
        )]
    );
    // The same value under both spellings is not a conflict.
    let r = parse_erase_body(
        br#"{"userIds":["u-1"],"RemoveDataFromAllBots":true,"removeDataFromAllBots":true}"#,
        &LIMITS,
    )
    .unwrap();
    assert!(r.remove_data_from_all_bots);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn the_body_parser_never_panics_on_bytes(data in prop::collection::vec(any::<u8>(), 0..256)) {
        match parse_erase_body(&data, &LIMITS) {
            Ok(r) => assert_valid(&r),
            Err(e) => assert_specific(&e),
        }
    }

    #[test]
    fn the_body_parser_accepts_only_valid_json_shapes(v in json_value()) {
        let data = serde_json::to_vec(&v).unwrap();
        match parse_erase_body(&data, &LIMITS) {
            Ok(r) => assert_valid(&r),
            Err(e) => {
                assert_specific(&e);
                prop_assert!(e.iter().all(|e| e.code != "invalid_json"), "serialized JSON is JSON");
            }
        }
    }

    #[test]
    fn the_body_parser_handles_bodies_with_mostly_right_fields(
        users in prop::collection::vec(json_value(), 0..12),
        bots in json_value(),
        all in scalar(),
    ) {
        let v = json!({"userIds": users, "botIds": bots, "RemoveDataFromAllBots": all});
        match parse_erase_body(&serde_json::to_vec(&v).unwrap(), &LIMITS) {
            Ok(r) => assert_valid(&r),
            Err(e) => assert_specific(&e),
        }
    }

    #[test]
    fn valid_requests_round_trip(r in valid_request(), snake in any::<bool>(), noise in json_value()) {
        let mut body = body_of(&r, snake);
        // Unknown fields are ignored (documented decision).
        body["clientExtra"] = noise;
        let parsed = parse_erase_body(&serde_json::to_vec(&body).unwrap(), &LIMITS);
        prop_assert_eq!(parsed, Ok(r));
    }

    #[test]
    fn a_duplicate_entry_is_always_refused(r in valid_request(), pick in any::<prop::sample::Index>()) {
        let mut r = r;
        let dup = r.user_ids[pick.index(r.user_ids.len())].clone();
        r.user_ids.push(dup);
        let e = parse_erase_body(&serde_json::to_vec(&body_of(&r, false)).unwrap(), &LIMITS)
            .unwrap_err();
        prop_assert!(e.iter().any(|e| e.code == "duplicate" || e.code == "too_many"));
    }

    #[test]
    fn the_message_parser_never_panics_on_bytes(data in prop::collection::vec(any::<u8>(), 0..256)) {
        if let Err(e) = EraseMessage::parse(&data, 1 << 20, &LIMITS) {
            prop_assert!(!e.reason.is_empty());
        }
    }

    #[test]
    fn the_message_parser_gives_a_reason_for_every_refusal(v in json_value()) {
        let data = serde_json::to_vec(&v).unwrap();
        match EraseMessage::parse(&data, 1 << 20, &LIMITS) {
            Ok(m) => {
                assert_valid(&m.request);
                prop_assert!(m.request_id.as_str().starts_with("eud-"));
            }
            Err(e) => {
                prop_assert!(!e.reason.is_empty());
                // A usable request id is reported back so the failure can be recorded.
                if let Some(id) = &e.request_id {
                    prop_assert_eq!(v.get("requestId").and_then(Value::as_str), Some(id.as_str()));
                }
            }
        }
    }

    #[test]
    fn valid_messages_round_trip(m in message_strategy()) {
        prop_assert_eq!(EraseMessage::parse(&m.to_json(), 1 << 20, &LIMITS).unwrap(), m);
    }

    #[test]
    fn message_refusals_never_quote_user_identifiers(
        m in message_strategy(),
        secret in "zq[a-z0-9]{10}@example\\.com",
        bad in 0usize..4,
    ) {
        let mut v: Value = serde_json::from_slice(&m.to_json()).unwrap();
        let users = v["userIds"].as_array_mut().unwrap();
        match bad {
            0 => { users.push(json!(secret)); users.push(json!(secret)); }
            1 => users.push(json!(format!("{secret}\u{0}"))),
            2 => users.push(json!({"channelId": secret, "channelUserId": 7})),
            _ => users.push(json!(format!("{secret}{}", "x".repeat(LIMITS.max_id_bytes)))),
        }
        let e = EraseMessage::parse(&serde_json::to_vec(&v).unwrap(), 1 << 20, &LIMITS).unwrap_err();
        prop_assert_eq!(e.request_id.as_ref(), Some(&m.request_id));
        prop_assert!(!e.reason.contains(&secret), "{}", e.reason);
    }
}
