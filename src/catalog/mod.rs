//! The target catalog (DESIGN.md section 9): what to erase, declared by the platform in its own
//! tables. `ERASURE_TARGETS` names a TOML file; without it the built-in catalog is the three
//! stores of the reference model. A catalog is read and checked once ([`Catalog::load`]):
//! names are validated here and quoted wherever they enter SQL ([`names`]), the tables and
//! columns are checked against the live databases ([`check`]), and each store's statements are
//! built once ([`sql`]).

pub mod check;
pub mod names;
pub mod sql;

use std::{collections::BTreeMap, path::Path};

use serde::Deserialize;
use sha2::{Digest, Sha256};

pub use names::{Ident, TableName};

/// Where the catalog came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// No `ERASURE_TARGETS`: the three stores of the reference model.
    BuiltIn,
    File(String),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::BuiltIn => f.write_str("the built-in catalog"),
            Self::File(path) => f.write_str(path),
        }
    }
}

/// A checked catalog.
#[derive(Clone, Debug)]
pub struct Catalog {
    pub source: Source,
    /// Further databases by name: the variable holding each one's URL.
    pub databases: BTreeMap<String, String>,
    /// In the order declared; a parent always comes before its children.
    pub stores: Vec<Store>,
    /// SHA-256 (hex) of the effective catalog's canonical form (receipts name it).
    pub digest: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Store {
    /// `^[a-z][a-z0-9_]{0,62}$`: the key in the status document and the metrics' label.
    pub name: String,
    pub table: TableName,
    /// `None`: the service's own database.
    pub database: Option<String>,
    pub keys: Keys,
    pub action: Action,
}

/// How a store's rows are found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Keys {
    /// By the user's and the bot's columns.
    Own { user: Ident, bot: Ident },
    /// As the children of rows of another store (by index in [`Catalog::stores`]): rows whose
    /// `column` equals a parent row's `references`.
    Child {
        parent: usize,
        column: Ident,
        references: Ident,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Delete,
    /// Keep the rows, overwrite these columns (the user column among them).
    Anonymize(Vec<(Ident, Method)>),
}

/// The action names, as the catalog, `erasure.task_rows.action` and the views spell them.
pub const DELETE: &str = "delete";
pub const ANONYMIZE: &str = "anonymize";

impl Action {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Delete => DELETE,
            Self::Anonymize(_) => ANONYMIZE,
        }
    }
}

/// How an anonymized column is overwritten.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// The hex HMAC-SHA256 of the old value under `ERASURE_PII_HMAC_KEY`: a stable pseudonym.
    Hmac,
    Null,
    /// The text `[erased]`.
    Redact,
}

impl Method {
    fn parse(text: &str) -> Option<Self> {
        match text {
            "hmac" => Some(Self::Hmac),
            "null" => Some(Self::Null),
            "redact" => Some(Self::Redact),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Self::Hmac => "hmac",
            Self::Null => "null",
            Self::Redact => "redact",
        }
    }
}

/// One thing wrong (or worth a warning) in a catalog, naming the store and field.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    pub message: String,
    /// For a missing index: the statement that creates one.
    #[serde(rename = "createIndex", skip_serializing_if = "Option::is_none")]
    pub create_index: Option<String>,
}

impl Problem {
    pub fn new(store: Option<&str>, field: Option<&str>, message: impl Into<String>) -> Self {
        Self {
            store: store.map(str::to_string),
            field: field.map(str::to_string),
            message: message.into(),
            create_index: None,
        }
    }

    /// `store "x": field: message`.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        if let Some(store) = &self.store {
            out.push_str(&format!("store {store:?}: "));
        }
        if let Some(field) = &self.field {
            out.push_str(&format!("{field}: "));
        }
        out.push_str(&self.message);
        out
    }
}

