//! The Postgres-protocol SQL endpoint: every workspace table, the `pg_catalog` that psql and BI
//! tools query (`\d`, `\dt`), simple and extended query protocol (datafusion-postgres over
//! pgwire), SCRAM-SHA-256 password authentication against `[serve.users]`, TLS when a
//! certificate is configured, and read-only: only queries, `EXPLAIN`, `SHOW`, `SET`, cursors and
//! transaction statements run. Tables are re-read when their Delta version changes, so events the
//! collector flushes are visible within seconds.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use datafusion::common::ParamValues;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::{SetExpr, Statement};
use datafusion_postgres::auth::AuthManager;
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::setup_pg_catalog;
use datafusion_postgres::hooks::HookClient;
use datafusion_postgres::pgwire::api::auth::sasl::SASLAuthStartupHandler;
use datafusion_postgres::pgwire::api::auth::sasl::scram::{ScramAuth, gen_salted_password};
use datafusion_postgres::pgwire::api::auth::{
    AuthSource, DefaultServerParameterProvider, LoginInfo, Password, StartupHandler,
};
use datafusion_postgres::pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use datafusion_postgres::pgwire::api::results::Response;
use datafusion_postgres::pgwire::api::{ClientInfo, PgWireServerHandlers};
use datafusion_postgres::pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use datafusion_postgres::pgwire::tokio::process_socket;
use datafusion_postgres::pgwire::tokio::tokio_rustls::TlsAcceptor;
use datafusion_postgres::pgwire::tokio::tokio_rustls::rustls;
use datafusion_postgres::{DfSessionService, QueryHook};
use deltalake::DeltaTable;
use tokio::net::TcpListener;

use super::metrics::Metrics;
use crate::error::{Error, Result};
use crate::sql::{cache_page_indexes, define_profile_events, known_tables, register};
use crate::storage::{TableSpec, schema};
use crate::workspace::Workspace;

/// PBKDF2 rounds for SCRAM; PostgreSQL's default.
const SCRAM_ITERATIONS: usize = 4096;
/// How often tables are checked for new versions.
const REFRESH: Duration = Duration::from_secs(1);

/// A bound, ready endpoint; `run` serves it.
pub struct PgEndpoint {
    listener: TcpListener,
    handlers: Arc<Handlers>,
    tls: Option<TlsAcceptor>,
    metrics: Arc<Metrics>,
    tables: Tables,
}

impl PgEndpoint {
    /// Prepares the session, users and TLS, and binds `addr`.
    pub async fn bind(ws: Arc<Workspace>, addr: SocketAddr, metrics: Arc<Metrics>) -> Result<Self> {
        let users = ws.config.serve.sql_users()?;
        if users.is_empty() {
            return Err(Error::Input(
                "the SQL endpoint needs users: add [serve.users] to tribe.toml \
                 (name = \"password\" or \"env:VARIABLE\"), or set TRIBE_PG_USER and TRIBE_PG_PASSWORD"
                    .into(),
            ));
        }
        let ctx = crate::sql::new_context(ws.config.workspace.memory_limit_mb)?;
        let tables = Tables::new(ws.clone(), ctx.clone());
        tables.refresh().await?;
        setup_pg_catalog(&ctx, "datafusion", Arc::new(AuthManager::new()))
            .map_err(|e| Error::Other(format!("SQL endpoint: pg_catalog: {e}")))?;
        let (tls, cert) = match (&ws.config.serve.tls_cert, &ws.config.serve.tls_key) {
            (Some(cert), Some(key)) => {
                let cert = ws.dir.join(cert);
                let key = ws.dir.join(key);
                let (acceptor, pem) = tls_acceptor(&cert, &key)?;
                (Some(acceptor), Some(pem))
            }
            _ => (None, None),
        };
        let mut hooks: Vec<Arc<dyn QueryHook>> = vec![Arc::new(ReadOnly)];
        hooks.extend(default_hooks());
        let session = Arc::new(DfSessionService::new_with_hooks(Arc::new(ctx), hooks));
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| Error::Input(format!("SQL endpoint: cannot listen on {addr}: {e}")))?;
        Ok(PgEndpoint {
            listener,
            handlers: Arc::new(Handlers {
                session,
                users: Arc::new(Users::new(users)),
                cert,
            }),
            tls,
            metrics,
            tables,
        })
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Accepts connections until the task is dropped.
    pub async fn run(self) {
        let tables = self.tables.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(REFRESH).await;
                if let Err(e) = tables.refresh().await {
                    tracing::warn!(error = %e, "SQL endpoint: refreshing tables failed");
                }
            }
        });
        loop {
            let (socket, peer) = match self.listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "SQL endpoint: accept failed");
                    continue;
                }
            };
            let _ = socket.set_nodelay(true);
            let handlers = self.handlers.clone();
            let tls = self.tls.clone();
            let metrics = self.metrics.clone();
            tokio::spawn(async move {
                metrics.sql_sessions.inc();
                metrics.sql_sessions_total.inc();
                tracing::debug!(%peer, "SQL session opened");
                if let Err(e) = process_socket(socket, tls, handlers).await {
                    tracing::info!(%peer, error = %e, "SQL session ended with an error");
                }
                metrics.sql_sessions.dec();
            });
        }
    }
}

