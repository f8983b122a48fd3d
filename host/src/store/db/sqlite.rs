//! The embedded backend: rusqlite, every statement prepared once and reused.

use rusqlite::Connection;
use rusqlite::types::ToSqlOutput;

use super::{DbResult, Row, ToValue, ValueRef};

impl rusqlite::ToSql for ValueRef<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        use rusqlite::types::ValueRef as Sql;
        Ok(ToSqlOutput::Borrowed(match *self {
            ValueRef::Null => Sql::Null,
            ValueRef::Int(i) => Sql::Integer(i),
            ValueRef::Real(r) => Sql::Real(r),
            ValueRef::Text(text) => Sql::Text(text.as_bytes()),
            ValueRef::Blob(bytes) => Sql::Blob(bytes),
        }))
    }
}

/// A column's value as the store reads it (text that is not UTF-8 reads as bytes).
pub(super) fn value(sql: rusqlite::types::ValueRef<'_>) -> ValueRef<'_> {
    use rusqlite::types::ValueRef as Sql;
    match sql {
        Sql::Null => ValueRef::Null,
        Sql::Integer(i) => ValueRef::Int(i),
        Sql::Real(r) => ValueRef::Real(r),
        Sql::Text(text) => std::str::from_utf8(text).map_or(ValueRef::Blob(text), ValueRef::Text),
        Sql::Blob(bytes) => ValueRef::Blob(bytes),
    }
}

fn bind<'a>(params: &'a [&dyn ToValue]) -> impl Iterator<Item = ValueRef<'a>> {
    params.iter().map(|p| p.to_value())
}

pub(super) fn execute(conn: &Connection, sql: &str, params: &[&dyn ToValue]) -> DbResult<usize> {
    Ok(conn
        .prepare_cached(sql)?
        .execute(rusqlite::params_from_iter(bind(params)))?)
}

pub(super) fn query<T>(
    conn: &Connection,
    sql: &str,
    params: &[&dyn ToValue],
    map: &mut impl FnMut(&Row<'_>) -> DbResult<T>,
) -> DbResult<Vec<T>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(rusqlite::params_from_iter(bind(params)))?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(map(&Row::Sqlite(row))?);
    }
    Ok(out)
}
