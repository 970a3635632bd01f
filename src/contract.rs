//! Wire types shared by every side of the service: the HTTP request and answers, the queue
//! messages, and their validation. Parsing happens here, once; past this module, identifiers
//! are trusted values.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use crate::domain::RequestId;
use crate::domain::{AccountId, BotId, RequestStatus, UserRef, UserStatus};

/// The routing key of erase requests on the `erasure` exchange (contract).
pub const ERASE_ROUTING_KEY: &str = "erase.request";
/// The routing key of per-(request, bot) task messages (internal).
pub const TASK_ROUTING_KEY: &str = "erase.task";
/// The routing key of dead letters (internal).
pub const DEAD_ROUTING_KEY: &str = "erase.dead";
/// Version of the erase message this service understands.
pub const MESSAGE_VERSION: u64 = 1;

/// Limits applied to every erase request, from configuration.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_user_ids: usize,
    pub max_bot_ids: usize,
    pub max_id_bytes: usize,
}

impl Limits {
    pub fn from_config(c: &crate::config::Config) -> Self {
        Self {
            max_user_ids: c.http.max_user_ids,
            max_bot_ids: c.http.max_bot_ids,
            max_id_bytes: c.http.max_id_bytes,
        }
    }
}

/// One `userIds` entry as the caller gave it. Never logged.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum UserEntry {
    /// A platform user id, an email, an enterprise id or a bare channel user id.
    Id(String),
    /// A user's id on one channel.
    Channel {
        channel_id: String,
        channel_user_id: String,
    },
}

impl UserEntry {
    /// The identifier as stored in `user_ref` and shown back in the status document: the
    /// string itself, or the channel pair's canonical JSON text.
    pub fn user_ref(&self) -> UserRef {
        match self {
            Self::Id(s) => UserRef::new(s.clone()),
            Self::Channel { .. } => UserRef::new(self.to_json().to_string()),
        }
    }

    /// The entry as the status document shows it back: the string, or the channel pair as
    /// an object.
    pub fn shown(user_ref: &UserRef, is_channel: bool) -> Value {
        if is_channel {
            serde_json::from_str(user_ref.as_str())
                .unwrap_or_else(|_| Value::String(user_ref.to_string()))
        } else {
            Value::String(user_ref.to_string())
        }
    }
    pub fn to_json(&self) -> Value {
        match self {
            Self::Id(s) => Value::String(s.clone()),
            Self::Channel {
                channel_id,
                channel_user_id,
            } => {
                serde_json::json!({"channelId": channel_id, "channelUserId": channel_user_id})
            }
        }
    }
}

/// A validated erase request (HTTP body or the user-facing part of a queue message).
#[derive(Clone, Debug, PartialEq)]
pub struct EraseRequest {
    pub user_ids: Vec<UserEntry>,
    pub bot_ids: Vec<BotId>,
    pub remove_data_from_all_bots: bool,
    /// Where to tell the caller the request settled (HTTP `callbackUrl`, or the app's
    /// default); checked by the intake against its SSRF rules. Never in a queue message.
    pub callback_url: Option<String>,
}

/// Longest `callbackUrl`, in bytes (DESIGN.md section 10).
pub const MAX_CALLBACK_URL_BYTES: usize = 2048;

/// One problem with the input, as returned in `{"errors": [...]}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    pub code: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub field: Option<String>,
}

impl FieldError {
    pub fn new(code: &str, message: impl Into<String>, field: Option<String>) -> Self {
        Self {
            code: code.to_string(),
            message: message.into(),
            field,
        }
    }
}

/// The error body of every 4xx/5xx answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    pub errors: Vec<FieldError>,
}

/// `202 Accepted` answer of the erase endpoint.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Accepted {
    pub request_id: RequestId,
    pub status: RequestStatus,
}