fn default_hooks() -> Vec<Arc<dyn QueryHook>> {
    use datafusion_postgres::hooks::{
        cursor::CursorStatementHook, set_show::SetShowHook, transactions::TransactionStatementHook,
    };
    vec![
        Arc::new(CursorStatementHook),
        Arc::new(SetShowHook),
        Arc::new(TransactionStatementHook),
    ]
}

/// The workspace tables registered in the shared session, re-registered when their version
/// changes (queries already running keep the version they started with).
#[derive(Clone)]
struct Tables {
    ws: Arc<Workspace>,
    ctx: SessionContext,
    loaded: Arc<tokio::sync::Mutex<HashMap<String, DeltaTable>>>,
}

impl Tables {
    fn new(ws: Arc<Workspace>, ctx: SessionContext) -> Tables {
        Tables {
            ws,
            ctx,
            loaded: Arc::default(),
        }
    }

    async fn refresh(&self) -> Result<()> {
        let mut loaded = self.loaded.lock().await;
        let mut changed = Vec::new();
        for (name, path) in known_tables(&self.ws) {
            match loaded.get_mut(&name) {
                Some(table) => {
                    let before = table.version();
                    table
                        .update_incremental(None)
                        .await
                        .map_err(|e| Error::delta(&name, e))?;
                    if table.version() != before {
                        changed.push(name);
                    }
                }
                None => {
                    let spec = TableSpec::existing(&name, &path);
                    if let Some(table) = self.ws.storage.open(&spec).await? {
                        loaded.insert(name.clone(), table);
                        changed.push(name);
                    }
                }
            }
        }
        for name in &changed {
            // A query planned in between sees the table missing for an instant; DataFusion has
            // no atomic replace.
            self.ctx.deregister_table(name.as_str())?;
            register(&self.ctx, name, &loaded[name], None).await?;
            if name == schema::EVENTS {
                // Only the new files' page indexes are read; the others are cached already.
                cache_page_indexes(&self.ctx, name, &loaded[name]).await?;
            }
        }
        if changed
            .iter()
            .any(|n| n == "events" || n == "profile_routes")
        {
            define_profile_events(&self.ctx).await?;
        }
        Ok(())
    }
}

/// Refuses every statement that could change data or the shared session's catalog.
struct ReadOnly;

/// The error for a statement that may not run, if it may not.
fn refusal(statement: &Statement) -> Option<PgWireError> {
    if allowed(statement) {
        return None;
    }
    let text = statement.to_string();
    let verb = text
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
        .to_uppercase();
    Some(PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".into(),
        "25006".into(),
        format!(
            "tribe's SQL endpoint is read-only: {verb} is refused \
             (use the tribe command line to change data)"
        ),
    ))))
}

fn allowed(statement: &Statement) -> bool {
    match statement {
        // `SELECT ... INTO t` would create a table in the shared session.
        Statement::Query(query) => !matches!(
            query.body.as_ref(),
            SetExpr::Select(select) if select.into.is_some()
        ),
        Statement::ExplainTable { .. }
        | Statement::ShowVariable { .. }
        | Statement::ShowVariables { .. }
        | Statement::ShowTables { .. }
        | Statement::ShowColumns { .. }
        | Statement::ShowCreate { .. }
        | Statement::ShowFunctions { .. }
        | Statement::ShowStatus { .. }
        | Statement::ShowDatabases { .. }
        | Statement::ShowSchemas { .. }
        | Statement::Set(_)
        | Statement::StartTransaction { .. }
        | Statement::Commit { .. }
        | Statement::Rollback { .. }
        | Statement::Declare { .. }
        | Statement::Fetch { .. }
        | Statement::Close { .. }
        | Statement::Discard { .. }
        | Statement::Deallocate { .. } => true,
        Statement::Explain { statement, .. } => allowed(statement),
        _ => false,
    }
}

