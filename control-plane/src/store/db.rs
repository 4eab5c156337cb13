//! The one interface the catalogue's queries use, over SQLite (embedded, the default) and
//! PostgreSQL (`serve --database`, shared by replicas).
//!
//! Its surface is the part of rusqlite's the store needs (`execute`, `query_row`, `prepare`,
//! `query_map`, `query`), so that every query is written once. SQL is written with SQLite's
//! numbered placeholders (`?1`), which both databases read once PostgreSQL's are substituted
//! (`$1`, done here); the few statements whose dialects differ are chosen by
//! [`Db::is_postgres`]. Values cross as [`Value`]: integers as `i64`, whatever width the
//! column has, so one binding serves both (PostgreSQL's columns are `BIGINT`, SQLite's are
//! all 64-bit).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::error::Error as StdError;

use bytes::BytesMut;
use postgres_types::{FromSql, IsNull, ToSql, Type};

use crate::error::Error;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A value bound to a statement or read from a row.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

/// What can be bound as a statement parameter.
pub trait ToValue {
    fn to_value(&self) -> Value;
}

macro_rules! int_to_value {
    ($($t:ty),*) => {$(
        impl ToValue for $t {
            fn to_value(&self) -> Value {
                Value::Int(*self as i64)
            }
        }
    )*};
}
// u64 and usize above i64::MAX do not occur (ids, counts, revisions); they would wrap.
int_to_value!(i64, i32, i16, u32, u16, u8, u64, usize);

impl ToValue for bool {
    fn to_value(&self) -> Value {
        Value::Int(i64::from(*self))
    }
}

impl ToValue for f64 {
    fn to_value(&self) -> Value {
        Value::Real(*self)
    }
}

impl ToValue for str {
    fn to_value(&self) -> Value {
        Value::Text(self.to_owned())
    }
}

impl ToValue for String {
    fn to_value(&self) -> Value {
        Value::Text(self.clone())
    }
}

impl ToValue for [u8] {
    fn to_value(&self) -> Value {
        Value::Blob(self.to_vec())
    }
}

impl ToValue for Vec<u8> {
    fn to_value(&self) -> Value {
        Value::Blob(self.clone())
    }
}

impl ToValue for Value {
    fn to_value(&self) -> Value {
        self.clone()
    }
}

impl<T: ToValue> ToValue for Option<T> {
    fn to_value(&self) -> Value {
        self.as_ref().map_or(Value::Null, ToValue::to_value)
    }
}

impl<T: ToValue + ?Sized> ToValue for &T {
    fn to_value(&self) -> Value {
        (**self).to_value()
    }
}

/// A statement's parameters: `[]`, an array of one type, or [`params!`] for mixed types.
pub trait Params {
    fn values(&self) -> Vec<Value>;
}

impl Params for [&dyn ToValue; 0] {
    fn values(&self) -> Vec<Value> {
        Vec::new()
    }
}

impl Params for &[&dyn ToValue] {
    fn values(&self) -> Vec<Value> {
        self.iter().map(|v| v.to_value()).collect()
    }
}

impl<const N: usize> Params for &[&dyn ToValue; N] {
    fn values(&self) -> Vec<Value> {
        self.iter().map(|v| v.to_value()).collect()
    }
}

macro_rules! array_params {
    ($($n:literal),*) => {$(
        impl<T: ToValue> Params for [T; $n] {
            fn values(&self) -> Vec<Value> {
                self.iter().map(ToValue::to_value).collect()
            }
        }
    )*};
}
array_params!(1, 2, 3, 4, 5, 6, 7, 8);

/// Parameters of mixed types, like rusqlite's macro of the same name.
#[macro_export]
macro_rules! params {
    () => {
        &[] as &[&dyn $crate::store::db::ToValue]
    };
    ($($p:expr),+ $(,)?) => {
        &[$(&$p as &dyn $crate::store::db::ToValue),+] as &[&dyn $crate::store::db::ToValue]
    };
}
pub use crate::params;

/// What a column can be read as.
pub trait FromValue: Sized {
    fn from_value(value: ValueRef<'_>) -> Result<Self>;
}

/// A column's value as read, borrowed from the row.
#[derive(Debug, Clone, Copy)]
pub enum ValueRef<'a> {
    Null,
    Int(i64),
    Real(f64),
    Text(&'a str),
    Blob(&'a [u8]),
}

impl ValueRef<'_> {
    fn kind(&self) -> &'static str {
        match self {
            ValueRef::Null => "NULL",
            ValueRef::Int(_) => "an integer",
            ValueRef::Real(_) => "a real",
            ValueRef::Text(_) => "text",
            ValueRef::Blob(_) => "a blob",
        }
    }
}

