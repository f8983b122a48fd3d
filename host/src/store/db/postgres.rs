//! The PostgreSQL backend: tokio-postgres, driven from the store's synchronous calls.
//!
//! The store is synchronous (its callers hold its mutex for one short transaction), so
//! each connection's I/O task runs on a runtime of its own thread ([`runtime`]) and a
//! call blocks on its answer with `futures_executor::block_on`: the client side of
//! tokio-postgres is channels only, so waiting on it needs no runtime of the caller's
//! (and works on a tokio worker, where blocking on a runtime would panic).
//!
//! A lost connection (the server restarted, the network dropped) fails the call in
//! progress and is made again by the next one; a transaction it was part of fails as a
//! whole (its later statements and its COMMIT are refused, never run outside it).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::error::Error;
use std::fmt;
use std::sync::OnceLock;
use std::time::Duration;

use bytes::BytesMut;
use tokio_postgres::types::{FromSql, IsNull, ToSql, Type, to_sql_checked};
use tokio_postgres::{Client, Config, NoTls, Statement};

use super::{DbError, DbResult, Row, ToValue, ValueRef};

type BoxError = Box<dyn Error + Sync + Send>;

/// What a journal another process owns answers.
pub(crate) const IN_USE: &str = "is in use by another process";

/// How a process holds a journal: alone (one coordinator or node, or a standby's
/// owner), or shared by coordinators started with `--shared`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Hold {
    /// No other process may use it.
    Alone,
    /// Only processes that share it may.
    Shared,
}

/// The longest a call waits for PostgreSQL's answer.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The runtime every PostgreSQL connection's I/O runs on: one thread, started with the
/// first connection.
fn runtime() -> &'static tokio::runtime::Handle {
    static HANDLE: OnceLock<tokio::runtime::Handle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("building the PostgreSQL connections' runtime");
        let handle = runtime.handle().clone();
        std::thread::Builder::new()
            .name("wasmesh-postgres".into())
            .spawn(move || runtime.block_on(std::future::pending::<()>()))
            .expect("starting the PostgreSQL connections' thread");
        handle
    })
}

/// One connection to a PostgreSQL server, made again when lost.
pub(crate) struct PgConn {
    config: Config,
    client: RefCell<Option<Client>>,
    /// Statements prepared on the current connection, by their text in the store.
    statements: RefCell<HashMap<String, Statement>>,
    /// Inside BEGIN ... COMMIT/ROLLBACK.
    in_transaction: Cell<bool>,
    /// The connection was lost inside the current transaction: everything up to its
    /// end fails.
    lost_in_transaction: Cell<bool>,
    /// The connection failed or timed out: made again by the next call.
    broken: Cell<bool>,
    /// How this process holds the journal, taken again by every connection
    /// ([`PgConn::own`]); `None` for a connection that holds nothing (the leader's).
    owned: Cell<Option<Hold>>,
}

impl fmt::Debug for PgConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgConn")
            .field("hosts", &self.config.get_hosts())
            .field("dbname", &self.config.get_dbname())
            .finish_non_exhaustive()
    }
}

