//! Every bad catalog is refused with a message naming the store and the field.

use super::*;

fn problems(text: &str) -> Vec<String> {
    Catalog::parse(text, Source::BuiltIn)
        .err()
        .unwrap_or_else(|| panic!("accepted:\n{text}"))
        .iter()
        .map(Problem::describe)
        .collect()
}

fn refused(text: &str, expected: &str) {
    let found = problems(text);
    assert!(
        found.iter().any(|p| p.contains(expected)),
        "expected {expected:?} among {found:#?}"
    );
}

/// A chat platform's tree under quoted mixed-case names (the SQL tests use it too).
pub(crate) const TREE: &str = r#"
    [[stores]]
    name = "conversations"
    table = "chat.\"Conversations\""
    user_column = "UserId"
    bot_column = "bot_id"

    [[stores]]
    name = "attachments"
    table = "chat.attachments"
    parent = { store = "messages", column = "message_id", references = "id" }

    [[stores]]
    name = "messages"
    table = "chat.\"Message Parts\""
    parent = { store = "conversations", column = "conversation_id", references = "Id" }
"#;

/// An analytics store in a second database, kept but anonymized (the SQL tests use it too).
pub(crate) const ANALYTICS: &str = r#"
    [databases.analytics]
    url_env = "ANALYTICS_DATABASE_URL"

    [[stores]]
    name = "analytics"
    table = "public.events"
    database = "analytics"
    user_column = "uid"
    bot_column = "bot"
    action = "anonymize"
    anonymize = { uid = "hmac", ip = "null", agent = "redact" }
"#;

/// Each edit of [`ROOT`] (`from` replaced by `to`) is refused with a problem containing
/// `expected`.
fn each_refused(edits: &[(&str, &str, &str)]) {
    for (from, to, expected) in edits {
        assert!(ROOT.contains(from), "{from:?} is not in ROOT");
        refused(&ROOT.replace(from, to), expected);
    }
}

const ROOT: &str = r#"
[[stores]]
name = "conversations"
table = "platform.conversations"
user_column = "user_id"
bot_column = "bot_id"
"#;

#[test]
fn the_built_in_catalog_is_the_three_stores_of_the_reference_model() {
    let c = Catalog::built_in();
    let names: Vec<&str> = c.stores.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["conversations", "sessions", "analytics"]);
    assert_eq!(c.stores[2].table.to_string(), "platform.analytics_events");
    assert!(c.stores.iter().all(|s| s.action == Action::Delete));
    assert_eq!(c.digest.len(), 64);
    assert_eq!(c.digest, Catalog::built_in().digest, "the digest is stable");
}

#[test]
fn a_full_catalog_parses_with_children_ordered_after_their_parents() {
    // TOML allows the table of `databases` after stores: the analytics store comes last.
    let text = format!("{TREE}\n{ANALYTICS}");
    let c = Catalog::parse(&text, Source::BuiltIn).unwrap();
    let names: Vec<&str> = c.stores.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        ["conversations", "messages", "attachments", "analytics"]
    );
    assert_eq!(c.descendants(0), [2, 1], "attachments before messages");
    assert_eq!(c.roots().map(|(i, _)| i).collect::<Vec<_>>(), [0, 3]);
    assert_eq!(c.database_of(2), None);
    assert_eq!(c.database_of(3), Some("analytics"));
    assert_eq!(c.databases["analytics"], "ANALYTICS_DATABASE_URL");
    assert_ne!(c.digest, Catalog::built_in().digest);
}

#[test]
fn toml_errors_say_where() {
    refused("stores = [", "not a valid catalog");
    refused(
        &ROOT.replace("user_column", "usr_column"),
        "unknown field `usr_column`",
    );
    refused("", "missing field `stores`");
    refused("stores = []", "declare at least one store");
}

#[test]
fn store_names_are_checked_and_unique() {
    refused(
        &ROOT.replace("\"conversations\"", "\"Conversations\""),
        "store \"Conversations\": name:",
    );
    refused(
        &format!("{ROOT}{ROOT}"),
        "store \"conversations\": name: declared twice",
    );
}

