//! Checks a catalog against the live databases: every table and column present, key types
//! comparable, anonymized columns able to take their new values, the service's role allowed to
//! do what the store needs, and an index that serves each delete (a warning, with the
//! statement that creates one).

use std::collections::BTreeMap;

use sqlx::PgPool;

use super::{Action, Catalog, Ident, Keys, Method, Problem, Store};
use crate::store::sql;

/// What a check found.
#[derive(Debug, Default, serde::Serialize)]
pub struct Report {
    pub errors: Vec<Problem>,
    pub warnings: Vec<Problem>,
    /// Databases that did not answer: their stores were not checked.
    pub unreachable: Vec<Problem>,
}

impl Report {
    /// Nothing wrong, and every database checked.
    pub fn is_ok(&self) -> bool {
        self.errors.is_empty() && self.unreachable.is_empty()
    }
}

/// A database as the check sees it: a pool, or why there is none.
pub enum Reach<'a> {
    Pool(&'a PgPool),
    Unreachable(String),
}

#[derive(sqlx::FromRow)]
struct Column {
    name: String,
    attnum: i16,
    /// `format_type()`: the type as SQL spells it, for messages.
    type_name: String,
    /// `pg_type.typcategory`: `S` string, `N` numeric, …
    category: i8,
    type_oid: sqlx::postgres::types::Oid,
    not_null: bool,
}

struct Table {
    oid: sqlx::postgres::types::Oid,
    columns: BTreeMap<String, Column>,
}

/// Checks every store in its database (`None`: the service's own). Stores in an unreachable
/// database are reported as such, once per database.
pub async fn check<'a>(
    catalog: &Catalog,
    reach: impl Fn(Option<&str>) -> Reach<'a>,
) -> Result<Report, sqlx::Error> {
    let mut report = Report::default();
    let mut tables: BTreeMap<usize, Table> = BTreeMap::new();
    let mut unreachable_reported = std::collections::BTreeSet::new();
    for (i, store) in catalog.stores.iter().enumerate() {
        let database = catalog.database_of(i);
        let pool = match reach(database) {
            Reach::Pool(pool) => pool,
            Reach::Unreachable(why) => {
                if unreachable_reported.insert(database.map(str::to_string)) {
                    report.unreachable.push(Problem::new(
                        Some(&store.name),
                        Some("database"),
                        format!(
                            "database {} cannot be reached: {why}",
                            database.unwrap_or("(the service's own)")
                        ),
                    ));
                }
                continue;
            }
        };
        match table(pool, store).await? {
            Some(t) => {
                check_store(catalog, i, &t, &tables, pool, &mut report).await?;
                tables.insert(i, t);
            }
            None => report.errors.push(Problem::new(
                Some(&store.name),
                Some("table"),
                format!(
                    "table {} does not exist in database {}",
                    store.table,
                    database.unwrap_or("(the service's own)")
                ),
            )),
        }
    }
    Ok(report)
}

async fn table(pool: &PgPool, store: &Store) -> Result<Option<Table>, sqlx::Error> {
    let oid: Option<sqlx::postgres::types::Oid> = sql::query_scalar(
        "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
    )
    .bind(store.table.schema.as_str())
    .bind(store.table.table.as_str())
    .fetch_optional(sql::on(pool))
    .await?;
    let Some(oid) = oid else { return Ok(None) };
    let columns: Vec<Column> = sql::query_as(
        "SELECT a.attname::text AS name, a.attnum, format_type(a.atttypid, a.atttypmod) AS type_name,
                t.typcategory AS category,
                a.atttypid AS type_oid, a.attnotnull AS not_null
           FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
          WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped",
    )
    .bind(oid)
    .fetch_all(sql::on(pool))
    .await?;
    Ok(Some(Table {
        oid,
        columns: columns.into_iter().map(|c| (c.name.clone(), c)).collect(),
    }))
}

const STRING: i8 = b'S' as i8;

