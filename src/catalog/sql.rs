//! Each store's statements, built once from its checked names. Names enter the text only
//! through [`Ident::quoted`] / [`TableName::quoted`]; every value (users, bots, limits, row
//! addresses, keys) is a bound parameter.
//!
//! Parameters: `$1` the users (text[]), `$2` the bots (text[]), then `$3` the batch's limit,
//! or for statements on rows already picked, their addresses (text[] of `ctid`s); a
//! descendant's delete takes only those addresses, as `$1`.

use std::sync::Arc;

use sqlx::{AssertSqlSafe, SqlSafeStr, SqlStr};

use super::{Action, Catalog, Ident, Keys, Method, Store};

/// A statement built here. The one place dynamic SQL is vouched for: every name in it went
/// through [`Ident::quoted`], every value is a parameter. Cloning shares the text.
pub type Statement = SqlStr;

fn vouch(text: String) -> Statement {
    AssertSqlSafe(Arc::<str>::from(text)).into_sql_str()
}

/// The statements that erase a root store (one erased by its own user and bot columns) and,
/// with it, its descendants.
#[derive(Clone, Debug)]
pub enum RootSql {
    /// A deleted store without children.
    Leaf(LeafSql),
    /// A deleted store with children: pick and lock a batch of its rows, delete their
    /// descendants deepest first, then the rows themselves, in one transaction.
    Tree(TreeSql),
    /// An anonymized store: overwrite a batch of rows' declared columns.
    Anonymize(AnonymizeSql),
}

#[derive(Clone, Debug)]
pub struct AnonymizeSql {
    /// Overwrites at most $3 rows; per bot, and whether the store is now drained.
    pub batch: Statement,
    /// Whether it takes the HMAC's padded keys ($4 inner, $5 outer).
    pub keyed: bool,
}

#[derive(Clone, Debug)]
pub struct LeafSql {
    /// Deletes at most $3 rows and returns the rows deleted per bot and whether the store is
    /// now drained.
    ///
    /// `c` picks up to the limit of row addresses through the (user, bot) index, and the
    /// DELETE fetches them by address (a TID scan, no second index pass) re-checking the
    /// keys, so a row that moved or changed meanwhile is never deleted by mistake. Fewer
    /// candidates than the limit proves the store drained (even if a concurrent run of the
    /// same task deleted some of them first: they were among the candidates), so no separate
    /// "anything left?" query, a second walk over an index full of dead entries, is needed.
    /// The rows per bot are grouped by hashing: PostgreSQL expects one row from a DELETE by
    /// address and would otherwise sort them all (16-22 ms of 150 for 60,000 rows, on disk
    /// past `work_mem`).
    ///
    /// One statement for all the bots of a message rather than one per bot: the rows of a
    /// user are scattered through the tables, so each bot's statement visited most of the
    /// heap pages the others visited; for 500 users over 20 bots that was 2-3x the database
    /// work of one statement for all of them.
    pub batch: Statement,
    /// The rows per user and bot, counted up to one more than $3 through the (user, bot)
    /// index (an index-only scan where the visibility map allows): with [`Self::delete_all`]
    /// in the same snapshot, plain SQL's way for one request or several worked together.
    pub count: Statement,
    /// Every row: plain SQL's one pass.
    pub delete_all: Statement,
}

#[derive(Clone, Debug)]
pub struct TreeSql {
    /// Locks up to $3 of the root's rows and returns their addresses.
    pub pick: Statement,
    /// Per descendant (store index), deepest first: deletes the rows hanging off the picked
    /// rows ($1) and returns them per bot of their root row.
    pub descendants: Vec<(usize, Statement)>,
    /// Deletes the picked rows ($3), re-checking their keys ($1, $2), per bot.
    pub delete: Statement,
}

/// Per bot: `SELECT ARRAY(bots), ARRAY(counts)` from a CTE `d(bot)`.
const PER_BOT: &str = ", per_bot AS (SELECT bot, count(*) AS n FROM d GROUP BY bot)
     SELECT ARRAY(SELECT bot FROM per_bot), ARRAY(SELECT n FROM per_bot)";

fn own_keys(store: &Store) -> (&Ident, &Ident) {
    match &store.keys {
        Keys::Own { user, bot } => (user, bot),
        Keys::Child { .. } => unreachable!("a root store has its own keys"),
    }
}

