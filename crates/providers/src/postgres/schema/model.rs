//! The schema model shared by the declared spec and the observed catalog: tables, columns,
//! types, defaults, keys, indexes and comments, normalised so that equal means the same to
//! PostgreSQL.

use std::collections::BTreeMap;
use std::fmt;

/// A column type rorqual understands, normalised to how `format_type` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SqlType {
    /// `smallint` (`int2`).
    SmallInt,
    /// `integer` (`int`, `int4`).
    Integer,
    /// `bigint` (`int8`).
    BigInt,
    /// `boolean` (`bool`).
    Boolean,
    /// `text`.
    Text,
    /// `character varying(n)` (`varchar(n)`); no length when `None`.
    Varchar(Option<u32>),
    /// `numeric(p,s)` (`decimal`); any precision when `None`.
    Numeric(Option<(u32, u32)>),
    /// `real` (`float4`).
    Real,
    /// `double precision` (`float8`).
    Double,
    /// `date`.
    Date,
    /// `timestamp without time zone` (`timestamp`).
    Timestamp,
    /// `timestamp with time zone` (`timestamptz`).
    TimestampTz,
    /// `uuid`.
    Uuid,
    /// `json`.
    Json,
    /// `jsonb`.
    Jsonb,
    /// `bytea`.
    Bytea,
    /// A type rorqual does not model (seen in the catalog only; a spec cannot name one).
    Other(String),
}

impl SqlType {
    /// Parses a type as written in a spec or printed by `format_type`; `None` when unknown.
    pub fn parse(text: &str) -> Option<SqlType> {
        let lower = text.trim().to_ascii_lowercase();
        let compact: String = lower.split_whitespace().collect::<Vec<_>>().join(" ");
        let (base, args) = match compact.find('(') {
            Some(open) if compact.ends_with(')') => (
                compact[..open].trim().to_owned(),
                Some(compact[open + 1..compact.len() - 1].to_owned()),
            ),
            Some(_) => return None,
            None => (compact.clone(), None),
        };
        let numbers = |args: &str| -> Option<Vec<u32>> {
            args.split(',')
                .map(|n| n.trim().parse::<u32>().ok())
                .collect()
        };
        let ty = match (base.as_str(), args.as_deref()) {
            ("smallint" | "int2", None) => SqlType::SmallInt,
            ("integer" | "int" | "int4", None) => SqlType::Integer,
            ("bigint" | "int8", None) => SqlType::BigInt,
            ("boolean" | "bool", None) => SqlType::Boolean,
            ("text", None) => SqlType::Text,
            ("varchar" | "character varying", None) => SqlType::Varchar(None),
            ("varchar" | "character varying", Some(n)) => match numbers(n)?.as_slice() {
                [n] if (1..=10_485_760).contains(n) => SqlType::Varchar(Some(*n)),
                _ => return None,
            },
            ("numeric" | "decimal", None) => SqlType::Numeric(None),
            ("numeric" | "decimal", Some(args)) => match numbers(args)?.as_slice() {
                [p] if (1..=1000).contains(p) => SqlType::Numeric(Some((*p, 0))),
                [p, s] if (1..=1000).contains(p) && s <= p => SqlType::Numeric(Some((*p, *s))),
                _ => return None,
            },
            ("real" | "float4", None) => SqlType::Real,
            ("double precision" | "float8", None) => SqlType::Double,
            ("date", None) => SqlType::Date,
            ("timestamp" | "timestamp without time zone", None) => SqlType::Timestamp,
            ("timestamptz" | "timestamp with time zone", None) => SqlType::TimestampTz,
            ("uuid", None) => SqlType::Uuid,
            ("json", None) => SqlType::Json,
            ("jsonb", None) => SqlType::Jsonb,
            ("bytea", None) => SqlType::Bytea,
            _ => return None,
        };
        Some(ty)
    }

    fn is_integer(&self) -> bool {
        matches!(self, SqlType::SmallInt | SqlType::Integer | SqlType::BigInt)
    }