async fn check_store(
    catalog: &Catalog,
    i: usize,
    table: &Table,
    checked: &BTreeMap<usize, Table>,
    pool: &PgPool,
    report: &mut Report,
) -> Result<(), sqlx::Error> {
    let store = &catalog.stores[i];
    let name = Some(store.name.as_str());
    let column = |field: &str, ident: &Ident, report: &mut Report| -> Option<&Column> {
        let found = table.columns.get(ident.as_str());
        if found.is_none() {
            report.errors.push(Problem::new(
                name,
                Some(field),
                format!("column {ident} not found in {}", store.table),
            ));
        }
        found
    };
    match &store.keys {
        Keys::Own { user, bot } => {
            for (field, ident) in [("user_column", user), ("bot_column", bot)] {
                if let Some(c) = column(field, ident, report)
                    && c.category != STRING
                {
                    report.errors.push(Problem::new(
                        name,
                        Some(field),
                        format!("column {ident} is {}: platform ids are text", c.type_name),
                    ));
                }
            }
            if let (Some(u), Some(_)) = (
                table.columns.get(user.as_str()),
                table.columns.get(bot.as_str()),
            ) {
                index_warning(pool, store, table.oid, u.attnum, &[user, bot], report).await?;
            }
        }
        Keys::Child {
            parent,
            column: col,
            references,
        } => {
            let child = column("parent.column", col, report);
            let parent_table = checked.get(parent);
            let referenced = parent_table.and_then(|p| p.columns.get(references.as_str()));
            if parent_table.is_some() && referenced.is_none() {
                report.errors.push(Problem::new(
                    name,
                    Some("parent.references"),
                    format!(
                        "column {references} not found in {}",
                        catalog.stores[*parent].table
                    ),
                ));
            }
            if let (Some(c), Some(r)) = (child, referenced)
                && (c.category != r.category
                    || (c.category != STRING
                        && c.category != b'N' as i8
                        && c.type_oid != r.type_oid))
            {
                report.errors.push(Problem::new(
                    name,
                    Some("parent.column"),
                    format!(
                        "{col} is {} but {references} is {}: they cannot be compared",
                        c.type_name, r.type_name
                    ),
                ));
            }
            if let Some(c) = child {
                index_warning(pool, store, table.oid, c.attnum, &[col], report).await?;
            }
        }
    }
    if let Action::Anonymize(columns) = &store.action {
        for (ident, method) in columns {
            let field = format!("anonymize.{}", ident.as_str());
            let Some(c) = column(&field, ident, report) else {
                continue;
            };
            let problem = match method {
                Method::Hmac | Method::Redact if c.category != STRING => Some(format!(
                    "column {ident} is {}: {} writes text",
                    c.type_name,
                    method.name()
                )),
                Method::Null if c.not_null => Some(format!("column {ident} is NOT NULL")),
                _ => None,
            };
            if let Some(p) = problem {
                report.errors.push(Problem::new(name, Some(&field), p));
            }
        }
    }
    privileges(pool, store, table.oid, report).await
}

/// Warns when no index starts with `first` (the user column, or a child's parent column),
/// naming the statement that creates one.
async fn index_warning(
    pool: &PgPool,
    store: &Store,
    table: sqlx::postgres::types::Oid,
    first: i16,
    columns: &[&Ident],
    report: &mut Report,
) -> Result<(), sqlx::Error> {
    let indexed: bool = sql::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_index WHERE indrelid = $1 AND indkey[0] = $2)",
    )
    .bind(table)
    .bind(first)
    .fetch_one(sql::on(pool))
    .await?;
    if !indexed {
        let list: Vec<String> = columns.iter().map(|c| c.quoted()).collect();
        let mut warning = Problem::new(
            Some(&store.name),
            Some("table"),
            format!(
                "no index starts with {}: every batch would scan the whole table",
                columns[0]
            ),
        );
        warning.create_index = Some(format!(
            "CREATE INDEX CONCURRENTLY ON {} ({});",
            store.table.quoted(),
            list.join(", ")
        ));
        report.warnings.push(warning);
    }
    Ok(())
}

async fn privileges(
    pool: &PgPool,
    store: &Store,
    table: sqlx::postgres::types::Oid,
    report: &mut Report,
) -> Result<(), sqlx::Error> {
    let writes = match store.action {
        Action::Delete => "DELETE",
        Action::Anonymize(_) => "UPDATE",
    };
    // Each privilege on its own: a list asks whether ANY of them is held.
    let allowed: bool = sql::query_scalar(
        "SELECT has_table_privilege($1, 'SELECT') AND has_table_privilege($1, $2)",
    )
    .bind(table)
    .bind(writes)
    .fetch_one(sql::on(pool))
    .await?;
    if !allowed {
        report.errors.push(Problem::new(
            Some(&store.name),
            Some("table"),
            format!(
                "the service's role lacks SELECT or {writes} on {}",
                store.table
            ),
        ));
    }
    Ok(())
}