/// The statements of the root store `root` of `catalog`.
pub fn root(catalog: &Catalog, root: usize) -> RootSql {
    let store = &catalog.stores[root];
    let t = store.table.quoted();
    let (u, b) = own_keys(store);
    let (u, b) = (u.quoted(), b.quoted());
    let keys = format!("{u} = ANY($1) AND {b} = ANY($2)");
    if let Action::Anonymize(columns) = &store.action {
        return RootSql::Anonymize(anonymize(&t, &u, &b, columns));
    }
    let descendants = catalog.descendants(root);
    if descendants.is_empty() {
        return RootSql::Leaf(LeafSql {
            batch: vouch(format!(
                "WITH c AS (SELECT ARRAY(SELECT ctid FROM {t} WHERE {keys} LIMIT $3) AS ids),
                      d AS (DELETE FROM {t} WHERE ctid = ANY((SELECT ids FROM c)::tid[]) AND {keys}
                            RETURNING {b}::text AS bot),
                      per_bot AS (SELECT bot, count(*) AS n FROM d GROUP BY bot)
                 SELECT ARRAY(SELECT bot FROM per_bot), ARRAY(SELECT n FROM per_bot),
                        COALESCE(cardinality((SELECT ids FROM c)), 0) < $3"
            )),
            count: vouch(format!(
                "SELECT usr, bot, count(*)
                   FROM (SELECT {u}::text AS usr, {b}::text AS bot FROM {t} WHERE {keys} LIMIT $3 + 1) x
                  GROUP BY usr, bot"
            )),
            delete_all: vouch(format!("DELETE FROM {t} WHERE {keys}")),
        });
    }
    RootSql::Tree(TreeSql {
        pick: vouch(format!(
            "SELECT COALESCE(array_agg(ctid::text), '{{}}') FROM
                    (SELECT ctid FROM {t} WHERE {keys} LIMIT $3 FOR UPDATE) picked"
        )),
        descendants: descendants
            .iter()
            .map(|&d| (d, vouch(descendant_delete(catalog, d, &b))))
            .collect(),
        delete: vouch(format!(
            "WITH d AS (DELETE FROM {t} WHERE ctid = ANY($3::text[]::tid[]) AND {keys}
                        RETURNING {b}::text AS bot){PER_BOT}"
        )),
    })
}

/// `FROM`/`USING` list and join conditions from store `i` up to its root: aliases `x0` (the
/// store) … `xN` (the root).
fn chain(catalog: &Catalog, i: usize) -> (Vec<String>, Vec<String>, String) {
    let ancestry = catalog.ancestry(i);
    let tables = ancestry
        .iter()
        .enumerate()
        .map(|(k, &s)| format!("{} x{k}", catalog.stores[s].table.quoted()))
        .collect();
    let joins = ancestry
        .windows(2)
        .enumerate()
        .map(|(k, pair)| match &catalog.stores[pair[0]].keys {
            Keys::Child {
                column, references, ..
            } => format!(
                "x{k}.{} = x{}.{}",
                column.quoted(),
                k + 1,
                references.quoted()
            ),
            Keys::Own { .. } => unreachable!("only a child has a parent"),
        })
        .collect();
    (tables, joins, format!("x{}", ancestry.len() - 1))
}

fn descendant_delete(catalog: &Catalog, i: usize, root_bot: &str) -> String {
    let (tables, joins, root) = chain(catalog, i);
    format!(
        "WITH d AS (DELETE FROM {} USING {}
                     WHERE {root}.ctid = ANY($1::text[]::tid[]) AND {}
                     RETURNING {root}.{root_bot}::text AS bot){PER_BOT}",
        tables[0],
        tables[1..].join(", "),
        joins.join(" AND "),
    )
}