/// Parses and validates an HTTP erase body. Unknown fields are ignored, for compatibility with
/// clients of the platform's API that send more than this service reads; every field it does
/// read is checked strictly.
pub fn parse_erase_body(body: &[u8], limits: &Limits) -> Result<EraseRequest, Vec<FieldError>> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        vec![FieldError::new(
            "invalid_json",
            format!("body is not valid JSON: {}", json_error_text(&e)),
            None,
        )]
    })?;
    let Value::Object(obj) = value else {
        return Err(vec![FieldError::new(
            "invalid_type",
            "body must be a JSON object",
            None,
        )]);
    };
    let mut errors = Vec::new();
    let remove_all = read_bool(
        &obj,
        &["RemoveDataFromAllBots", "removeDataFromAllBots"],
        &mut errors,
    )
    .unwrap_or_default();
    let user_ids = read_user_ids(obj.get("userIds"), limits, &mut errors);
    let bot_ids = read_bot_ids(obj.get("botIds"), remove_all, limits, &mut errors);
    let callback_url = match obj.get("callbackUrl") {
        None | Some(Value::Null) => None,
        Some(Value::String(url)) if !url.is_empty() && url.len() <= MAX_CALLBACK_URL_BYTES => {
            Some(url.clone())
        }
        Some(_) => {
            errors.push(FieldError::new(
                "invalid_callback_url",
                format!("callbackUrl must be a URL of 1 to {MAX_CALLBACK_URL_BYTES} bytes"),
                Some("callbackUrl".into()),
            ));
            None
        }
    };
    if errors.is_empty() {
        Ok(EraseRequest {
            user_ids,
            bot_ids,
            remove_data_from_all_bots: remove_all,
            callback_url,
        })
    } else {
        Err(errors)
    }
}

fn json_error_text(e: &serde_json::Error) -> String {
    // serde_json's messages quote no input, only positions and expectations.
    format!("{} at line {} column {}", classify(e), e.line(), e.column())
}

fn classify(e: &serde_json::Error) -> &'static str {
    use serde_json::error::Category;
    match e.classify() {
        Category::Eof => "unexpected end of input",
        Category::Syntax => "syntax error",
        Category::Data => "invalid data",
        Category::Io => "read error",
    }
}

/// The value of a field that has several accepted spellings. Two spellings with different
/// values are refused rather than one silently preferred: another reader of the same body
/// might prefer the other, and for `RemoveDataFromAllBots` that decides how much is erased.
fn spelled<'a>(
    obj: &'a Map<String, Value>,
    names: &[&'a str],
    path: &str,
    errors: &mut Vec<FieldError>,
) -> Result<Option<(&'a str, &'a Value)>, ()> {
    let mut found: Option<(&str, &Value)> = None;
    for name in names {
        match (obj.get(*name), found) {
            (None | Some(Value::Null), _) => {}
            (Some(v), None) => found = Some((name, v)),
            (Some(v), Some((first, seen))) if v != seen => {
                errors.push(FieldError::new(
                    "conflicting_fields",
                    format!("{first} and {name} are both given, with different values"),
                    Some(format!("{path}{name}")),
                ));
                return Err(());
            }
            (Some(_), Some(_)) => {}
        }
    }
    Ok(found)
}

fn read_bool(
    obj: &Map<String, Value>,
    names: &[&str],
    errors: &mut Vec<FieldError>,
) -> Option<bool> {
    match spelled(obj, names, "", errors).ok()? {
        None => None,
        Some((_, Value::Bool(b))) => Some(*b),
        Some((name, _)) => {
            errors.push(FieldError::new(
                "invalid_type",
                "must be true or false",
                Some(name.to_string()),
            ));
            None
        }
    }
}