fn unexpected(value: ValueRef<'_>, want: &str) -> Error {
    Error::Internal(format!(
        "storage: read {} where {want} was expected",
        value.kind()
    ))
}

impl FromValue for i64 {
    fn from_value(value: ValueRef<'_>) -> Result<Self> {
        match value {
            ValueRef::Int(i) => Ok(i),
            other => Err(unexpected(other, "an integer")),
        }
    }
}

macro_rules! narrow_from_value {
    ($($t:ty),*) => {$(
        impl FromValue for $t {
            fn from_value(value: ValueRef<'_>) -> Result<Self> {
                let wide = i64::from_value(value)?;
                <$t>::try_from(wide).map_err(|_| {
                    Error::Internal(format!(
                        "storage: {wide} is out of range for {}",
                        stringify!($t)
                    ))
                })
            }
        }
    )*};
}
narrow_from_value!(i32, u32, u16, u8, u64, usize);

impl FromValue for bool {
    fn from_value(value: ValueRef<'_>) -> Result<Self> {
        Ok(i64::from_value(value)? != 0)
    }
}

impl FromValue for f64 {
    fn from_value(value: ValueRef<'_>) -> Result<Self> {
        match value {
            ValueRef::Real(f) => Ok(f),
            ValueRef::Int(i) => Ok(i as f64),
            other => Err(unexpected(other, "a number")),
        }
    }
}

impl FromValue for String {
    fn from_value(value: ValueRef<'_>) -> Result<Self> {
        match value {
            ValueRef::Text(s) => Ok(s.to_owned()),
            other => Err(unexpected(other, "text")),
        }
    }
}

impl FromValue for Vec<u8> {
    fn from_value(value: ValueRef<'_>) -> Result<Self> {
        match value {
            ValueRef::Blob(b) => Ok(b.to_vec()),
            // SQLite keeps what a literal wrote as text.
            ValueRef::Text(s) => Ok(s.as_bytes().to_vec()),
            other => Err(unexpected(other, "a blob")),
        }
    }
}

impl<T: FromValue> FromValue for Option<T> {
    fn from_value(value: ValueRef<'_>) -> Result<Self> {
        match value {
            ValueRef::Null => Ok(None),
            other => T::from_value(other).map(Some),
        }
    }
}

/// A column index (columns are read by position).
pub trait ColumnIndex {
    fn index(self) -> usize;
}

impl ColumnIndex for usize {
    fn index(self) -> usize {
        self
    }
}

/// One row of a result.
pub enum Row<'r> {
    Sqlite(&'r rusqlite::Row<'r>),
    Postgres(&'r postgres::Row),
}

impl Row<'_> {
    /// Column `index` as `T`. Two type parameters, like rusqlite's, so `get::<_, i64>(0)` reads.
    pub fn get<I: ColumnIndex, T: FromValue>(&self, index: I) -> Result<T> {
        let index = index.index();
        match self {
            Row::Sqlite(row) => {
                use rusqlite::types::ValueRef as S;
                let value = match row.get_ref(index)? {
                    S::Null => ValueRef::Null,
                    S::Integer(i) => ValueRef::Int(i),
                    S::Real(f) => ValueRef::Real(f),
                    S::Text(t) => ValueRef::Text(std::str::from_utf8(t).map_err(|e| {
                        Error::Internal(format!("storage: column {index} is not UTF-8: {e}"))
                    })?),
                    S::Blob(b) => ValueRef::Blob(b),
                };
                T::from_value(value)
            }
            Row::Postgres(row) => {
                let value: Read = row.try_get(index)?;
                T::from_value(value.as_ref())
            }
        }
    }
}

/// A PostgreSQL column decoded whatever its type, as [`Value`] does for SQLite.
struct Read(Value);

impl Read {
    fn as_ref(&self) -> ValueRef<'_> {
        match &self.0 {
            Value::Null => ValueRef::Null,
            Value::Int(i) => ValueRef::Int(*i),
            Value::Real(f) => ValueRef::Real(*f),
            Value::Text(s) => ValueRef::Text(s),
            Value::Blob(b) => ValueRef::Blob(b),
        }
    }
}