    fn is_number(&self) -> bool {
        self.is_integer() || matches!(self, SqlType::Numeric(_) | SqlType::Real | SqlType::Double)
    }

    fn is_string(&self) -> bool {
        matches!(self, SqlType::Text | SqlType::Varchar(_))
    }

    fn is_time(&self) -> bool {
        matches!(
            self,
            SqlType::Date | SqlType::Timestamp | SqlType::TimestampTz
        )
    }

    /// Whether every value of `self` converts to `to` unchanged (a widening): integers to
    /// wider integers or unbounded numeric, `real` to `double precision`, a varchar to a
    /// longer one or to text, a numeric to one with at least as many digits on each side of
    /// the point.
    pub fn widens_to(&self, to: &SqlType) -> bool {
        use SqlType::*;
        match (self, to) {
            (a, b) if a == b => true,
            (SmallInt, Integer | BigInt) | (Integer, BigInt) => true,
            (SmallInt | Integer | BigInt, Numeric(None)) => true,
            (Real, Double) => true,
            (Varchar(_), Text | Varchar(None)) | (Text, Varchar(None)) => true,
            (Varchar(Some(n)), Varchar(Some(m))) => m >= n,
            (Numeric(Some(_)), Numeric(None)) => true,
            (Numeric(Some((p, s))), Numeric(Some((p2, s2)))) => s2 >= s && p2 - s2 >= p - s,
            _ => false,
        }
    }
}

impl fmt::Display for SqlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SqlType::SmallInt => f.write_str("smallint"),
            SqlType::Integer => f.write_str("integer"),
            SqlType::BigInt => f.write_str("bigint"),
            SqlType::Boolean => f.write_str("boolean"),
            SqlType::Text => f.write_str("text"),
            SqlType::Varchar(None) => f.write_str("character varying"),
            SqlType::Varchar(Some(n)) => write!(f, "character varying({n})"),
            SqlType::Numeric(None) => f.write_str("numeric"),
            SqlType::Numeric(Some((p, s))) => write!(f, "numeric({p},{s})"),
            SqlType::Real => f.write_str("real"),
            SqlType::Double => f.write_str("double precision"),
            SqlType::Date => f.write_str("date"),
            SqlType::Timestamp => f.write_str("timestamp without time zone"),
            SqlType::TimestampTz => f.write_str("timestamp with time zone"),
            SqlType::Uuid => f.write_str("uuid"),
            SqlType::Json => f.write_str("json"),
            SqlType::Jsonb => f.write_str("jsonb"),
            SqlType::Bytea => f.write_str("bytea"),
            SqlType::Other(name) => f.write_str(name),
        }
    }
}

/// A column default, parsed and normalised: what it means, not how it was spelled
/// (`'5'::integer`, `5` and `'5'` are the same default of an integer column).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DefaultExpr {
    /// A number or quoted string constant, as its text (`5`, `-1.5`, `pending`).
    Constant(String),
    /// `true` or `false`.
    Bool(bool),
    /// A call of an allowed function without arguments (`now()`, `gen_random_uuid()`, see
    /// [`CALLS`]); run as `pg_catalog.now()` so no other schema's function of that name is
    /// called.
    Call(String),
    /// An SQL value keyword (`CURRENT_TIMESTAMP`, `CURRENT_DATE`, `CURRENT_USER`).
    Keyword(String),
    /// An expression rorqual does not model (seen in the catalog only), as printed.
    Raw(String),
}

/// The value keywords a default may use.
const KEYWORDS: [&str; 6] = [
    "CURRENT_TIMESTAMP",
    "CURRENT_DATE",
    "CURRENT_TIME",
    "LOCALTIMESTAMP",
    "LOCALTIME",
    "CURRENT_USER",
];

/// The functions a default may call (without arguments), each with the types it fits:
/// `true` for the date and time types, `false` for `uuid`. Only these: a default runs with
/// the rights of whoever inserts, and any other function could do anything.
pub const CALLS: [(&str, bool); 5] = [
    ("now", true),
    ("clock_timestamp", true),
    ("statement_timestamp", true),
    ("transaction_timestamp", true),
    ("gen_random_uuid", false),
];