fn check_id(s: &str, field: String, limits: &Limits, errors: &mut Vec<FieldError>) -> bool {
    if s.trim().is_empty() {
        errors.push(FieldError::new(
            "blank_id",
            "must not be empty or blank",
            Some(field),
        ));
        false
    } else if s.len() > limits.max_id_bytes {
        errors.push(FieldError::new(
            "id_too_long",
            format!("must be at most {} bytes", limits.max_id_bytes),
            Some(field),
        ));
        false
    } else if s.chars().any(char::is_control) {
        errors.push(FieldError::new(
            "invalid_characters",
            "must not contain control characters or NUL",
            Some(field),
        ));
        false
    } else {
        true
    }
}

fn read_user_ids(
    v: Option<&Value>,
    limits: &Limits,
    errors: &mut Vec<FieldError>,
) -> Vec<UserEntry> {
    let field = "userIds";
    let Some(items) = array_field(
        v,
        field,
        Some("userIds is required"),
        "must be an array",
        errors,
    ) else {
        return Vec::new();
    };
    let list = List {
        field,
        max: limits.max_user_ids,
        empty: "must name at least one user",
    };
    list.read(
        items,
        errors,
        |item, path, errors| match item {
            Value::String(s) => check_id(s, path, limits, errors).then(|| UserEntry::Id(s.clone())),
            Value::Object(o) => read_channel_entry(o, &path, limits, errors),
            _ => {
                errors.push(FieldError::new(
                    "invalid_type",
                    "must be a string or an object with channelId and channelUserId",
                    Some(path),
                ));
                None
            }
        },
        |_| "repeats an earlier entry".to_string(),
    )
}

/// The rules `userIds` and `botIds` share: not empty, not too long, every item valid, no
/// item twice.
struct List<'a> {
    field: &'a str,
    max: usize,
    empty: &'a str,
}

impl List<'_> {
    fn read<T: Clone + Eq + std::hash::Hash>(
        &self,
        items: &[Value],
        errors: &mut Vec<FieldError>,
        mut item: impl FnMut(&Value, String, &mut Vec<FieldError>) -> Option<T>,
        repeated: impl Fn(&T) -> String,
    ) -> Vec<T> {
        if items.is_empty() {
            errors.push(FieldError::new(
                "empty_list",
                self.empty,
                Some(self.field.into()),
            ));
            return Vec::new();
        }
        if !self.fits(items, errors) {
            return Vec::new();
        }
        let mut out = Vec::with_capacity(items.len());
        let mut seen = HashSet::new();
        for (i, value) in items.iter().enumerate() {
            let path = format!("{}[{i}]", self.field);
            if let Some(x) = item(value, path.clone(), errors) {
                if seen.insert(x.clone()) {
                    out.push(x);
                } else {
                    errors.push(FieldError::new("duplicate", repeated(&x), Some(path)));
                }
            }
        }
        out
    }

    fn fits(&self, items: &[Value], errors: &mut Vec<FieldError>) -> bool {
        let fits = items.len() <= self.max;
        if !fits {
            errors.push(FieldError::new(
                "too_many",
                format!("must have at most {} entries", self.max),
                Some(self.field.into()),
            ));
        }
        fits
    }
}

fn read_channel_entry(
    o: &Map<String, Value>,
    path: &str,
    limits: &Limits,
    errors: &mut Vec<FieldError>,
) -> Option<UserEntry> {
    let mut part = |names: [&str; 2]| -> Option<String> {
        let found = spelled(o, &names, &format!("{path}."), errors).ok()?;
        match found {
            None => {
                errors.push(FieldError::new(
                    "missing_field",
                    format!("{} is required", names[0]),
                    Some(format!("{path}.{}", names[0])),
                ));
                None
            }
            Some((n, Value::String(s))) => {
                check_id(s, format!("{path}.{n}"), limits, errors).then(|| s.clone())
            }
            Some((n, _)) => {
                errors.push(FieldError::new(
                    "invalid_type",
                    "must be a string",
                    Some(format!("{path}.{n}")),
                ));
                None
            }
        }
    };
    let channel_id = part(["channelId", "channel_id"]);
    let channel_user_id = part(["channelUserId", "channel_user_id"]);
    Some(UserEntry::Channel {
        channel_id: channel_id?,
        channel_user_id: channel_user_id?,
    })
}

