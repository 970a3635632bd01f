//! Names from the catalog (tables, columns), validated once and only ever pasted into SQL
//! quoted: an [`Ident`] is the name exactly as PostgreSQL spells it in its catalog, and
//! [`Ident::quoted`] doubles any `"` inside, so no name can end a quoted identifier early.

use std::fmt;

/// PostgreSQL truncates identifiers to 63 bytes (NAMEDATALEN - 1); a longer name could never
/// match a catalog entry.
const MAX_BYTES: usize = 63;

/// One identifier, as PostgreSQL spells it (case kept; the quotes of a quoted form removed).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct Ident(String);

impl Ident {
    /// Reads one identifier: either plain (`user_id`, `UserId`: letters, digits, `_` and `$`,
    /// not starting with a digit or `$`) or quoted (`"Message Parts"`, with `""` for a quote
    /// inside). Either way the name is taken as written: no case folding.
    pub fn parse(text: &str) -> Result<Self, String> {
        let name = match text.strip_prefix('"') {
            Some(rest) => {
                let inner = rest
                    .strip_suffix('"')
                    .ok_or_else(|| format!("{text:?} opens a quote it does not close"))?;
                if inner.replace("\"\"", "").contains('"') {
                    return Err(format!(
                        "{text:?}: a quote inside a quoted name is written \"\""
                    ));
                }
                inner.replace("\"\"", "\"")
            }
            None => {
                let mut chars = text.chars();
                let plain = chars
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                    && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$');
                if !plain {
                    return Err(format!(
                        "{text:?} is not a name: use letters, digits, _ and $ (not first), or a quoted name"
                    ));
                }
                text.to_string()
            }
        };
        if name.is_empty() {
            return Err("a name is empty".into());
        }
        if name.chars().any(char::is_control) {
            return Err(format!("{text:?} contains a control character"));
        }
        if name.len() > MAX_BYTES {
            return Err(format!("{text:?} is longer than PostgreSQL's 63 bytes"));
        }
        Ok(Self(name))
    }

    /// The name as PostgreSQL spells it (for catalog lookups, bound as a value).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name quoted for SQL text: the only form in which a name enters a statement.
    pub fn quoted(&self) -> String {
        format!("\"{}\"", self.0.replace('"', "\"\""))
    }
}

impl fmt::Display for Ident {
    /// Shown as it would be written in the catalog file.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if Self::parse(&self.0).as_ref() == Ok(self) {
            f.write_str(&self.0)
        } else {
            f.write_str(&self.quoted())
        }
    }
}

/// A table, `[schema.]table` (schema `public` when omitted).
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub struct TableName {
    pub schema: Ident,
    pub table: Ident,
}

impl TableName {
    pub fn parse(text: &str) -> Result<Self, String> {
        let parts = split_unquoted_dots(text)?;
        match parts.as_slice() {
            [table] => Ok(Self {
                schema: Ident("public".into()),
                table: Ident::parse(table)?,
            }),
            [schema, table] => Ok(Self {
                schema: Ident::parse(schema)?,
                table: Ident::parse(table)?,
            }),
            _ => Err(format!("{text:?} is not [schema.]table")),
        }
    }

    pub fn quoted(&self) -> String {
        format!("{}.{}", self.schema.quoted(), self.table.quoted())
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.table)
    }
}

/// Splits on the dots that are not inside a quoted name.
fn split_unquoted_dots(text: &str) -> Result<Vec<&str>, String> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    for (i, c) in text.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '.' if !quoted => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if quoted {
        return Err(format!("{text:?} opens a quote it does not close"));
    }
    parts.push(&text[start..]);
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_quoted_names_are_taken_as_written() {
        assert_eq!(Ident::parse("user_id").unwrap().as_str(), "user_id");
        assert_eq!(Ident::parse("UserId").unwrap().as_str(), "UserId");
        assert_eq!(
            Ident::parse("\"Message Parts\"").unwrap().as_str(),
            "Message Parts"
        );
        assert_eq!(
            Ident::parse("\"say \"\"hi\"\"\"").unwrap().as_str(),
            "say \"hi\""
        );
        let t = TableName::parse("chat.\"Message Parts\"").unwrap();
        assert_eq!(t.schema.as_str(), "chat");
        assert_eq!(t.table.as_str(), "Message Parts");
        assert_eq!(t.quoted(), "\"chat\".\"Message Parts\"");
        assert_eq!(
            TableName::parse("events").unwrap().schema.as_str(),
            "public"
        );
        assert_eq!(
            TableName::parse("\"a.b\".c").unwrap().schema.as_str(),
            "a.b"
        );
    }

    #[test]
    fn hostile_names_are_refused() {
        for bad in [
            "x\"; DROP TABLE platform.users; --",
            "x; DROP TABLE y",
            "1abc",
            "$x",
            "a b",
            "\"open",
            "\"a\"b\"",
            "",
            "\"\"",
            "\"tab\tname\"",
        ] {
            assert!(Ident::parse(bad).is_err(), "{bad:?} is refused");
        }
        assert!(TableName::parse("a.b.c").is_err());
        assert!(TableName::parse("platform.x\"; DROP TABLE y; --").is_err());
        assert!(Ident::parse(&"a".repeat(64)).is_err());
    }

    #[test]
    fn a_quoted_name_can_never_leave_its_quotes() {
        let evil = Ident::parse("\"x\"\"; DROP TABLE t; --\"").unwrap();
        assert_eq!(evil.as_str(), "x\"; DROP TABLE t; --");
        assert_eq!(evil.quoted(), "\"x\"\"; DROP TABLE t; --\"");
        assert_eq!(evil.to_string(), "\"x\"\"; DROP TABLE t; --\"");
    }
}