impl PgConn {
    /// Connects to `url` (`postgres://user:password@host:port/database?options=...`,
    /// libpq's URL and key=value forms).
    pub(crate) fn connect(url: &str) -> DbResult<Self> {
        let mut config: Config = url
            .parse()
            .map_err(|e| DbError::Other(format!("the journal URL {}: {e}", redact(url))))?;
        if config.get_application_name().is_none() {
            config.application_name("wasmesh");
        }
        // A server that stops answering fails calls instead of hanging them forever.
        config
            .connect_timeout(Duration::from_secs(10))
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(10))
            .tcp_user_timeout(Duration::from_secs(30));
        let conn = Self {
            config,
            client: RefCell::new(None),
            statements: RefCell::new(HashMap::new()),
            in_transaction: Cell::new(false),
            lost_in_transaction: Cell::new(false),
            owned: Cell::new(None),
            broken: Cell::new(false),
        };
        conn.client()?;
        Ok(conn)
    }

    /// Makes the journal (the schema first in the search path) this process's alone, as
    /// the SQLite journal's lock file does: a session advisory lock keyed by the
    /// schema's name, taken again by every new connection. Another process holding it
    /// is an error ("in use by another process").
    /// With [`Hold::Shared`], the lock is shared with the other coordinators started
    /// with `--shared` and keeps off only a process that wants the journal alone.
    pub(crate) fn own(&self, hold: Hold) -> DbResult<()> {
        self.owned.set(Some(hold));
        let client = self.client()?;
        Self::lock(&client, hold)
    }

    fn lock(client: &Client, hold: Hold) -> DbResult<()> {
        let function = match hold {
            Hold::Alone => "pg_try_advisory_lock",
            Hold::Shared => "pg_try_advisory_lock_shared",
        };
        let row = futures_executor::block_on(client.query_one(
            &format!(
                "SELECT {function}(hashtextextended('wasmesh journal ' || current_schema(), 0)), \
                 current_schema()::text"
            ),
            &[],
        ))?;
        if row.get::<_, bool>(0) && hold == Hold::Shared {
            return Ok(());
        }
        if row.get::<_, bool>(0) {
            // Who holds it, and that it is alive: a standby takes the journal over
            // from a holder whose beat stopped (store/owner.rs).
            futures_executor::block_on(client.execute(
                "INSERT INTO wasmesh_owner (id, pid, beat_ms) VALUES (1, pg_backend_pid(), $1) \
                 ON CONFLICT (id) DO UPDATE SET pid = excluded.pid, beat_ms = excluded.beat_ms",
                &[&crate::store::now_ms()],
            ))?;
            return Ok(());
        }
        Err(DbError::Other(format!(
            "the journal in schema {:?} {IN_USE} (a coordinator or node holds it{}; \
             `wasmesh coordinator --standby` waits to take it over)",
            row.get::<_, Option<String>>(1).unwrap_or_default(),
            match hold {
                Hold::Alone => ", alone or with others started with --shared",
                Hold::Shared => " alone: every coordinator of a shared journal needs --shared",
            }
        )))
    }

    /// The connected client, connecting first if there is none.
    fn client(&self) -> DbResult<std::cell::Ref<'_, Client>> {
        if self.lost_in_transaction.get() {
            return Err(DbError::Other(
                "the connection to PostgreSQL was lost inside this transaction".into(),
            ));
        }
        let connected = !self.broken.replace(false)
            && self
                .client
                .borrow()
                .as_ref()
                .is_some_and(|c| !c.is_closed());
        if !connected {
            self.statements.borrow_mut().clear();
            *self.client.borrow_mut() = None;
            let config = self.config.clone();
            let made = futures_executor::block_on(runtime().spawn(async move {
                let (client, connection) = config.connect(NoTls).await?;
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::warn!("the connection to PostgreSQL ended: {}", describe(&e));
                    }
                });
                Ok::<_, tokio_postgres::Error>(client)
            }))
            .map_err(|e| DbError::Other(format!("the PostgreSQL connection's task: {e}")))??;
            if let Some(hold) = self.owned.get() {
                Self::lock(&made, hold)?;
            }
            *self.client.borrow_mut() = Some(made);
        }
        Ok(std::cell::Ref::map(self.client.borrow(), |c| {
            c.as_ref().expect("connected above")
        }))
    }

    /// Notes a failed call: a lost connection is dropped (the next call makes a new
    /// one), and the transaction it was in is lost with it.
    fn failed(&self, e: tokio_postgres::Error) -> DbError {
        if e.is_closed() || self.client.borrow().as_ref().is_some_and(Client::is_closed) {
            self.lost();
        }
        DbError::Postgres(e)
    }

    /// The connection is gone (or in an unknown state): the next call makes a new one,
    /// and the transaction it was in is lost with it. (Only flags: the client may be
    /// borrowed by the call that failed.)
    fn lost(&self) {
        self.broken.set(true);
        if self.in_transaction.get() {
            self.lost_in_transaction.set(true);
        }
    }

    /// Waits for a call's answer, at most [`CALL_TIMEOUT`]: a server that stopped
    /// answering (frozen, or cut off without a reset) must not hold the journal, and
    /// every request behind it, forever. A call that timed out leaves the connection
    /// in an unknown state, so it is dropped.
    fn answer<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> DbResult<T> {
        let timer = runtime().spawn(async { tokio::time::sleep(CALL_TIMEOUT).await });
        let call = std::pin::pin!(call);
        match futures_executor::block_on(futures_util::future::select(call, timer)) {
            futures_util::future::Either::Left((done, timer)) => {
                timer.abort();
                done.map_err(|e| self.failed(e))
            }
            futures_util::future::Either::Right(_) => {
                self.lost();
                Err(DbError::Other(format!(
                    "PostgreSQL did not answer within {} s",
                    CALL_TIMEOUT.as_secs()
                )))
            }
        }
    }

    fn statement(&self, client: &Client, sql: &str) -> DbResult<Statement> {
        if let Some(statement) = self.statements.borrow().get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.answer(client.prepare(&translate(sql)))?;
        self.statements
            .borrow_mut()
            .insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }

    /// Whether a call of `sql` that failed may be made again on a new connection: when
    /// the connection had been lost, outside a transaction, and only if it cannot have
    /// changed anything (a read, or BEGIN). So the first request after a server
    /// restart is answered instead of failing; a write whose answer was lost is not
    /// repeated (it may have been committed).
    fn again(&self, sql: &str, failed: &DbResult<impl Sized>) -> bool {
        let lost = matches!(failed, Err(DbError::Postgres(e)) if e.is_closed())
            || (failed.is_err() && (self.broken.get() || self.client.borrow().is_none()));
        lost && !self.in_transaction.get()
            && (sql == "BEGIN" || sql.starts_with("SELECT ") || sql.starts_with("SHOW "))
    }

    pub(super) fn execute(&self, sql: &str, params: &[&dyn ToValue]) -> DbResult<usize> {
        let done = self.execute_once(sql, params);
        if self.again(sql, &done) {
            return self.execute_once(sql, params);
        }
        done
    }

    pub(super) fn query<T>(
        &self,
        sql: &str,
        params: &[&dyn ToValue],
        map: &mut impl FnMut(&Row<'_>) -> DbResult<T>,
    ) -> DbResult<Vec<T>> {
        let done = self.query_once(sql, params, map);
        if self.again(sql, &done) {
            return self.query_once(sql, params, map);
        }
        done
    }

    pub(super) fn execute_batch(&self, sql: &str) -> DbResult<()> {
        let done = self.execute_batch_once(sql);
        if self.again(sql, &done) {
            return self.execute_batch_once(sql);
        }
        done
    }

    fn execute_once(&self, sql: &str, params: &[&dyn ToValue]) -> DbResult<usize> {
        let client = self.client()?;
        let statement = self.statement(&client, sql)?;
        let changed = bind(params, |bound| {
            self.answer(client.execute(&statement, bound))
        })?;
        Ok(changed as usize)
    }

    fn query_once<T>(
        &self,
        sql: &str,
        params: &[&dyn ToValue],
        map: &mut impl FnMut(&Row<'_>) -> DbResult<T>,
    ) -> DbResult<Vec<T>> {
        let client = self.client()?;
        let statement = self.statement(&client, sql)?;
        let rows = bind(params, |bound| self.answer(client.query(&statement, bound)))?;
        rows.iter().map(|row| map(&Row::Postgres(row))).collect()
    }

    fn execute_batch_once(&self, sql: &str) -> DbResult<()> {
        let ends = matches!(sql, "COMMIT" | "ROLLBACK");
        if ends && self.lost_in_transaction.replace(false) {
            self.in_transaction.set(false);
            return if sql == "COMMIT" {
                Err(DbError::Other(
                    "the connection to PostgreSQL was lost inside this transaction; \
                     nothing of it was committed"
                        .into(),
                ))
            } else {
                Ok(())
            };
        }
        let client = self.client()?;
        let done = self.answer(client.batch_execute(sql));
        match sql {
            "BEGIN" => self.in_transaction.set(done.is_ok()),
            // However it went, the transaction is over: a connection lost by the
            // COMMIT itself must not leave the next transaction refused (it did: a
            // coordinator whose session was ended during a COMMIT refused every call
            // from then on, its beat included, so it never noticed it had lost the
            // journal).
            "COMMIT" | "ROLLBACK" => {
                self.in_transaction.set(false);
                self.lost_in_transaction.set(false);
            }
            _ => {}
        }
        done
    }
}

/// Calls `call` with `params` as tokio-postgres takes them.
fn bind<R>(params: &[&dyn ToValue], call: impl FnOnce(&[&(dyn ToSql + Sync)]) -> R) -> R {
    let values: Vec<ValueRef<'_>> = params.iter().map(|p| p.to_value()).collect();
    let bound: Vec<&(dyn ToSql + Sync)> = values.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
    call(&bound)
}

/// Listens to the journal's notifications (`pg_notify('wasmesh ' || schema, ...)`, sent
/// by the `jobs` trigger of schema_pg.rs) on a connection of its own: each payload goes
/// to `to`, and an empty one after every connection made (what was sent while none
/// was listening is lost, so the receiver looks at everything again). Reconnects
/// every second while the server is away; ends when `to` is closed.
pub(crate) fn listen(url: &str, to: tokio::sync::mpsc::UnboundedSender<String>) -> DbResult<()> {
    let config: Config = url
        .parse()
        .map_err(|e| DbError::Other(format!("the journal URL {}: {e}", redact(url))))?;
    runtime().spawn(async move {
        while !to.is_closed() {
            if let Err(e) = listening(&config, &to).await {
                tracing::warn!("listening to the journal: {}", describe(&e));
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                () = to.closed() => return,
            }
        }
    });
    Ok(())
}

/// One connection's listening, until it ends or `to` is closed.
async fn listening(
    config: &Config,
    to: &tokio::sync::mpsc::UnboundedSender<String>,
) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) = config.connect(NoTls).await?;
    let (heard, mut hearing) = tokio::sync::mpsc::unbounded_channel();
    let driving = tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(tokio_postgres::AsyncMessage::Notification(n))) => {
                    if heard.send(n.payload().to_owned()).is_err() {
                        return Ok(());
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e),
                None => return Ok(()),
            }
        }
    });
    let schema: String = client
        .query_one("SELECT current_schema()::text", &[])
        .await?
        .get(0);
    client
        .batch_execute(&format!(
            "LISTEN \"wasmesh {}\"",
            schema.replace('"', "\"\"")
        ))
        .await?;
    // Listening now: whatever was missed before is looked at again.
    if to.send(String::new()).is_err() {
        return Ok(());
    }
    loop {
        tokio::select! {
            payload = hearing.recv() => match payload {
                Some(payload) => {
                    if to.send(payload).is_err() {
                        return Ok(());
                    }
                }
                None => break,
            },
            () = to.closed() => return Ok(()),
        }
    }
    drop(client);
    match driving.await {
        Ok(Err(e)) => Err(e),
        _ => Ok(()),
    }
}