type BoxError = Box<dyn StdError + Sync + Send>;

impl<'a> FromSql<'a> for Read {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
        let value = match *ty {
            Type::INT8 => Value::Int(i64::from_sql(ty, raw)?),
            Type::INT4 => Value::Int(i32::from_sql(ty, raw)?.into()),
            Type::INT2 => Value::Int(i16::from_sql(ty, raw)?.into()),
            Type::BOOL => Value::Int(bool::from_sql(ty, raw)?.into()),
            Type::FLOAT8 => Value::Real(f64::from_sql(ty, raw)?),
            Type::FLOAT4 => Value::Real(f32::from_sql(ty, raw)?.into()),
            Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => {
                Value::Text(String::from_sql(ty, raw)?)
            }
            Type::BYTEA => Value::Blob(Vec::<u8>::from_sql(ty, raw)?),
            _ => return Err(format!("column type {ty} is not read by the catalogue").into()),
        };
        Ok(Read(value))
    }

    fn from_sql_null(_: &Type) -> Result<Self, BoxError> {
        Ok(Read(Value::Null))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

impl ToSql for Value {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        match (self, ty) {
            (Value::Null, _) => Ok(IsNull::Yes),
            (Value::Int(i), &Type::INT8) => i.to_sql(ty, out),
            (Value::Int(i), &Type::INT4) => i32::try_from(*i)?.to_sql(ty, out),
            (Value::Int(i), &Type::INT2) => i16::try_from(*i)?.to_sql(ty, out),
            (Value::Int(i), &Type::BOOL) => (*i != 0).to_sql(ty, out),
            (Value::Int(i), &Type::FLOAT8) => (*i as f64).to_sql(ty, out),
            (Value::Int(i), &Type::TEXT | &Type::VARCHAR) => i.to_string().to_sql(ty, out),
            (Value::Real(f), &Type::FLOAT8) => f.to_sql(ty, out),
            (Value::Real(f), &Type::FLOAT4) => (*f as f32).to_sql(ty, out),
            (Value::Text(s), &Type::TEXT | &Type::VARCHAR | &Type::BPCHAR | &Type::NAME) => {
                s.as_str().to_sql(ty, out)
            }
            (Value::Text(s), &Type::BYTEA) => s.as_bytes().to_sql(ty, out),
            (Value::Blob(b), &Type::BYTEA) => b.as_slice().to_sql(ty, out),
            (value, ty) => Err(format!("cannot bind {value:?} as {ty}").into()),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    postgres_types::to_sql_checked!();
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef as S};
        Ok(ToSqlOutput::Borrowed(match self {
            Value::Null => S::Null,
            Value::Int(i) => S::Integer(*i),
            Value::Real(f) => S::Real(*f),
            Value::Text(s) => S::Text(s.as_bytes()),
            Value::Blob(b) => S::Blob(b),
        }))
    }
}

/// A PostgreSQL connection as the store holds it: reconnected when found closed (the server
/// restarted), with its prepared statements by SQL text.
pub struct PgConn {
    config: postgres::Config,
    client: RefCell<Option<postgres::Client>>,
    statements: RefCell<HashMap<String, postgres::Statement>>,
    /// Between BEGIN and its end: a lost connection is then an error, never a new connection
    /// on which the rest of the transaction would run outside it.
    in_transaction: Cell<bool>,
}

impl PgConn {
    /// Connects on first use.
    pub fn new(config: postgres::Config) -> PgConn {
        PgConn {
            config,
            client: RefCell::new(None),
            statements: RefCell::new(HashMap::new()),
            in_transaction: Cell::new(false),
        }
    }