impl DefaultExpr {
    /// Parses a default: a number, a quoted string (`'it''s'`), `true`/`false`, `null`
    /// (no default: `Ok(None)`), a call without arguments of a function in [`CALLS`]
    /// (optionally written `pg_catalog.now()`), or a value keyword;
    /// each optionally followed by casts (`::text`), which must name known types.
    ///
    /// # Errors
    ///
    /// What does not parse, and where.
    pub fn parse(text: &str) -> Result<Option<DefaultExpr>, String> {
        let text = text.trim();
        let (mut expr, mut rest) = constant(text)?;
        loop {
            let trimmed = rest.trim_start();
            if trimmed.is_empty() {
                break;
            }
            let Some(after) = trimmed.strip_prefix("::") else {
                return Err(format!("unexpected {trimmed:?} after the value"));
            };
            let end = after.find("::").unwrap_or(after.len());
            let ty = &after[..end];
            if SqlType::parse(ty).is_none() {
                return Err(format!("unknown type {:?} in a cast", ty.trim()));
            }
            rest = &after[end..];
        }
        if let Some(DefaultExpr::Keyword(k)) = &expr
            && k == "NULL"
        {
            expr = None;
        }
        Ok(expr)
    }

    /// Checks that the default can be a value of `ty`.
    ///
    /// # Errors
    ///
    /// Why it cannot.
    pub fn check_type(&self, ty: &SqlType) -> Result<(), String> {
        match self {
            DefaultExpr::Bool(_) if *ty != SqlType::Boolean => {
                Err(format!("a boolean cannot be a default of type {ty}"))
            }
            DefaultExpr::Constant(value) if ty.is_number() && value.parse::<f64>().is_err() => {
                Err(format!("{value:?} is not a number (type {ty})"))
            }
            DefaultExpr::Constant(value) if ty.is_integer() && value.parse::<i64>().is_err() => {
                Err(format!("{value:?} is not an integer (type {ty})"))
            }
            DefaultExpr::Constant(value)
                if *ty == SqlType::Boolean
                    && ![
                        "true", "false", "t", "f", "yes", "no", "on", "off", "1", "0",
                    ]
                    .contains(&value.to_ascii_lowercase().as_str()) =>
            {
                Err(format!("{value:?} is not a boolean"))
            }
            DefaultExpr::Constant(value) if *ty == SqlType::Uuid && !is_uuid(value) => {
                Err(format!("{value:?} is not a UUID"))
            }
            DefaultExpr::Constant(value)
                if matches!(ty, SqlType::Json | SqlType::Jsonb)
                    && serde_json::from_str::<serde_json::Value>(value).is_err() =>
            {
                Err(format!("{value:?} is not JSON"))
            }
            DefaultExpr::Constant(value) if *ty == SqlType::Varchar(None) || ty.is_string() => {
                match ty {
                    SqlType::Varchar(Some(n)) if value.chars().count() > *n as usize => {
                        Err(format!("{value:?} is longer than {n} characters"))
                    }
                    _ => Ok(()),
                }
            }
            DefaultExpr::Keyword(k) if k != "CURRENT_USER" && !ty.is_time() => {
                Err(format!("{k} is not a value of type {ty}"))
            }
            DefaultExpr::Keyword(k) if k == "CURRENT_USER" && !ty.is_string() => {
                Err(format!("{k} is not a value of type {ty}"))
            }
            DefaultExpr::Call(name)
                if CALLS.iter().any(|(f, time)| {
                    f == name && (*time != ty.is_time() || (!*time && *ty != SqlType::Uuid))
                }) =>
            {
                Err(format!("{name}() is not a value of type {ty}"))
            }
            _ => Ok(()),
        }
    }