fn anonymize(t: &str, u: &str, b: &str, columns: &[(Ident, Method)]) -> AnonymizeSql {
    let sets: Vec<String> = columns
        .iter()
        .map(|(c, m)| {
            let c = c.quoted();
            let value = match m {
                // HMAC-SHA256 with PostgreSQL's own sha256(): H((K^opad) || H((K^ipad) || m)),
                // the two padded keys bound as $5 and $4 (no extension needed).
                Method::Hmac => format!(
                    "encode(sha256($5::bytea || sha256($4::bytea || convert_to(x.{c}::text, 'UTF8'))), 'hex')"
                ),
                Method::Null => "NULL".into(),
                Method::Redact => "'[erased]'".into(),
            };
            format!("{c} = {value}")
        })
        .collect();
    let batch = format!(
        "WITH c AS (SELECT ctid, {b}::text AS bot FROM {t} WHERE {u} = ANY($1) AND {b} = ANY($2) LIMIT $3 FOR UPDATE),
              d AS (UPDATE {t} x SET {} FROM c
                     WHERE x.ctid = c.ctid AND x.{u} = ANY($1) AND x.{b} = ANY($2)
                     RETURNING c.bot),
              per_bot AS (SELECT bot, count(*) AS n FROM d GROUP BY bot)
         SELECT ARRAY(SELECT bot FROM per_bot), ARRAY(SELECT n FROM per_bot),
                (SELECT count(*) FROM c) < $3",
        sets.join(", ")
    );
    AnonymizeSql {
        batch: vouch(batch),
        keyed: columns.iter().any(|(_, m)| *m == Method::Hmac),
    }
}

/// Counts, per bot, the rows of the users ($1) in the bots ($2) that store `i` still holds
/// (a child's through its chain of parents): what a verification finds left.
pub fn remaining(catalog: &Catalog, i: usize) -> Statement {
    let (tables, joins, root) = chain(catalog, i);
    let ancestry = catalog.ancestry(i);
    let (u, b) = own_keys(&catalog.stores[*ancestry.last().expect("a chain has a root")]);
    let mut conditions = joins;
    conditions.push(format!(
        "{root}.{} = ANY($1) AND {root}.{} = ANY($2)",
        u.quoted(),
        b.quoted()
    ));
    vouch(format!(
        "SELECT {root}.{}::text AS bot, count(*) FROM {} WHERE {} GROUP BY 1",
        b.quoted(),
        tables.join(", "),
        conditions.join(" AND ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Source;

    use crate::catalog::tests::{ANALYTICS, TREE};

    #[test]
    fn a_tree_deletes_deepest_first_through_its_chain_of_parents() {
        let c = Catalog::parse(TREE, Source::BuiltIn).unwrap();
        let RootSql::Tree(sql) = root(&c, 0) else {
            panic!("conversations has children")
        };
        let order: Vec<&str> = sql
            .descendants
            .iter()
            .map(|(i, _)| c.stores[*i].name.as_str())
            .collect();
        assert_eq!(order, ["attachments", "messages"]);
        let attachments = sql.descendants[0].1.as_str();
        assert!(attachments.contains(
            "DELETE FROM \"chat\".\"attachments\" x0 USING \"chat\".\"Message Parts\" x1, \"chat\".\"Conversations\" x2"
        ), "{attachments}");
        assert!(
            attachments
                .contains("x0.\"message_id\" = x1.\"id\" AND x1.\"conversation_id\" = x2.\"Id\""),
            "{attachments}"
        );
        assert!(
            sql.pick
                .as_str()
                .contains("\"UserId\" = ANY($1) AND \"bot_id\" = ANY($2)")
        );
        assert!(sql.pick.as_str().contains("FOR UPDATE"));
    }

    #[test]
    fn anonymized_columns_take_their_method_and_the_key_is_bound() {
        let c = Catalog::parse(ANALYTICS, Source::BuiltIn).unwrap();
        let RootSql::Anonymize(AnonymizeSql { batch, keyed }) = root(&c, 0) else {
            panic!("an anonymize store")
        };
        let sql = batch.as_str();
        assert!(keyed);
        assert!(
            sql.contains("\"uid\" = encode(sha256($5::bytea || sha256($4::bytea"),
            "{sql}"
        );
        assert!(sql.contains("\"ip\" = NULL"), "{sql}");
        assert!(sql.contains("\"agent\" = '[erased]'"), "{sql}");
    }

    #[test]
    fn remaining_rows_of_a_child_are_counted_through_its_parents() {
        let c = Catalog::parse(TREE, Source::BuiltIn).unwrap();
        let attachments = c
            .stores
            .iter()
            .position(|s| s.name == "attachments")
            .unwrap();
        let sql = remaining(&c, attachments);
        let sql = sql.as_str();
        assert!(
            sql.starts_with(
                "SELECT x2.\"bot_id\"::text AS bot, count(*) FROM \"chat\".\"attachments\" x0"
            ),
            "{sql}"
        );
        assert!(
            sql.contains("x2.\"UserId\" = ANY($1) AND x2.\"bot_id\" = ANY($2)"),
            "{sql}"
        );
    }
}