/// An error with what the server said (tokio-postgres's own text is only "db error").
pub(super) fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("PostgreSQL: {} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

/// `url` without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// The store's SQL as PostgreSQL spells it: `?N` parameters become `$N`,
/// `INSERT OR IGNORE` an `ON CONFLICT DO NOTHING`, `json_extract(c, '$.f')` a `->>`,
/// `group_concat(x)` a `string_agg` of text.
pub(crate) fn translate(sql: &str) -> String {
    let mut sql = sql.to_owned();
    if let Some(rest) = sql.strip_prefix("INSERT OR IGNORE ") {
        let mut insert = format!("INSERT {rest}");
        match insert.find(" RETURNING ") {
            Some(at) => insert.insert_str(at, " ON CONFLICT DO NOTHING"),
            None => insert.push_str(" ON CONFLICT DO NOTHING"),
        }
        sql = insert;
    }
    while let Some(start) = sql.find("json_extract(") {
        let args = start + "json_extract(".len();
        let Some(close) = sql[args..].find(')').map(|c| args + c) else {
            break;
        };
        let (column, path) = sql[args..close]
            .split_once(',')
            .map(|(c, p)| (c.trim(), p.trim()))
            .unwrap_or((&sql[args..close], "'$'"));
        let field = path.trim_matches('\'').trim_start_matches("$.");
        let replaced = format!("({column}::jsonb ->> '{field}')");
        sql.replace_range(start..=close, &replaced);
    }
    while let Some(start) = sql.find("group_concat(") {
        let args = start + "group_concat(".len();
        let Some(close) = sql[args..].find(')').map(|c| args + c) else {
            break;
        };
        let replaced = format!("string_agg(({})::text, ',')", &sql[args..close]);
        sql.replace_range(start..=close, &replaced);
    }
    let mut out = String::with_capacity(sql.len());
    let mut quoted = false;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                quoted = !quoted;
                out.push(c);
            }
            '?' if !quoted && chars.peek().is_some_and(char::is_ascii_digit) => out.push('$'),
            _ => out.push(c),
        }
    }
    out
}