    /// The default as PostgreSQL keeps it for a column of type `ty`, so that a declared and
    /// an observed default compare equal when they mean the same: integers without leading
    /// zeros (`007` is `7`), floats as their value (`1.50` is `1.5`), numerics without
    /// leading or trailing zeros, UUIDs in lower case, booleans as `true`/`false`.
    #[must_use]
    pub fn normalize(self, ty: &SqlType) -> DefaultExpr {
        let DefaultExpr::Constant(value) = self else {
            return self;
        };
        let text = value.trim();
        let normal = match ty {
            t if t.is_integer() => text.parse::<i64>().ok().map(|n| n.to_string()),
            SqlType::Real => text.parse::<f32>().ok().map(|n| n.to_string()),
            SqlType::Double => text.parse::<f64>().ok().map(|n| n.to_string()),
            SqlType::Numeric(_) => decimal(text),
            SqlType::Uuid if is_uuid(text) => Some(text.to_ascii_lowercase()),
            SqlType::Boolean => match text.to_ascii_lowercase().as_str() {
                "true" | "t" | "yes" | "y" | "on" | "1" => return DefaultExpr::Bool(true),
                "false" | "f" | "no" | "n" | "off" | "0" => return DefaultExpr::Bool(false),
                _ => None,
            },
            _ => None,
        };
        DefaultExpr::Constant(normal.unwrap_or(value))
    }

    /// The default as SQL.
    pub fn to_sql(&self) -> String {
        match self {
            DefaultExpr::Constant(value) => super::super::literal(value),
            DefaultExpr::Bool(b) => b.to_string(),
            DefaultExpr::Call(name) => format!("pg_catalog.{name}()"),
            DefaultExpr::Keyword(k) => k.clone(),
            DefaultExpr::Raw(text) => text.clone(),
        }
    }
}

/// As written for people: like [`DefaultExpr::to_sql`], calls without their schema.
impl fmt::Display for DefaultExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DefaultExpr::Call(name) => write!(f, "{name}()"),
            other => f.write_str(&other.to_sql()),
        }
    }
}

/// A plain decimal (`-012.50`) without leading zeros before the point and trailing zeros
/// after it (`-12.5`); `None` for anything else (exponents), which is kept as written.
fn decimal(text: &str) -> Option<String> {
    let (sign, digits) = match text.strip_prefix('-') {
        Some(rest) => ("-", rest),
        None => ("", text.strip_prefix('+').unwrap_or(text)),
    };
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    if whole.is_empty() && fraction.is_empty()
        || !whole
            .chars()
            .chain(fraction.chars())
            .all(|c| c.is_ascii_digit())
    {
        return None;
    }
    let whole = whole.trim_start_matches('0');
    let fraction = fraction.trim_end_matches('0');
    let whole = if whole.is_empty() { "0" } else { whole };
    let zero = whole == "0" && fraction.is_empty();
    let sign = if zero { "" } else { sign };
    Some(if fraction.is_empty() {
        format!("{sign}{whole}")
    } else {
        format!("{sign}{whole}.{fraction}")
    })
}

fn is_uuid(text: &str) -> bool {
    let hex: String = text.chars().filter(|c| *c != '-').collect();
    hex.len() == 32 && hex.chars().all(|c| c.is_ascii_hexdigit())
}