/// The array a field holds, or `None` once the reason is recorded: not an array
/// (`invalid_type`, `not_array`), or absent or null when `required` says why it may not be
/// (`missing_field`); absent or null otherwise reads as an empty array.
fn array_field<'v>(
    v: Option<&'v Value>,
    field: &str,
    required: Option<&str>,
    not_array: &str,
    errors: &mut Vec<FieldError>,
) -> Option<&'v [Value]> {
    let (code, message) = match (v, required) {
        (Some(Value::Array(items)), _) => return Some(items),
        (None | Some(Value::Null), None) => return Some(&[]),
        (None | Some(Value::Null), Some(why)) => ("missing_field", why),
        (Some(_), _) => ("invalid_type", not_array),
    };
    errors.push(FieldError::new(code, message, Some(field.into())));
    None
}

fn read_bot_ids(
    v: Option<&Value>,
    remove_all: bool,
    limits: &Limits,
    errors: &mut Vec<FieldError>,
) -> Vec<BotId> {
    let field = "botIds";
    let Some(items) = array_field(v, field, None, "must be an array of bot ids", errors) else {
        return Vec::new();
    };
    let list = List {
        field,
        max: limits.max_bot_ids,
        empty: "must name at least one bot unless RemoveDataFromAllBots is true",
    };
    if remove_all {
        // botIds is ignored when erasing from every bot, but a malformed list is still refused.
        list.fits(items, errors);
        return Vec::new();
    }
    list.read(
        items,
        errors,
        |item, path, errors| match item {
            Value::String(s) => check_id(s, path, limits, errors).then(|| BotId::new(s.clone())),
            _ => {
                errors.push(FieldError::new(
                    "invalid_type",
                    "must be a string",
                    Some(path),
                ));
                None
            }
        },
        |bot| format!("repeats bot {bot}"),
    )
}

/// The erase message on the queue (contract, version 1).
#[derive(Clone, Debug, PartialEq)]
pub struct EraseMessage {
    pub request_id: RequestId,
    pub account_id: AccountId,
    pub request: EraseRequest,
    pub requested_by: String,
    pub requested_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// Why a queue message was refused, and what it can be recorded under: `request_id` when the
/// message named a usable one, `account_id` when it named one at all. Both are read even from a
/// message refused for its size or shape, so that a producer still finds its request `failed`,
/// not missing.
#[derive(Debug)]
pub struct MessageError {
    pub request_id: Option<RequestId>,
    pub account_id: Option<AccountId>,
    pub reason: String,
}

/// The two fields a refused message is recorded under; every other field is skipped without
/// being allocated, so reading them costs little even from an oversize message.
#[derive(Deserialize, Default)]
struct Probe {
    #[serde(rename = "requestId")]
    request_id: Option<Value>,
    #[serde(rename = "accountId")]
    account_id: Option<Value>,
}

impl MessageError {
    fn of(data: &[u8], reason: String) -> Self {
        // Only an object names its fields (a derived struct would also read an array by
        // position).
        let is_object = data.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
        let p: Probe = if is_object {
            serde_json::from_slice(data).unwrap_or_default()
        } else {
            Probe::default()
        };
        let text = |v: Option<Value>| match v {
            Some(Value::String(s)) => Some(s),
            _ => None,
        };
        Self {
            request_id: text(p.request_id).as_deref().and_then(RequestId::parse),
            account_id: text(p.account_id).map(AccountId::new),
            reason,
        }
    }
}

impl EraseMessage {
    pub fn to_json(&self) -> Vec<u8> {
        let v = serde_json::json!({
            "version": MESSAGE_VERSION,
            "requestId": self.request_id,
            "accountId": self.account_id,
            "userIds": self.request.user_ids.iter().map(UserEntry::to_json).collect::<Vec<_>>(),
            "botIds": self.request.bot_ids,
            "removeDataFromAllBots": self.request.remove_data_from_all_bots,
            "requestedBy": self.requested_by,
            "requestedAt": self.requested_at.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
        });
        serde_json::to_vec(&v).expect("a JSON value serializes")
    }