    /// Runs `f` on the connection, connecting first when there is none (or it closed).
    fn with_client<T>(
        &self,
        f: impl FnOnce(&mut postgres::Client, &mut HashMap<String, postgres::Statement>) -> Result<T>,
    ) -> Result<T> {
        let mut client = self.client.borrow_mut();
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            if self.in_transaction.get() {
                *client = None;
                return Err(Error::Storage(
                    "PostgreSQL: the connection was lost during a transaction".into(),
                ));
            }
            self.statements.borrow_mut().clear();
            *client = Some(self.config.connect(postgres::NoTls)?);
        }
        let Some(connected) = client.as_mut() else {
            return Err(Error::Internal("no PostgreSQL connection".into()));
        };
        let outcome = f(connected, &mut self.statements.borrow_mut());
        if connected.is_closed() {
            *client = None;
        }
        outcome
    }

    fn statement(&self, sql: &str) -> Result<postgres::Statement> {
        self.with_client(|client, statements| {
            if let Some(statement) = statements.get(sql) {
                return Ok(statement.clone());
            }
            let statement = client.prepare(&postgres_placeholders(sql))?;
            statements.insert(sql.to_owned(), statement.clone());
            Ok(statement)
        })
    }

    fn query(
        &self,
        statement: &postgres::Statement,
        values: &[Value],
    ) -> Result<Vec<postgres::Row>> {
        let params: Vec<&(dyn ToSql + Sync)> =
            values.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
        self.with_client(|client, _| Ok(client.query(statement, &params)?))
    }

    fn execute(&self, statement: &postgres::Statement, values: &[Value]) -> Result<usize> {
        let params: Vec<&(dyn ToSql + Sync)> =
            values.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
        self.with_client(|client, _| Ok(client.execute(statement, &params)? as usize))
    }

    pub fn batch(&self, sql: &str) -> Result<()> {
        self.with_client(|client, _| Ok(client.batch_execute(sql)?))
    }

    /// Runs `f` between `begin` (`BEGIN …` and what must come first) and `COMMIT`, or
    /// `ROLLBACK` when it fails.
    ///
    /// A connection that died while idle (PostgreSQL restarted, a proxy dropped it) is only
    /// found out by the `begin` that uses it; nothing has begun then, so `begin` runs once more
    /// on a new connection.
    pub fn transaction<T>(&self, begin: &str, f: impl FnOnce(Db<'_>) -> Result<T>) -> Result<T> {
        if let Err(e) = self.batch(begin) {
            if self.client.borrow().is_some() {
                return Err(e);
            }
            tracing::info!(error = %e, "PostgreSQL connection lost while idle: connecting again");
            self.batch(begin)?;
        }
        self.in_transaction.set(true);
        let outcome = f(Db::Postgres(self));
        let end = self.batch(if outcome.is_ok() {
            "COMMIT"
        } else {
            "ROLLBACK"
        });
        self.in_transaction.set(false);
        let out = outcome?;
        end?;
        Ok(out)
    }
}

/// `?N` → `$N` outside quoted text and comments.
fn postgres_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' | '"' => {
                out.push(c);
                for inner in chars.by_ref() {
                    out.push(inner);
                    if inner == c {
                        break;
                    }
                }
            }
            '-' if chars.peek() == Some(&'-') => {
                out.push(c);
                for inner in chars.by_ref() {
                    out.push(inner);
                    if inner == '\n' {
                        break;
                    }
                }
            }
            '?' if chars.peek().is_some_and(char::is_ascii_digit) => out.push('$'),
            _ => out.push(c),
        }
    }
    out
}