/// The constant at the start of `text` and what follows it.
fn constant(text: &str) -> Result<(Option<DefaultExpr>, &str), String> {
    if text.is_empty() {
        return Err("is empty".into());
    }
    if let Some(body) = text.strip_prefix('\'') {
        let mut value = String::new();
        let mut chars = body.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            if c == '\'' {
                if chars.peek().map(|(_, c)| *c) == Some('\'') {
                    chars.next();
                    value.push('\'');
                } else {
                    return Ok((Some(DefaultExpr::Constant(value)), &body[i + 1..]));
                }
            } else {
                value.push(c);
            }
        }
        return Err("a quoted string is not closed".into());
    }
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest.trim_start()),
        None => (false, text),
    };
    if unsigned.starts_with(|c: char| c.is_ascii_digit() || c == '.') {
        let end = unsigned
            .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == 'e' || c == 'E'))
            .unwrap_or(unsigned.len());
        let number = &unsigned[..end];
        if number.parse::<f64>().is_err() {
            return Err(format!("{number:?} is not a number"));
        }
        let value = if negative {
            format!("-{number}")
        } else {
            number.to_owned()
        };
        return Ok((Some(DefaultExpr::Constant(value)), &unsigned[end..]));
    }
    if negative {
        return Err("`-` must be followed by a number".into());
    }
    let end = text
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(text.len());
    if end == 0 {
        return Err(format!("unexpected {text:?}"));
    }
    let mut word = &text[..end];
    let mut rest = &text[end..];
    // `pg_catalog.now()`, as written or as PostgreSQL prints a qualified call.
    if word.eq_ignore_ascii_case("pg_catalog")
        && let Some(after) = rest.strip_prefix('.')
    {
        let end = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        if end == 0 || !after[end..].trim_start().starts_with('(') {
            return Err("`pg_catalog.` must be followed by a call".into());
        }
        word = &after[..end];
        rest = &after[end..];
    }
    if let Some(after) = rest.trim_start().strip_prefix('(') {
        let Some(after) = after.trim_start().strip_prefix(')') else {
            return Err(format!(
                "a call of {word} may have no arguments and must close with `)`"
            ));
        };
        let name = word.to_ascii_lowercase();
        if !CALLS.iter().any(|(f, _)| *f == name) {
            let allowed: Vec<String> = CALLS.iter().map(|(f, _)| format!("{f}()")).collect();
            return Err(format!(
                "{word}() is not a function a default may call (allowed: {}, or a value keyword such as CURRENT_TIMESTAMP)",
                allowed.join(", ")
            ));
        }
        return Ok((Some(DefaultExpr::Call(name)), after));
    }
    let upper = word.to_ascii_uppercase();
    let expr = match upper.as_str() {
        "TRUE" => DefaultExpr::Bool(true),
        "FALSE" => DefaultExpr::Bool(false),
        "NULL" => DefaultExpr::Keyword(upper),
        k if KEYWORDS.contains(&k) => DefaultExpr::Keyword(upper),
        _ => {
            return Err(format!(
                "{word:?} is not a value, a call or a value keyword"
            ));
        }
    };
    Ok((Some(expr), rest))
}

/// A column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Its name.
    pub name: String,
    /// Its type.
    pub ty: SqlType,
    /// Whether it may hold NULL.
    pub nullable: bool,
    /// Its default, if any.
    pub default: Option<DefaultExpr>,
    /// Its comment, if any.
    pub comment: Option<String>,
}

/// An index (not the primary key's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Index {
    /// Its columns, in order.
    pub columns: Vec<String>,
    /// Whether it is unique.
    pub unique: bool,
}

/// A single-column foreign key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ForeignKey {
    /// The referencing column.
    pub column: String,
    /// The referenced table (in the same schema).
    pub table: String,
    /// The referenced column.
    pub references: String,
}

/// A table.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Table {
    /// Its columns, in order.
    pub columns: Vec<Column>,
    /// Its primary key's columns (empty: none).
    pub primary_key: Vec<String>,
    /// The primary key constraint's name, when it has one (observed).
    pub primary_key_name: Option<String>,
    /// Its indexes by name.
    pub indexes: BTreeMap<String, Index>,
    /// Its foreign keys by constraint name.
    pub foreign_keys: BTreeMap<String, ForeignKey>,
    /// Indexes seen in the catalog that rorqual does not model and never changes: those
    /// backing a constraint, on an expression, or partial (observed only).
    pub unmanaged_indexes: std::collections::BTreeSet<String>,
    /// Its comment, if any.
    pub comment: Option<String>,
}

impl Table {
    /// The column named `name`.
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }
}

/// A schema: its tables by name. Empty tables map and `exists: false` for a missing schema.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Schema {
    /// Whether the PostgreSQL schema exists.
    pub exists: bool,
    /// Its tables by name.
    pub tables: BTreeMap<String, Table>,
}
