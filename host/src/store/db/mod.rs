//! The journal's connection, whichever database holds it: the embedded SQLite file or a
//! PostgreSQL server. The store's SQL is written once, in the dialect both accept
//! (numbered `?N` parameters, `ON CONFLICT` upserts, `RETURNING`); the PostgreSQL side
//! rewrites what it spells differently ([`postgres::translate`]). Values cross as
//! [`ValueRef`]s (integers, reals, text, bytes), so neither backend's types leak into
//! the store's files, and rows are read through [`Row::get`] with the same conversions
//! on both sides.

mod postgres;
mod sqlite;

use std::fmt;

pub(crate) use postgres::{Hold, IN_USE, PgConn, listen};

/// A value passed to or read from the database: SQLite's five storage classes, which
/// PostgreSQL's columns here map to one to one (BIGINT, DOUBLE PRECISION, TEXT, BYTEA).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ValueRef<'a> {
    /// NULL.
    Null,
    /// An integer (booleans are 0 and 1 on both backends).
    Int(i64),
    /// A real number.
    Real(f64),
    /// Text.
    Text(&'a str),
    /// Bytes.
    Blob(&'a [u8]),
}

/// An owned parameter, for statements put together at run time (filters).
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// An integer.
    Int(i64),
    /// Text.
    Text(String),
}

impl ToValue for Value {
    fn to_value(&self) -> ValueRef<'_> {
        match self {
            Value::Int(i) => ValueRef::Int(*i),
            Value::Text(text) => ValueRef::Text(text),
        }
    }
}

/// `values` as a statement's parameters.
pub fn bind(values: &[Value]) -> Vec<&dyn ToValue> {
    values.iter().map(|v| v as &dyn ToValue).collect()
}

/// A journal operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// SQLite said so.
    #[error("{0}")]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL (or the connection to it) said so.
    #[error("{}", postgres::describe(.0))]
    Postgres(#[from] tokio_postgres::Error),
    /// A value read was not of the type asked for, or something around the database
    /// (its lock file, the connection's thread) failed.
    #[error("{0}")]
    Other(String),
}

/// The result of a database call.
pub type DbResult<T> = Result<T, DbError>;

/// Something that can be a parameter.
pub trait ToValue {
    /// The value bound.
    fn to_value(&self) -> ValueRef<'_>;
}

/// Something a column can be read as.
pub trait FromValue: Sized {
    /// Converts, or says why not.
    fn from_value(value: ValueRef<'_>) -> Result<Self, String>;
}

/// The parameters of a statement, in order: `params![a, b]` binds `?1` and `?2`.
#[macro_export]
#[doc(hidden)]
macro_rules! __store_params {
    ($($param:expr),* $(,)?) => {
        &[$(&$param as &dyn $crate::store::db::ToValue),*] as &[&dyn $crate::store::db::ToValue]
    };
}
pub(crate) use __store_params as params;

impl<T: ToValue + ?Sized> ToValue for &T {
    fn to_value(&self) -> ValueRef<'_> {
        (**self).to_value()
    }
}

impl<T: ToValue> ToValue for Option<T> {
    fn to_value(&self) -> ValueRef<'_> {
        self.as_ref().map_or(ValueRef::Null, ToValue::to_value)
    }
}

impl ToValue for str {
    fn to_value(&self) -> ValueRef<'_> {
        ValueRef::Text(self)
    }
}

impl ToValue for String {
    fn to_value(&self) -> ValueRef<'_> {
        ValueRef::Text(self)
    }
}

impl ToValue for [u8] {
    fn to_value(&self) -> ValueRef<'_> {
        ValueRef::Blob(self)
    }
}

impl ToValue for Vec<u8> {
    fn to_value(&self) -> ValueRef<'_> {
        ValueRef::Blob(self)
    }
}

impl ToValue for f64 {
    fn to_value(&self) -> ValueRef<'_> {
        ValueRef::Real(*self)
    }
}