    /// Parses a queue message. Reasons name fields and rules, never the identifiers.
    pub fn parse(data: &[u8], max_bytes: usize, limits: &Limits) -> Result<Self, MessageError> {
        Self::parse_fields(data, max_bytes, limits).map_err(|reason| MessageError::of(data, reason))
    }

    fn parse_fields(data: &[u8], max_bytes: usize, limits: &Limits) -> Result<Self, String> {
        if data.len() > max_bytes {
            return Err(format!(
                "message is {} bytes, more than the {max_bytes} allowed",
                data.len()
            ));
        }
        let value: Value = serde_json::from_slice(data)
            .map_err(|e| format!("message is not valid JSON: {}", json_error_text(&e)))?;
        let Value::Object(obj) = value else {
            return Err("message is not a JSON object".into());
        };
        let request_id = match obj.get("requestId") {
            Some(Value::String(s)) => RequestId::parse(s),
            _ => None,
        };
        let Some(request_id) = request_id else {
            return Err("requestId is missing or does not start with eud- (letters, digits, -_.: only, at most 128 characters)".into());
        };
        match obj.get("version") {
            Some(Value::Number(n)) if n.as_u64() == Some(MESSAGE_VERSION) => {}
            Some(Value::Number(n)) => {
                return Err(format!("unknown message version {n}"));
            }
            _ => return Err("version is missing or not a number".into()),
        }
        let text = |name: &str| -> Result<String, String> {
            match obj.get(name) {
                Some(Value::String(s))
                    if !s.trim().is_empty()
                        && s.len() <= limits.max_id_bytes
                        && !s.chars().any(char::is_control) =>
                {
                    Ok(s.clone())
                }
                _ => Err(format!(
                    "{name} is missing, blank, too long or not a string"
                )),
            }
        };
        let account_id = AccountId::new(text("accountId")?);
        let requested_by = text("requestedBy")?;
        let requested_at = match obj.get("requestedAt") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(
                chrono::DateTime::parse_from_rfc3339(s)
                    .map_err(|_| "requestedAt is not an RFC 3339 time".to_string())?
                    .with_timezone(&chrono::Utc),
            ),
            Some(_) => return Err("requestedAt is not a string".into()),
        };
        let mut errors = Vec::new();
        let remove_all = read_bool(
            &obj,
            &["removeDataFromAllBots", "RemoveDataFromAllBots"],
            &mut errors,
        )
        .unwrap_or(false);
        let user_ids = read_user_ids(obj.get("userIds"), limits, &mut errors);
        let bot_ids = read_bot_ids(obj.get("botIds"), remove_all, limits, &mut errors);
        if let Some(first) = errors.first() {
            let field = first.field.as_deref().unwrap_or("message");
            return Err(format!("{field}: {} ({})", first.message, first.code));
        }
        Ok(Self {
            request_id,
            account_id,
            request: EraseRequest {
                user_ids,
                bot_ids,
                remove_data_from_all_bots: remove_all,
                callback_url: None,
            },
            requested_by,
            requested_at,
        })
    }
}

/// A task message: works the per-(request, bot) tasks of one or more bots of a request
/// together. It carries no personal data: the users to erase are read from the request's
/// record.
///
/// `botId` names the first bot; `botIds`, when present, names every bot the message works
/// (`botId` among them). A message without `botIds` works `botId` alone, as every message did
/// before bots were grouped, so messages queued by an older worker still run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TaskMessage {
    pub version: u32,
    pub request_id: RequestId,
    pub bot_id: BotId,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bot_ids: Vec<BotId>,
    /// Which slice of the task this delivery works; continuations carry the next number.
    pub slice: i32,
}