impl ToSql for ValueRef<'_> {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        match *self {
            ValueRef::Null => Ok(IsNull::Yes),
            ValueRef::Int(i) => match *ty {
                Type::INT8 => i.to_sql(ty, out),
                Type::INT4 => i32::try_from(i)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(i)?.to_sql(ty, out),
                Type::BOOL => (i != 0).to_sql(ty, out),
                Type::FLOAT8 => (i as f64).to_sql(ty, out),
                Type::FLOAT4 => (i as f32).to_sql(ty, out),
                _ => i.to_string().as_str().to_sql(&Type::TEXT, out),
            },
            ValueRef::Real(r) => match *ty {
                Type::FLOAT4 => (r as f32).to_sql(ty, out),
                Type::FLOAT8 => r.to_sql(ty, out),
                _ => Err(format!("a real number for a parameter of type {ty}").into()),
            },
            ValueRef::Text(text) => match *ty {
                Type::INT8 => text.parse::<i64>()?.to_sql(ty, out),
                Type::BYTEA => text.as_bytes().to_sql(ty, out),
                _ => text.to_sql(&Type::TEXT, out),
            },
            ValueRef::Blob(bytes) => bytes.to_sql(&Type::BYTEA, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        // Converted per type in `to_sql`; an impossible pair is an error there.
        true
    }

    to_sql_checked!();
}