impl ToValue for bool {
    fn to_value(&self) -> ValueRef<'_> {
        ValueRef::Int(i64::from(*self))
    }
}

impl ToValue for ValueRef<'_> {
    fn to_value(&self) -> ValueRef<'_> {
        *self
    }
}

macro_rules! integers {
    ($($int:ty),+) => {$(
        impl ToValue for $int {
            fn to_value(&self) -> ValueRef<'_> {
                ValueRef::Int(*self as i64)
            }
        }

        impl FromValue for $int {
            fn from_value(value: ValueRef<'_>) -> Result<Self, String> {
                match value {
                    ValueRef::Int(i) => <$int>::try_from(i)
                        .map_err(|_| format!("{i} is out of range for {}", stringify!($int))),
                    other => Err(format!("expected an integer, found {other:?}")),
                }
            }
        }
    )+};
}
integers!(i64, i32, u32, u16, u64, usize);

impl FromValue for bool {
    fn from_value(value: ValueRef<'_>) -> Result<Self, String> {
        i64::from_value(value).map(|i| i != 0)
    }
}

impl FromValue for f64 {
    fn from_value(value: ValueRef<'_>) -> Result<Self, String> {
        match value {
            ValueRef::Real(r) => Ok(r),
            ValueRef::Int(i) => Ok(i as f64),
            other => Err(format!("expected a number, found {other:?}")),
        }
    }
}

impl FromValue for String {
    fn from_value(value: ValueRef<'_>) -> Result<Self, String> {
        match value {
            ValueRef::Text(text) => Ok(text.to_owned()),
            other => Err(format!("expected text, found {other:?}")),
        }
    }
}

impl FromValue for Vec<u8> {
    fn from_value(value: ValueRef<'_>) -> Result<Self, String> {
        match value {
            ValueRef::Blob(bytes) => Ok(bytes.to_vec()),
            ValueRef::Text(text) => Ok(text.as_bytes().to_vec()),
            other => Err(format!("expected bytes, found {other:?}")),
        }
    }
}

impl<T: FromValue> FromValue for Option<T> {
    fn from_value(value: ValueRef<'_>) -> Result<Self, String> {
        match value {
            ValueRef::Null => Ok(None),
            other => T::from_value(other).map(Some),
        }
    }
}

/// One row of a result, read by column index.
pub enum Row<'a> {
    /// SQLite's.
    Sqlite(&'a rusqlite::Row<'a>),
    /// PostgreSQL's.
    Postgres(&'a tokio_postgres::Row),
}

impl fmt::Debug for Row<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Row")
    }
}

impl Row<'_> {
    /// Column `index` as a `T`.
    pub fn get<T: FromValue>(&self, index: usize) -> DbResult<T> {
        let converted = match self {
            Row::Sqlite(row) => T::from_value(sqlite::value(row.get_ref(index)?)),
            Row::Postgres(row) => T::from_value(postgres::value(row, index)?),
        };
        converted.map_err(|why| DbError::Other(format!("column {index}: {why}")))
    }
}

/// The connection: one at a time uses it (the store's mutex).
#[derive(Debug)]
pub enum Db {
    /// The embedded journal file.
    Sqlite(rusqlite::Connection),
    /// A PostgreSQL server (boxed: its configuration is large, and the connection
    /// is made once).
    Postgres(Box<PgConn>),
}

impl Db {
    /// Runs `sql` (writes), returning how many rows it changed.
    pub fn execute(&self, sql: &str, params: &[&dyn ToValue]) -> DbResult<usize> {
        match self {
            Db::Sqlite(conn) => sqlite::execute(conn, sql, params),
            Db::Postgres(conn) => conn.execute(sql, params),
        }
    }