impl TaskMessage {
    /// A message for `bots` (not empty) of the request.
    pub fn new(request_id: &RequestId, bots: &[BotId], slice: i32) -> Self {
        Self {
            version: 1,
            request_id: request_id.clone(),
            bot_id: bots[0].clone(),
            bot_ids: if bots.len() > 1 {
                bots.to_vec()
            } else {
                Vec::new()
            },
            slice,
        }
    }

    /// Messages for `bots` of the request at `slice`, up to `per_message` bots each (none for
    /// no bots).
    pub fn for_bots(
        request_id: &RequestId,
        bots: &[BotId],
        per_message: usize,
        slice: i32,
    ) -> Vec<Self> {
        bots.chunks(per_message.max(1))
            .map(|group| Self::new(request_id, group, slice))
            .collect()
    }

    /// The bots this message works.
    pub fn bots(&self) -> Vec<BotId> {
        if self.bot_ids.is_empty() {
            vec![self.bot_id.clone()]
        } else {
            let mut bots = self.bot_ids.clone();
            if !bots.contains(&self.bot_id) {
                bots.insert(0, self.bot_id.clone());
            }
            bots
        }
    }

    /// The message id (and outbox id): unique per first bot and slice, since the bots of a
    /// request's messages of one slice never overlap.
    pub fn message_id(&self) -> String {
        format!("{}/{}/{}", self.request_id, self.bot_id, self.slice)
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a task message serializes")
    }

    /// The message id and payload the outbox keeps.
    pub fn outbox_entry(&self) -> (String, Vec<u8>) {
        (self.message_id(), self.to_json())
    }
}

/// One `userIds` entry's outcome in the status document.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct UserResponse {
    #[serde(rename = "userId")]
    pub user_id: Value,
    pub status: UserStatus,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reason: Option<String>,
}

/// Rows per store, in the target catalog's order: a JSON object keyed by store name.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct StoreRows(pub Vec<(String, i64)>);

impl StoreRows {
    /// The rows of one store (0 when it has none).
    pub fn get(&self, store: &str) -> i64 {
        self.0
            .iter()
            .find(|(s, _)| s == store)
            .map_or(0, |(_, n)| *n)
    }

    pub fn total(&self) -> i64 {
        self.0.iter().map(|(_, n)| n).sum()
    }
}

impl Serialize for StoreRows {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (store, rows) in &self.0 {
            map.serialize_entry(store, rows)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for StoreRows {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Rows;
        impl<'de> serde::de::Visitor<'de> for Rows {
            type Value = StoreRows;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object of rows per store")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<StoreRows, A::Error> {
                let mut rows = Vec::new();
                while let Some(entry) = map.next_entry::<String, i64>()? {
                    rows.push(entry);
                }
                Ok(StoreRows(rows))
            }
        }
        d.deserialize_map(Rows)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    pub tasks_total: i32,
    pub tasks_done: i32,
    /// One key per `delete` store of the catalog.
    pub rows_deleted: StoreRows,
    /// One key per `anonymize` store; absent when the catalog has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows_anonymized: Option<StoreRows>,
}

/// The status document (contract).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StatusDocument {
    #[serde(rename = "_id")]
    pub id: RequestId,
    #[serde(rename = "requestId")]
    pub request_id: RequestId,
    pub status: RequestStatus,
    #[serde(rename = "createdOn")]
    pub created_on: String,
    #[serde(rename = "lastUpdatedOn")]
    pub last_updated_on: String,
    #[serde(rename = "completedOn")]
    pub completed_on: Option<String>,
    #[serde(rename = "RemoveDataFromAllBots")]
    pub remove_data_from_all_bots: bool,
    pub response: Vec<UserResponse>,
    pub progress: Progress,
    /// Why the request failed, when it did (addition to the platform's document).
    #[serde(
        rename = "failureReason",
        skip_serializing_if = "Option::is_none",
        default
    )]
    pub failure_reason: Option<String>,
    /// The verification after completion (DESIGN.md section 12); absent until verified.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub verification: Option<Verification>,
    /// The delivery of the request's callback, when it has a callback URL (DESIGN.md
    /// section 10).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub callback: Option<crate::store::callbacks::Delivery>,
}