#[async_trait]
impl QueryHook for ReadOnly {
    async fn handle_simple_query(
        &self,
        statement: &Statement,
        _ctx: &SessionContext,
        _client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        refusal(statement).map(Err)
    }

    async fn handle_extended_parse_query(
        &self,
        statement: &Statement,
        _ctx: &SessionContext,
        _client: &(dyn ClientInfo + Send + Sync),
    ) -> Option<PgWireResult<LogicalPlan>> {
        refusal(statement).map(Err)
    }

    async fn handle_extended_query(
        &self,
        statement: &Statement,
        _plan: &LogicalPlan,
        _params: &ParamValues,
        _ctx: &SessionContext,
        _client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        refusal(statement).map(Err)
    }
}

/// SQL users with their SCRAM-salted passwords, computed once at start.
#[derive(Debug)]
struct Users {
    salted: BTreeMap<String, (Vec<u8>, Vec<u8>)>,
}

impl Users {
    fn new(users: BTreeMap<String, String>) -> Users {
        let salted = users
            .into_iter()
            .map(|(user, password)| {
                let salt: [u8; 16] = rand::random();
                let hash = gen_salted_password(&password, &salt, SCRAM_ITERATIONS);
                (user, (salt.to_vec(), hash))
            })
            .collect();
        Users { salted }
    }
}

#[async_trait]
impl AuthSource for Users {
    async fn get_password(&self, login: &LoginInfo) -> PgWireResult<Password> {
        let user = login.user().unwrap_or_default();
        match self.salted.get(user) {
            Some((salt, hash)) => Ok(Password::new(Some(salt.clone()), hash.clone())),
            None => Err(PgWireError::UserError(Box::new(ErrorInfo::new(
                "FATAL".into(),
                "28P01".into(),
                format!("password authentication failed for user \"{user}\""),
            )))),
        }
    }
}

struct Handlers {
    session: Arc<DfSessionService>,
    users: Arc<Users>,
    /// The TLS certificate (PEM), for SCRAM channel binding.
    cert: Option<Vec<u8>>,
}

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.session.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.session.clone()
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        // One per connection: the SASL exchange keeps per-connection state.
        let mut scram = ScramAuth::new(self.users.clone());
        scram.set_iterations(SCRAM_ITERATIONS);
        if let Some(cert) = &self.cert
            && let Err(e) = scram.configure_certificate(cert)
        {
            tracing::warn!(error = %e, "SCRAM channel binding unavailable");
        }
        let mut parameters = DefaultServerParameterProvider::default();
        parameters.default_transaction_read_only = true;
        Arc::new(SASLAuthStartupHandler::new(Arc::new(parameters)).with_scram(scram))
    }
}

/// A TLS acceptor from a PEM certificate chain and PKCS#8 key, and the certificate's PEM.
fn tls_acceptor(cert: &std::path::Path, key: &std::path::Path) -> Result<(TlsAcceptor, Vec<u8>)> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let _ = rustls::crypto::ring::default_provider().install_default();
    let pem = std::fs::read(cert).map_err(|e| Error::io(cert, e))?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::Input(format!("{}: bad certificate: {e}", cert.display())))?;
    let private = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| Error::Input(format!("{}: bad private key: {e}", key.display())))?;
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|e| Error::Input(format!("{}: {e}", cert.display())))?;
    Ok((TlsAcceptor::from(Arc::new(config)), pem))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
    use datafusion::sql::sqlparser::parser::Parser;

    fn refused(sql: &str) -> bool {
        let statement = Parser::parse_sql(&PostgreSqlDialect {}, sql)
            .unwrap()
            .remove(0);
        !allowed(&statement)
    }

    #[test]
    fn only_reading_statements_run() {
        for sql in [
            "select 1",
            "with a as (select 1) select * from a",
            "explain select 1",
            "show search_path",
            "set datestyle = 'ISO'",
            "begin",
            "commit",
        ] {
            assert!(!refused(sql), "{sql} should run");
        }
        for sql in [
            "insert into events values (1)",
            "delete from profiles",
            "update profiles set email = null",
            "create table x as select 1",
            "create view v as select 1",
            "drop table events",
            "copy (select 1) to '/tmp/x.csv'",
            "select 1 as a into t",
            "explain analyze insert into events values (1)",
        ] {
            assert!(refused(sql), "{sql} should be refused");
        }
    }
}