impl<'a> FromSql<'a> for ValueRef<'a> {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
        Ok(match *ty {
            Type::INT8 => ValueRef::Int(i64::from_sql(ty, raw)?),
            Type::INT4 => ValueRef::Int(i32::from_sql(ty, raw)?.into()),
            Type::INT2 => ValueRef::Int(i16::from_sql(ty, raw)?.into()),
            Type::OID => ValueRef::Int(u32::from_sql(ty, raw)?.into()),
            Type::BOOL => ValueRef::Int(bool::from_sql(ty, raw)?.into()),
            Type::FLOAT8 => ValueRef::Real(f64::from_sql(ty, raw)?),
            Type::FLOAT4 => ValueRef::Real(f32::from_sql(ty, raw)?.into()),
            Type::NUMERIC => numeric(raw)?,
            Type::BYTEA => ValueRef::Blob(raw),
            Type::JSONB => ValueRef::Text(std::str::from_utf8(raw.get(1..).unwrap_or(&[]))?),
            _ => ValueRef::Text(std::str::from_utf8(raw)?),
        })
    }

    fn from_sql_null(_: &Type) -> Result<Self, BoxError> {
        Ok(ValueRef::Null)
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

/// A NUMERIC in its binary form (what `SUM` of BIGINTs returns): an integer when it
/// has no fraction and fits, a real otherwise.
fn numeric(raw: &[u8]) -> Result<ValueRef<'static>, BoxError> {
    let word = |at: usize| -> Result<i16, BoxError> {
        raw.get(at..at + 2)
            .map(|b| i16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(|| "a truncated NUMERIC".into())
    };
    let digits = word(0)?;
    let weight = i32::from(word(2)?);
    let sign = word(4)? as u16;
    if sign == 0xC000 {
        return Ok(ValueRef::Real(f64::NAN));
    }
    let negative = sign == 0x4000;
    let mut whole: i128 = 0;
    let mut real = 0f64;
    let mut fraction = false;
    for i in 0..i32::from(digits) {
        let digit = word(8 + 2 * i as usize)?;
        let power = weight - i;
        real += f64::from(digit) * 10000f64.powi(power);
        if power < 0 {
            fraction |= digit != 0;
        } else {
            whole =
                whole.saturating_add(i128::from(digit) * 10000i128.saturating_pow(power as u32));
        }
    }
    if negative {
        whole = -whole;
        real = -real;
    }
    Ok(match i64::try_from(whole) {
        Ok(i) if !fraction => ValueRef::Int(i),
        _ => ValueRef::Real(real),
    })
}

/// Column `index` of a PostgreSQL row.
pub(super) fn value(row: &tokio_postgres::Row, index: usize) -> DbResult<ValueRef<'_>> {
    Ok(row.try_get::<_, ValueRef<'_>>(index)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_store_sql_is_rewritten_for_postgres() {
        assert_eq!(
            translate("SELECT a FROM t WHERE b = ?1 AND c = '?2' AND d = ?12"),
            "SELECT a FROM t WHERE b = $1 AND c = '?2' AND d = $12"
        );
        assert_eq!(
            translate("INSERT OR IGNORE INTO t (a) VALUES (?1)"),
            "INSERT INTO t (a) VALUES ($1) ON CONFLICT DO NOTHING"
        );
        assert_eq!(
            translate("INSERT OR IGNORE INTO t (a) VALUES (?1) RETURNING a"),
            "INSERT INTO t (a) VALUES ($1) ON CONFLICT DO NOTHING RETURNING a"
        );
        assert_eq!(
            translate("SELECT (SELECT group_concat(after) FROM d) FROM t"),
            "SELECT (SELECT string_agg((after)::text, ',') FROM d) FROM t"
        );
        assert_eq!(
            translate("SELECT COALESCE(json_extract(result, '$.node'), n) = ?1"),
            "SELECT COALESCE((result::jsonb ->> 'node'), n) = $1"
        );
    }

    #[test]
    fn numerics_read_as_integers_when_whole() {
        // 123456789 = 1 * 10000^2 + 2345 * 10000 + 6789: three digits, weight 2.
        let mut raw = Vec::new();
        for word in [3i16, 2, 0, 0, 1, 2345, 6789] {
            raw.extend_from_slice(&word.to_be_bytes());
        }
        assert_eq!(numeric(&raw).unwrap(), ValueRef::Int(123_456_789));
        // -1.5: digits 1 and 5000, weight 0, negative, scale 1.
        let mut raw = Vec::new();
        for word in [2i16, 0, 0x4000, 1, 1, 5000] {
            raw.extend_from_slice(&word.to_be_bytes());
        }
        assert_eq!(numeric(&raw).unwrap(), ValueRef::Real(-1.5));
        // 0: no digits.
        let raw: Vec<u8> = [0i16, 0, 0, 0]
            .iter()
            .flat_map(|w| w.to_be_bytes())
            .collect();
        assert_eq!(numeric(&raw).unwrap(), ValueRef::Int(0));
    }

    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(
            redact("postgres://me:secret@db:5432/w"),
            "postgres://me:***@db:5432/w"
        );
        assert_eq!(redact("host=/tmp user=me"), "host=/tmp user=me");
    }
}