/// What the verification found after a request completed.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Verification {
    pub verified_on: String,
    /// Rows written after the last batch and erased by the verification, per store.
    pub late_rows: StoreRows,
    /// Rows of the erased users left in the request's bots when it finished: always 0.
    pub remaining_rows: i64,
}

/// Formats a time as the platform does: `2026-11-28T10:00:00.000Z`.
pub fn format_time(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_message_names_its_bots_and_reads_the_single_bot_form() {
        let id = RequestId::parse("eud-1").unwrap();
        let one = TaskMessage::new(&id, &["b-1".into()], 0);
        let json: serde_json::Value = serde_json::from_slice(&one.to_json()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"version": 1, "requestId": "eud-1", "botId": "b-1", "slice": 0}),
            "a single bot is written as before bots were grouped"
        );
        assert_eq!(one.bots(), ["b-1"]);
        assert_eq!(one.message_id(), "eud-1/b-1/0");

        let two = TaskMessage::new(&id, &["b-1".into(), "b-2".into()], 3);
        let back: TaskMessage = serde_json::from_slice(&two.to_json()).unwrap();
        assert_eq!(back.bots(), ["b-1", "b-2"]);
        assert_eq!(back.message_id(), "eud-1/b-1/3");

        let odd: TaskMessage = serde_json::from_str(
            r#"{"version":1,"requestId":"eud-1","botId":"b-0","botIds":["b-1"],"slice":0}"#,
        )
        .unwrap();
        assert_eq!(odd.bots(), ["b-0", "b-1"], "botId is always worked");
    }

    const LIMITS: Limits = Limits {
        max_user_ids: 3,
        max_bot_ids: 2,
        max_id_bytes: 16,
    };

    fn codes(body: &str) -> Vec<String> {
        parse_erase_body(body.as_bytes(), &LIMITS)
            .unwrap_err()
            .into_iter()
            .map(|e| e.code)
            .collect()
    }

    #[test]
    fn a_full_body_parses() {
        let r = parse_erase_body(
            br#"{"userIds":["u-1",{"channel_id":"tg","channel_user_id":"5"}],"botIds":["st-1"],"extra":1}"#,
            &LIMITS,
        )
        .unwrap();
        assert_eq!(
            r.user_ids[1],
            UserEntry::Channel {
                channel_id: "tg".into(),
                channel_user_id: "5".into()
            }
        );
        assert_eq!(r.bot_ids, vec!["st-1"]);
        assert!(!r.remove_data_from_all_bots);
    }

    #[test]
    fn remove_from_all_bots_needs_no_bot_ids() {
        let r = parse_erase_body(
            br#"{"userIds":["u-1"],"removeDataFromAllBots":true}"#,
            &LIMITS,
        )
        .unwrap();
        assert!(r.remove_data_from_all_bots);
        assert!(r.bot_ids.is_empty());
    }

    #[test]
    fn bad_bodies_get_specific_codes() {
        assert_eq!(codes("{"), ["invalid_json"]);
        assert_eq!(codes("[]"), ["invalid_type"]);
        assert_eq!(codes(r#"{"botIds":["st-1"]}"#), ["missing_field"]);
        assert_eq!(codes(r#"{"userIds":[],"botIds":["st-1"]}"#), ["empty_list"]);
        assert_eq!(
            codes(r#"{"userIds":["a","b","c","d"],"botIds":["st-1"]}"#),
            ["too_many"]
        );
        assert_eq!(
            codes(r#"{"userIds":["  "],"botIds":["st-1"]}"#),
            ["blank_id"]
        );
        assert_eq!(
            codes(r#"{"userIds":["aaaaaaaaaaaaaaaaa"],"botIds":["st-1"]}"#),
            ["id_too_long"]
        );
        assert_eq!(
            codes(r#"{"userIds":["a\u0000b"],"botIds":["st-1"]}"#),
            ["invalid_characters"]
        );
        assert_eq!(
            codes(r#"{"userIds":["a","a"],"botIds":["st-1"]}"#),
            ["duplicate"]
        );
        assert_eq!(
            codes(r#"{"userIds":["a"],"botIds":["st-1","st-1"]}"#),
            ["duplicate"]
        );
        assert_eq!(codes(r#"{"userIds":["a"]}"#), ["empty_list"]);
        assert_eq!(
            codes(r#"{"userIds":["a"],"botIds":"st-1"}"#),
            ["invalid_type"]
        );
        assert_eq!(
            codes(r#"{"userIds":[7],"botIds":["st-1"]}"#),
            ["invalid_type"]
        );
        assert_eq!(
            codes(r#"{"userIds":[{"channelId":"tg"}],"botIds":["st-1"]}"#),
            ["missing_field"]
        );
        assert_eq!(
            codes(r#"{"userIds":["a"],"botIds":["b"],"RemoveDataFromAllBots":"yes"}"#),
            ["invalid_type"]
        );
    }

    #[test]
    fn errors_name_the_field() {
        let e =
            parse_erase_body(br#"{"userIds":["ok",""],"botIds":["st-1"]}"#, &LIMITS).unwrap_err();
        assert_eq!(e[0].field.as_deref(), Some("userIds[1]"));
    }

    #[test]
    fn request_ids_must_start_with_eud() {
        assert!(RequestId::parse("eud-123").is_some());
        assert!(RequestId::parse("abc-123").is_none());
        assert!(RequestId::parse("eud-").is_none());
        assert!(RequestId::parse("eud-a b").is_none());
        assert!(RequestId::generate().as_str().starts_with("eud-"));
    }

    #[test]
    fn a_message_round_trips() {
        let m = EraseMessage {
            request_id: RequestId::parse("eud-1").unwrap(),
            account_id: "acct-1".into(),
            request: EraseRequest {
                user_ids: vec![
                    UserEntry::Id("u-1".into()),
                    UserEntry::Channel {
                        channel_id: "tg".into(),
                        channel_user_id: "5".into(),
                    },
                ],
                bot_ids: vec!["st-1".into()],
                remove_data_from_all_bots: false,
                callback_url: None,
            },
            requested_by: "app".into(),
            requested_at: None,
        };
        assert_eq!(
            EraseMessage::parse(&m.to_json(), 1 << 20, &LIMITS).unwrap(),
            m
        );
    }

    #[test]
    fn bad_messages_are_refused_with_a_reason() {
        let reason = |s: &str| EraseMessage::parse(s.as_bytes(), 1 << 20, &LIMITS).unwrap_err();
        assert!(reason("nope").reason.contains("not valid JSON"));
        let e = reason(r#"{"version":2,"requestId":"eud-9"}"#);
        assert!(e.reason.contains("unknown message version"));
        assert_eq!(e.request_id.unwrap().as_str(), "eud-9");
        assert!(
            reason(r#"{"version":1,"requestId":"x-1"}"#)
                .request_id
                .is_none()
        );
        let e = reason(
            r#"{"version":1,"requestId":"eud-9","accountId":"a","requestedBy":"b","userIds":["secret@ex.com","secret@ex.com"],"botIds":["st-1"]}"#,
        );
        assert!(e.reason.contains("duplicate"));
        assert!(
            !e.reason.contains("secret"),
            "reasons never carry identifiers"
        );
        assert!(
            EraseMessage::parse(&[b' '; 64], 10, &LIMITS)
                .unwrap_err()
                .reason
                .contains("bytes")
        );
    }
}