/// A catalog that cannot be used: every problem found, with the file.
#[derive(Debug, thiserror::Error)]
#[error("invalid target catalog {origin}:\n{}", .problems.iter().map(|p| format!("  {}", p.describe())).collect::<Vec<_>>().join("\n"))]
pub struct CatalogError {
    pub origin: Source,
    pub problems: Vec<Problem>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    databases: BTreeMap<String, RawDatabase>,
    stores: Vec<RawStore>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDatabase {
    url_env: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    name: String,
    table: String,
    database: Option<String>,
    user_column: Option<String>,
    bot_column: Option<String>,
    parent: Option<RawParent>,
    action: Option<String>,
    anonymize: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawParent {
    store: String,
    column: String,
    references: String,
}

impl Catalog {
    /// The three stores of the reference model, deleted per user and bot.
    pub fn built_in() -> Self {
        let store = |name: &str, table: &str| Store {
            name: name.into(),
            table: TableName::parse(table).expect("a valid built-in table"),
            database: None,
            keys: Keys::Own {
                user: Ident::parse("user_id").expect("a valid name"),
                bot: Ident::parse("bot_id").expect("a valid name"),
            },
            action: Action::Delete,
        };
        Self::finish(
            Source::BuiltIn,
            BTreeMap::new(),
            vec![
                store("conversations", "platform.conversations"),
                store("sessions", "platform.sessions"),
                store("analytics", "platform.analytics_events"),
            ],
        )
    }

    /// Reads and validates the catalog file at `path` (not yet against the databases).
    pub fn load(path: &Path) -> Result<Self, CatalogError> {
        let source = Source::File(path.display().to_string());
        let fail = |problems| CatalogError {
            origin: source.clone(),
            problems,
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            fail(vec![Problem::new(
                None,
                None,
                format!("cannot be read: {e}"),
            )])
        })?;
        Self::parse(&text, source.clone()).map_err(fail)
    }

    /// Validates a catalog's text; every problem found, not only the first.
    pub fn parse(text: &str, source: Source) -> Result<Self, Vec<Problem>> {
        let raw: RawFile = toml::from_str(text).map_err(|e| {
            vec![
                Problem::new(
                    None,
                    None,
                    format!("not a valid catalog: {}", e.message().trim()),
                )
                .with_span(text, e.span()),
            ]
        })?;
        let mut problems = Vec::new();
        for (name, db) in &raw.databases {
            if !valid_store_name(name) {
                problems.push(Problem::new(
                    None,
                    Some(&format!("databases.{name}")),
                    "a database's name is lowercase letters, digits and _",
                ));
            }
            if !valid_env_name(&db.url_env) {
                problems.push(Problem::new(
                    None,
                    Some(&format!("databases.{name}.url_env")),
                    format!("{:?} is not an environment variable's name", db.url_env),
                ));
            }
        }
        let stores = validate_stores(&raw, &mut problems);
        if !problems.is_empty() {
            return Err(problems);
        }
        let databases = raw
            .databases
            .into_iter()
            .map(|(k, v)| (k, v.url_env))
            .collect();
        Ok(Self::finish(source, databases, stores))
    }

    fn finish(source: Source, databases: BTreeMap<String, String>, stores: Vec<Store>) -> Self {
        let digest = digest(&databases, &stores);
        Self {
            source,
            databases,
            stores,
            digest,
        }
    }

    pub fn store(&self, name: &str) -> Option<&Store> {
        self.stores.iter().find(|s| s.name == name)
    }

    /// The stores erased by their own keys (the others are erased with them).
    pub fn roots(&self) -> impl Iterator<Item = (usize, &Store)> {
        self.stores
            .iter()
            .enumerate()
            .filter(|(_, s)| matches!(s.keys, Keys::Own { .. }))
    }

    /// The descendants of store `root`, deepest first: the order they are erased in, so that
    /// no row is deleted while a row of another store still refers to it.
    pub fn descendants(&self, root: usize) -> Vec<usize> {
        let mut out = Vec::new();
        self.post_order(root, &mut out);
        out.pop(); // the root itself comes last
        out
    }

    fn post_order(&self, at: usize, out: &mut Vec<usize>) {
        for (i, s) in self.stores.iter().enumerate() {
            if matches!(s.keys, Keys::Child { parent, .. } if parent == at) {
                self.post_order(i, out);
            }
        }
        out.push(at);
    }

    /// The chain from store `i` up to its root: `[i, parent, …, root]`.
    pub fn ancestry(&self, mut i: usize) -> Vec<usize> {
        let mut chain = vec![i];
        while let Keys::Child { parent, .. } = self.stores[i].keys {
            chain.push(parent);
            i = parent;
        }
        chain
    }

    /// The database a store lives in (`None`: the service's own); a child lives in its root's.
    pub fn database_of(&self, i: usize) -> Option<&str> {
        let root = *self.ancestry(i).last().expect("a chain ends at a root");
        self.stores[root].database.as_deref()
    }

    pub fn names(&self, action: &str) -> Vec<&str> {
        self.stores
            .iter()
            .filter(|s| s.action.name() == action)
            .map(|s| s.name.as_str())
            .collect()
    }
}

impl Problem {
    fn with_span(mut self, text: &str, span: Option<std::ops::Range<usize>>) -> Self {
        if let Some(span) = span {
            let line = text[..span.start.min(text.len())].lines().count().max(1);
            self.message = format!("line {line}: {}", self.message);
        }
        self
    }
}

fn valid_store_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 63
        && chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

fn valid_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Validates every store, collecting problems; the stores come back ordered parents first.
fn validate_stores(raw: &RawFile, problems: &mut Vec<Problem>) -> Vec<Store> {
    if raw.stores.is_empty() {
        problems.push(Problem::new(
            None,
            Some("stores"),
            "declare at least one store",
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for s in &raw.stores {
        if !valid_store_name(&s.name) {
            problems.push(Problem::new(
                Some(&s.name),
                Some("name"),
                "a store's name matches ^[a-z][a-z0-9_]{0,62}$",
            ));
        } else if !seen.insert(s.name.as_str()) {
            problems.push(Problem::new(Some(&s.name), Some("name"), "declared twice"));
        }
    }
    let order = match parents_first(raw) {
        Ok(order) => order,
        Err(p) => {
            problems.push(p);
            return Vec::new();
        }
    };
    let index: BTreeMap<&str, usize> = order
        .iter()
        .enumerate()
        .map(|(new, &old)| (raw.stores[old].name.as_str(), new))
        .collect();
    order
        .iter()
        .filter_map(|&old| {
            let s = &raw.stores[old];
            let mut mine = Vec::new();
            let store = validate_store(s, raw, &index, &mut mine);
            problems.extend(mine);
            store
        })
        .collect()
}

/// The stores' order with every parent before its children; refuses unknown parents and
/// cycles.
fn parents_first(raw: &RawFile) -> Result<Vec<usize>, Problem> {
    let by_name: BTreeMap<&str, usize> = raw
        .stores
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), i))
        .collect();
    let mut order = Vec::new();
    let mut state = vec![0u8; raw.stores.len()]; // 0 new, 1 on the path, 2 placed
    fn visit(
        i: usize,
        raw: &RawFile,
        by_name: &BTreeMap<&str, usize>,
        state: &mut [u8],
        order: &mut Vec<usize>,
    ) -> Result<(), Problem> {
        match state[i] {
            2 => return Ok(()),
            1 => {
                return Err(Problem::new(
                    Some(&raw.stores[i].name),
                    Some("parent.store"),
                    "parents form a cycle",
                ));
            }
            _ => {}
        }
        state[i] = 1;
        if let Some(p) = &raw.stores[i].parent {
            let Some(&parent) = by_name.get(p.store.as_str()) else {
                return Err(Problem::new(
                    Some(&raw.stores[i].name),
                    Some("parent.store"),
                    format!("no store is named {:?}", p.store),
                ));
            };
            visit(parent, raw, by_name, state, order)?;
        }
        state[i] = 2;
        order.push(i);
        Ok(())
    }
    for i in 0..raw.stores.len() {
        visit(i, raw, &by_name, &mut state, &mut order)?;
    }
    Ok(order)
}

fn validate_store(
    s: &RawStore,
    raw: &RawFile,
    index: &BTreeMap<&str, usize>,
    problems: &mut Vec<Problem>,
) -> Option<Store> {
    let name = s.name.as_str();
    let mut ident = |field: &str, text: &str| -> Option<Ident> {
        Ident::parse(text)
            .map_err(|e| problems.push(Problem::new(Some(name), Some(field), e)))
            .ok()
    };
    let user = s.user_column.as_deref().map(|c| ident("user_column", c));
    let bot = s.bot_column.as_deref().map(|c| ident("bot_column", c));
    let parent = s.parent.as_ref().map(|p| {
        (
            index.get(p.store.as_str()).copied(),
            ident("parent.column", &p.column),
            ident("parent.references", &p.references),
        )
    });
    let table = TableName::parse(&s.table)
        .map_err(|e| problems.push(Problem::new(Some(name), Some("table"), e)))
        .ok();
    let keys = store_keys(s, user, bot, parent, problems)?;
    if let Some(db) = &s.database {
        if !raw.databases.contains_key(db) {
            problems.push(Problem::new(
                Some(name),
                Some("database"),
                format!("no [databases.{db}] is declared"),
            ));
        }
        if matches!(keys, Keys::Child { .. }) {
            problems.push(Problem::new(
                Some(name),
                Some("database"),
                "a child store lives in its parent's database: leave database out",
            ));
        }
    }
    let action = store_action(s, &keys, raw, problems)?;
    Some(Store {
        name: s.name.clone(),
        table: table?,
        database: s.database.clone(),
        keys,
        action,
    })
}

type ParentParts = (Option<usize>, Option<Ident>, Option<Ident>);

fn store_keys(
    s: &RawStore,
    user: Option<Option<Ident>>,
    bot: Option<Option<Ident>>,
    parent: Option<ParentParts>,
    problems: &mut Vec<Problem>,
) -> Option<Keys> {
    let name = Some(s.name.as_str());
    match (user, bot, parent) {
        (Some(user), Some(bot), None) => Some(Keys::Own {
            user: user?,
            bot: bot?,
        }),
        (None, None, Some((parent, column, references))) => Some(Keys::Child {
            parent: parent?,
            column: column?,
            references: references?,
        }),
        (_, _, Some(_)) => {
            problems.push(Problem::new(
                name,
                Some("parent"),
                "a child store has no user_column or bot_column of its own",
            ));
            None
        }
        (user, _, None) => {
            let missing = if user.is_none() {
                "user_column"
            } else {
                "bot_column"
            };
            problems.push(Problem::new(
                name,
                Some(missing),
                "required (or give the store a parent)",
            ));
            None
        }
    }
}

fn store_action(
    s: &RawStore,
    keys: &Keys,
    raw: &RawFile,
    problems: &mut Vec<Problem>,
) -> Option<Action> {
    let name = Some(s.name.as_str());
    match (s.action.as_deref().unwrap_or("delete"), &s.anonymize) {
        ("delete", None) => {
            let parent_anonymized = s.parent.as_ref().is_some_and(|p| {
                raw.stores
                    .iter()
                    .any(|o| o.name == p.store && o.action.as_deref() == Some("anonymize"))
            });
            if parent_anonymized {
                problems.push(Problem::new(
                    name,
                    Some("parent.store"),
                    "the parent is anonymized, not deleted: its children cannot be deleted with it",
                ));
                return None;
            }
            Some(Action::Delete)
        }
        ("delete", Some(_)) => {
            problems.push(Problem::new(
                name,
                Some("anonymize"),
                "only a store with action = \"anonymize\" lists columns to anonymize",
            ));
            None
        }
        ("anonymize", columns) => anonymize_columns(s, keys, columns.as_ref(), problems),
        (other, _) => {
            problems.push(Problem::new(
                name,
                Some("action"),
                format!("{other:?} is not \"delete\" or \"anonymize\""),
            ));
            None
        }
    }
}

fn anonymize_columns(
    s: &RawStore,
    keys: &Keys,
    columns: Option<&BTreeMap<String, String>>,
    problems: &mut Vec<Problem>,
) -> Option<Action> {
    let name = Some(s.name.as_str());
    let Keys::Own { user, .. } = keys else {
        problems.push(Problem::new(
            name,
            Some("action"),
            "a child store is deleted with its parent row; it cannot be anonymized",
        ));
        return None;
    };
    let Some(columns) = columns.filter(|c| !c.is_empty()) else {
        problems.push(Problem::new(
            name,
            Some("anonymize"),
            "list the columns to overwrite, the user column among them",
        ));
        return None;
    };
    let mut out = Vec::new();
    for (column, method) in columns {
        let field = format!("anonymize.{column}");
        let ident = Ident::parse(column)
            .map_err(|e| problems.push(Problem::new(name, Some(&field), e)))
            .ok();
        let method = Method::parse(method).or_else(|| {
            problems.push(Problem::new(
                name,
                Some(&field),
                format!("{method:?} is not \"hmac\", \"null\" or \"redact\""),
            ));
            None
        });
        if let (Some(ident), Some(method)) = (ident, method) {
            out.push((ident, method));
        }
    }
    if !out.iter().any(|(c, _)| c == user) {
        problems.push(Problem::new(
            name,
            Some("anonymize"),
            format!(
                "must overwrite the user column {user}, or a second request would find the rows again"
            ),
        ));
        return None;
    }
    (out.len() == columns.len()).then_some(Action::Anonymize(out))
}

/// SHA-256 of the catalog's canonical JSON form: databases by name with the variable of each
/// one's URL (never the URL), and every store with its resolved names.
fn digest(databases: &BTreeMap<String, String>, stores: &[Store]) -> String {
    let stores: Vec<serde_json::Value> = stores
        .iter()
        .map(|s| {
            let keys = match &s.keys {
                Keys::Own { user, bot } => serde_json::json!({"user_column": user, "bot_column": bot}),
                Keys::Child {
                    parent,
                    column,
                    references,
                } => serde_json::json!({"parent": {"store": stores[*parent].name, "column": column, "references": references}}),
            };
            let anonymize: BTreeMap<&str, &str> = match &s.action {
                Action::Delete => BTreeMap::new(),
                Action::Anonymize(cols) => cols.iter().map(|(c, m)| (c.as_str(), m.name())).collect(),
            };
            serde_json::json!({"name": s.name, "table": s.table, "database": s.database,
                               "keys": keys, "action": s.action.name(), "anonymize": anonymize})
        })
        .collect();
    let canonical = serde_json::json!({"databases": databases, "stores": stores});
    hex::encode(Sha256::digest(canonical.to_string().as_bytes()))
}

#[cfg(test)]
pub(crate) mod tests;