    /// Runs `sql` and maps every row it returns.
    pub fn query_map<T>(
        &self,
        sql: &str,
        params: &[&dyn ToValue],
        mut map: impl FnMut(&Row<'_>) -> DbResult<T>,
    ) -> DbResult<Vec<T>> {
        match self {
            Db::Sqlite(conn) => sqlite::query(conn, sql, params, &mut map),
            Db::Postgres(conn) => conn.query(sql, params, &mut map),
        }
    }

    /// Runs `sql` and maps its first row, if it returned one.
    pub fn query_opt<T>(
        &self,
        sql: &str,
        params: &[&dyn ToValue],
        mut map: impl FnMut(&Row<'_>) -> DbResult<T>,
    ) -> DbResult<Option<T>> {
        let mut first = None;
        let mut take = |row: &Row<'_>| -> DbResult<()> {
            if first.is_none() {
                first = Some(map(row)?);
            }
            Ok(())
        };
        match self {
            Db::Sqlite(conn) => sqlite::query(conn, sql, params, &mut take)?,
            Db::Postgres(conn) => conn.query(sql, params, &mut take)?,
        };
        Ok(first)
    }

    /// Runs `sql` and maps its first row, which must exist.
    pub fn query_one<T>(
        &self,
        sql: &str,
        params: &[&dyn ToValue],
        map: impl FnMut(&Row<'_>) -> DbResult<T>,
    ) -> DbResult<T> {
        self.query_opt(sql, params, map)?
            .ok_or_else(|| DbError::Other(format!("no row from {sql}")))
    }

    /// Runs statements without parameters (schema changes), in the backend's own SQL.
    pub fn execute_batch(&self, sql: &str) -> DbResult<()> {
        match self {
            Db::Sqlite(conn) => Ok(conn.execute_batch(sql)?),
            Db::Postgres(conn) => conn.execute_batch(sql),
        }
    }

    /// Starts a transaction: committed by [`Tx::commit`], rolled back when dropped
    /// without it.
    pub fn transaction(&mut self) -> DbResult<Tx<'_>> {
        self.execute_batch("BEGIN")?;
        Ok(Tx {
            db: self,
            open: true,
        })
    }
}

/// A transaction in progress; it reads and writes like the connection.
#[derive(Debug)]
pub struct Tx<'a> {
    db: &'a mut Db,
    open: bool,
}

impl Tx<'_> {
    /// Commits.
    pub fn commit(mut self) -> DbResult<()> {
        self.open = false;
        self.db.execute_batch("COMMIT")
    }
}

impl std::ops::Deref for Tx<'_> {
    type Target = Db;

    fn deref(&self) -> &Db {
        self.db
    }
}

impl Drop for Tx<'_> {
    fn drop(&mut self) {
        if self.open {
            // A failed rollback leaves nothing to do: the connection is gone, and with
            // it the transaction.
            let _ = self.db.execute_batch("ROLLBACK");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_out_of_range_are_errors_not_wraps() {
        assert_eq!(u32::from_value(ValueRef::Int(7)), Ok(7));
        assert!(u32::from_value(ValueRef::Int(-1)).is_err());
        assert!(u32::from_value(ValueRef::Int(i64::from(u32::MAX) + 1)).is_err());
        assert_eq!(bool::from_value(ValueRef::Int(1)), Ok(true));
        assert_eq!(Option::<i64>::from_value(ValueRef::Null), Ok(None));
        assert!(String::from_value(ValueRef::Int(1)).is_err());
    }

    #[test]
    fn a_dropped_transaction_is_rolled_back_and_a_committed_one_kept() {
        let mut db = Db::Sqlite(rusqlite::Connection::open_in_memory().unwrap());
        db.execute_batch("CREATE TABLE t (a INTEGER)").unwrap();
        {
            let tx = db.transaction().unwrap();
            tx.execute("INSERT INTO t (a) VALUES (?1)", params![1])
                .unwrap();
        }
        let tx = db.transaction().unwrap();
        tx.execute("INSERT INTO t (a) VALUES (?1)", params![2])
            .unwrap();
        tx.commit().unwrap();
        let kept = db
            .query_map("SELECT a FROM t", params![], |row| row.get::<i64>(0))
            .unwrap();
        assert_eq!(kept, vec![2]);
    }
}