#[test]
fn hostile_and_malformed_names_are_refused_naming_the_field() {
    each_refused(&[
        (
            "platform.conversations",
            "x\\\"; DROP TABLE platform.users; --",
            "store \"conversations\": table: \"x\\\"; DROP TABLE platform.users; --\" opens a quote it does not close",
        ),
        (
            "\"user_id\"",
            "\"x\\\"; DROP TABLE t; --\"",
            "store \"conversations\": user_column: \"x\\\"; DROP TABLE t; --\" is not a name",
        ),
        (
            "\"user_id\"",
            "\"user id\"",
            "store \"conversations\": user_column: \"user id\" is not a name",
        ),
        (
            "platform.conversations",
            "a.b.c",
            "table: \"a.b.c\" is not [schema.]table",
        ),
    ]);
}

#[test]
fn a_root_needs_both_key_columns() {
    each_refused(&[
        (
            "bot_column = \"bot_id\"",
            "",
            "store \"conversations\": bot_column: required",
        ),
        (
            "user_column = \"user_id\"",
            "",
            "store \"conversations\": user_column: required",
        ),
    ]);
}

#[test]
fn children_are_checked() {
    let child = |parent: &str, extra: &str| {
        format!(
            "{ROOT}\n[[stores]]\nname = \"messages\"\ntable = \"chat.messages\"\n{extra}\nparent = {{ store = \"{parent}\", column = \"conversation_id\", references = \"id\" }}\n"
        )
    };
    for (parent, extra, expected) in [
        (
            "nope",
            "",
            "store \"messages\": parent.store: no store is named \"nope\"",
        ),
        (
            "conversations",
            "user_column = \"user_id\"",
            "store \"messages\": parent: a child store has no user_column",
        ),
        (
            "conversations",
            "database = \"analytics\"\n",
            "store \"messages\": database:",
        ),
        (
            "conversations",
            "action = \"anonymize\"\nanonymize = { x = \"null\" }",
            "store \"messages\": action: a child store is deleted with its parent",
        ),
    ] {
        refused(&child(parent, extra), expected);
    }
    // a's parent is b, b's parent is a.
    let cycle: String = [("a", "b"), ("b", "a")]
        .iter()
        .map(|(name, parent)| {
            format!(
                "[[stores]]\nname = \"{name}\"\ntable = \"t.{name}\"\n\
                 parent = {{ store = \"{parent}\", column = \"{parent}_id\", references = \"id\" }}\n"
            )
        })
        .collect();
    refused(&cycle, "parents form a cycle");
}

#[test]
fn databases_are_declared_and_named_by_variable() {
    refused(
        &ROOT.replace(
            "bot_column = \"bot_id\"",
            "bot_column = \"bot_id\"\ndatabase = \"analytics\"",
        ),
        "store \"conversations\": database: no [databases.analytics] is declared",
    );
    refused(
        &format!("[databases.analytics]\nurl_env = \"postgres://u:p@h/db\"\n{ROOT}"),
        "databases.analytics.url_env: \"postgres://u:p@h/db\" is not an environment variable's name",
    );
}

#[test]
fn anonymize_is_checked() {
    let anon = |action: &str, columns: &str| {
        ROOT.replace(
            "bot_column = \"bot_id\"",
            &format!("bot_column = \"bot_id\"\naction = \"{action}\"\n{columns}"),
        )
    };
    for (action, columns, expected) in [
        (
            "anonymize",
            "",
            "store \"conversations\": anonymize: list the columns",
        ),
        (
            "anonymize",
            "anonymize = { ip = \"null\" }",
            "anonymize: must overwrite the user column user_id",
        ),
        (
            "anonymize",
            "anonymize = { user_id = \"scramble\" }",
            "anonymize.user_id: \"scramble\" is not",
        ),
        (
            "delete",
            "anonymize = { user_id = \"hmac\" }",
            "anonymize: only a store with action = \"anonymize\"",
        ),
        (
            "shred",
            "",
            "action: \"shred\" is not \"delete\" or \"anonymize\"",
        ),
    ] {
        refused(&anon(action, columns), expected);
    }
    let ok = Catalog::parse(
        &anon(
            "anonymize",
            "anonymize = { user_id = \"hmac\", note = \"redact\" }",
        ),
        Source::BuiltIn,
    )
    .unwrap();
    assert_eq!(ok.stores[0].action.name(), "anonymize");
}

#[test]
fn every_problem_is_reported_not_only_the_first() {
    let text = r#"
        [[stores]]
        name = "One"
        table = "t.one"
        user_column = "u"
        bot_column = "b"
        [[stores]]
        name = "two"
        table = "t.two"
        user_column = "u"
    "#;
    let found = problems(text);
    assert!(found.len() >= 2, "{found:#?}");
}