/// A connection inside one transaction, as every query function takes it.
#[derive(Clone, Copy)]
pub enum Db<'c> {
    Sqlite(&'c rusqlite::Connection),
    Postgres(&'c PgConn),
}

impl<'c> Db<'c> {
    pub fn is_postgres(&self) -> bool {
        matches!(self, Db::Postgres(_))
    }

    pub fn prepare(&self, sql: &str) -> Result<Statement<'c>> {
        Ok(match *self {
            Db::Sqlite(conn) => Statement::Sqlite(conn.prepare_cached(sql)?),
            Db::Postgres(conn) => Statement::Postgres {
                conn,
                statement: conn.statement(sql)?,
            },
        })
    }

    /// The same as [`Db::prepare`]: both keep prepared statements by their SQL.
    pub fn prepare_cached(&self, sql: &str) -> Result<Statement<'c>> {
        self.prepare(sql)
    }

    pub fn execute(&self, sql: &str, params: impl Params) -> Result<usize> {
        self.prepare(sql)?.execute(params)
    }

    pub fn query_row<T>(
        &self,
        sql: &str,
        params: impl Params,
        f: impl FnOnce(&Row<'_>) -> Result<T>,
    ) -> Result<T> {
        self.prepare(sql)?.query_row(params, f)
    }

    /// Like [`Db::query_row`], `None` for no row.
    pub fn query_opt<T>(
        &self,
        sql: &str,
        params: impl Params,
        f: impl FnOnce(&Row<'_>) -> Result<T>,
    ) -> Result<Option<T>> {
        self.prepare(sql)?.query_opt(params, f)
    }

    /// Statements separated by `;`, without parameters.
    pub fn execute_batch(&self, sql: &str) -> Result<()> {
        match self {
            Db::Sqlite(conn) => Ok(conn.execute_batch(sql)?),
            Db::Postgres(conn) => conn.batch(sql),
        }
    }
}

pub enum Statement<'c> {
    Sqlite(rusqlite::CachedStatement<'c>),
    Postgres {
        conn: &'c PgConn,
        statement: postgres::Statement,
    },
}

impl Statement<'_> {
    pub fn execute(&mut self, params: impl Params) -> Result<usize> {
        let values = params.values();
        match self {
            Statement::Sqlite(stmt) => Ok(stmt.execute(rusqlite::params_from_iter(&values))?),
            Statement::Postgres { conn, statement } => conn.execute(statement, &values),
        }
    }

    /// The rows of the result, read one at a time.
    pub fn query(&mut self, params: impl Params) -> Result<Rows<'_>> {
        let values = params.values();
        Ok(match self {
            Statement::Sqlite(stmt) => {
                Rows::Sqlite(stmt.query(rusqlite::params_from_iter(values))?)
            }
            Statement::Postgres { conn, statement } => Rows::Postgres {
                rows: conn.query(statement, &values)?.into_iter(),
                current: None,
            },
        })
    }

    pub fn query_map<T>(
        &mut self,
        params: impl Params,
        mut f: impl FnMut(&Row<'_>) -> Result<T>,
    ) -> Result<std::vec::IntoIter<Result<T>>> {
        let mut rows = self.query(params)?;
        let mut out = Vec::new();
        while let Some(row) = rows.next_row()? {
            let mapped = f(&row);
            let failed = mapped.is_err();
            out.push(mapped);
            if failed {
                break;
            }
        }
        Ok(out.into_iter())
    }

    pub fn query_opt<T>(
        &mut self,
        params: impl Params,
        f: impl FnOnce(&Row<'_>) -> Result<T>,
    ) -> Result<Option<T>> {
        let mut rows = self.query(params)?;
        match rows.next_row()? {
            Some(row) => f(&row).map(Some),
            None => Ok(None),
        }
    }

    pub fn query_row<T>(
        &mut self,
        params: impl Params,
        f: impl FnOnce(&Row<'_>) -> Result<T>,
    ) -> Result<T> {
        self.query_opt(params, f)?
            .ok_or_else(|| Error::Internal("storage: a query expected a row and got none".into()))
    }
}

pub enum Rows<'s> {
    Sqlite(rusqlite::Rows<'s>),
    Postgres {
        rows: std::vec::IntoIter<postgres::Row>,
        current: Option<postgres::Row>,
    },
}

impl Rows<'_> {
    pub fn next_row(&mut self) -> Result<Option<Row<'_>>> {
        match self {
            Rows::Sqlite(rows) => Ok(rows.next()?.map(Row::Sqlite)),
            Rows::Postgres { rows, current } => {
                *current = rows.next();
                Ok(current.as_ref().map(Row::Postgres))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_for_postgres_outside_quotes() {
        assert_eq!(
            postgres_placeholders("SELECT a FROM t WHERE b = ?1 AND c = '?2' -- ?3\n AND d = ?10"),
            "SELECT a FROM t WHERE b = $1 AND c = '?2' -- ?3\n AND d = $10"
        );
    }

    #[test]
    fn sqlite_round_trips_every_kind_of_value() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        let db = Db::Sqlite(&conn);
        db.execute_batch("CREATE TABLE t (i INTEGER, s TEXT, b BLOB, n INTEGER)")
            .unwrap();
        db.execute(
            "INSERT INTO t VALUES (?1, ?2, ?3, ?4)",
            params![7u16, "x", vec![1u8, 2], None::<i64>],
        )
        .unwrap();
        let row = db
            .query_row("SELECT i, s, b, n FROM t", [], |r| {
                Ok((
                    r.get::<_, u16>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                    r.get::<_, Option<i64>>(3)?,
                ))
            })
            .unwrap();
        assert_eq!(row, (7, "x".to_owned(), vec![1, 2], None));
        assert!(db
            .query_opt("SELECT i FROM t WHERE i = ?1", [8], |r| r.get::<_, i64>(0))
            .unwrap()
            .is_none());
    }
}
