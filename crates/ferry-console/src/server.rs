//! The PostgreSQL-wire server: pgwire's protocol state machine with ferry's
//! handlers — startup (open or SCRAM-SHA-256), the simple query protocol
//! (`psql`) and the extended one (drivers: parse, bind, describe, execute).
//!
//! Both protocols parse with [`crate::command::parse`], run with
//! [`execute`] and answer with [`crate::result`]'s typed result sets; the
//! extended protocol encodes each column in the format the client bound.
//! Errors are PostgreSQL errors with a SQLSTATE and a hint ([`ConsoleError`]).

use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use futures_util::{Sink, stream};
use pgwire::api::auth::noop::NoopStartupHandler;
use pgwire::api::auth::sasl::SASLAuthStartupHandler;
use pgwire::api::auth::{DefaultServerParameterProvider, StartupHandler};
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{DataRowEncoder, FieldInfo, QueryResponse, Response, Tag};
use pgwire::api::stmt::QueryParser;
use pgwire::api::store::PortalStore;
use pgwire::api::{ClientInfo, ClientPortalStore, PgWireServerHandlers, Type};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};

use crate::Backend;
use crate::command::{self, Command, help_hint};
use crate::result::{self, ResultSet};

/// A console error as the client sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsoleError {
    /// SQLSTATE.
    pub code: &'static str,
    pub message: String,
    pub hint: Option<String>,
}

/// `42601`: the text is not a console command.
pub const SYNTAX_ERROR: &str = "42601";
/// `55000`: the pipeline refused (cutover preconditions, …).
pub const NOT_IN_PREREQUISITE_STATE: &str = "55000";
/// `58000`: the pipeline could not answer (target unreachable, …).
pub const SYSTEM_ERROR: &str = "58000";

impl ConsoleError {
    fn into_info(self) -> ErrorInfo {
        let mut info = ErrorInfo::new("ERROR".to_owned(), self.code.to_owned(), self.message);
        info.hint = self.hint;
        info
    }
}

impl From<ConsoleError> for PgWireError {
    fn from(e: ConsoleError) -> Self {
        PgWireError::UserError(Box::new(e.into_info()))
    }
}

fn syntax(e: command::ParseError) -> ConsoleError {
    ConsoleError {
        code: SYNTAX_ERROR,
        message: e.message,
        hint: Some(help_hint()),
    }
}

/// What a command answers.
#[derive(Debug)]
pub enum Answer {
    Rows(ResultSet),
    Tag(&'static str),
}

/// Run one command against the pipeline.
pub async fn execute<B: Backend + ?Sized>(
    backend: &B,
    cmd: &Command,
) -> Result<Answer, ConsoleError> {
    let answer = match cmd {
        Command::ShowStatus => Answer::Rows(result::status(&backend.status())),
        Command::ShowLag => Answer::Rows(result::lag(&backend.status())),
        Command::ShowTables => Answer::Rows(result::tables(&backend.status())),
        Command::ShowHelp => Answer::Rows(result::help()),
        Command::ShowValidation => Answer::Rows(result::validation(&backend.status())),
        Command::ShowShadow => Answer::Rows(result::shadow(&backend.status())),
        Command::ProxyMode(mode) => {
            let change = backend
                .proxy_mode(mode.clone(), "console".into())
                .await
                .map_err(|message| ConsoleError {
                    code: NOT_IN_PREREQUISITE_STATE,
                    message: format!("proxy mode not changed: {message}"),
                    hint: Some("SHOW STATUS shows the proxy's mode; the modes are source and reads-on-target".into()),
                })?;
            Answer::Rows(result::mode_change(&change))
        }
        Command::Validate(v) => {
            let started = backend
                .validate(v.clone())
                .await
                .map_err(|message| ConsoleError {
                    code: NOT_IN_PREREQUISITE_STATE,
                    message: format!("validation not started: {message}"),
                    hint: Some("SHOW VALIDATION shows a validation already running; a validation starts once the load is done".into()),
                })?;
            Answer::Rows(result::validate_started(&started))
        }
        Command::ShowLagHistory { window } => {
            let since = SystemTime::now()
                .checked_sub(*window)
                .unwrap_or(SystemTime::UNIX_EPOCH);
            let samples = backend
                .lag_history(since)
                .await
                .map_err(|message| ConsoleError {
                    code: SYSTEM_ERROR,
                    message,
                    hint: Some("the lag history is read from ferry's state in the target; check that the target answers".into()),
                })?;
            Answer::Rows(result::lag_history(&samples))
        }
        Command::Pause => {
            backend.pause();
            Answer::Tag(result::tag(cmd))
        }
        Command::Resume => {
            backend.resume();
            Answer::Tag(result::tag(cmd))
        }
        Command::Set => Answer::Tag(result::tag(cmd)),
        Command::Cutover(c) => {
            let record = backend
                .cutover(c.clone())
                .await
                .map_err(|message| ConsoleError {
                    code: NOT_IN_PREREQUISITE_STATE,
                    message: format!(
                        "{} refused or failed: {message}",
                        if c.rollback { "rollback" } else { "cutover" }
                    ),
                    hint: Some(
                        "SHOW STATUS shows the lag and the last error; CUTOVER DRY RUN shows what a cutover would do".into(),
                    ),
                })?;
            Answer::Rows(result::cutover(&record))
        }
    };
    Ok(answer)
}

/// The fields of a result set, each in the format the client asked for.
fn fields(columns: &[result::Column], format: &Format) -> Vec<FieldInfo> {
    columns
        .iter()
        .enumerate()
        .map(|(i, (name, ty))| {
            FieldInfo::new(
                (*name).to_owned(),
                None,
                None,
                ty.clone(),
                format.format_for(i),
            )
        })
        .collect()
}

fn response(answer: Answer, format: &Format) -> PgWireResult<Response> {
    match answer {
        Answer::Tag(tag) => Ok(Response::Execution(Tag::new(tag))),
        Answer::Rows(set) => {
            let schema = Arc::new(fields(&set.columns, format));
            let mut encoder = DataRowEncoder::new(schema.clone());
            let mut rows = Vec::with_capacity(set.rows.len());
            for row in &set.rows {
                for cell in row {
                    encoder.encode_field(cell)?;
                }
                rows.push(Ok(encoder.take_row()));
            }
            Ok(Response::Query(QueryResponse::new(
                schema,
                stream::iter(rows),
            )))
        }
    }
}

/// The query side of a console connection.
pub struct Console<B: ?Sized> {
    backend: Arc<B>,
    parser: Arc<Parser>,
    /// Commands running now; shutdown waits for them (a cutover's answer
    /// must reach the operator although the pipeline stops right after).
    pub(crate) busy: Arc<AtomicUsize>,
}

impl<B: Backend + ?Sized> Console<B> {
    pub fn new(backend: Arc<B>) -> Self {
        Console {
            backend,
            parser: Arc::new(Parser),
            busy: Arc::new(AtomicUsize::new(0)),
        }
    }

    async fn run(&self, cmd: &Command) -> Result<Answer, ConsoleError> {
        self.busy.fetch_add(1, Ordering::SeqCst);
        let answer = execute(self.backend.as_ref(), cmd).await;
        self.busy.fetch_sub(1, Ordering::SeqCst);
        answer
    }
}

impl<B: ?Sized> Debug for Console<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console").finish_non_exhaustive()
    }
}

#[async_trait]
impl<B: Backend + ?Sized> SimpleQueryHandler for Console<B> {
    async fn do_query<C>(&self, _client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let statements = command::split_statements(query);
        if statements.is_empty() {
            return Ok(vec![Response::EmptyQuery]);
        }
        let mut responses = Vec::with_capacity(statements.len());
        for sql in statements {
            let outcome = match command::parse(sql) {
                Ok(cmd) => self.run(&cmd).await,
                Err(e) => Err(syntax(e)),
            };
            match outcome {
                Ok(answer) => responses.push(response(answer, &Format::UnifiedText)?),
                Err(e) => {
                    // Like PostgreSQL: the first error ends the query string.
                    responses.push(Response::Error(Box::new(e.into_info())));
                    break;
                }
            }
        }
        Ok(responses)
    }
}

/// Parses statements of the extended protocol; console commands take no
/// parameters.
#[derive(Debug)]
pub struct Parser;

#[async_trait]
impl QueryParser for Parser {
    type Statement = Command;

    async fn parse_sql<C>(
        &self,
        _client: &C,
        sql: &str,
        _types: &[Option<Type>],
    ) -> PgWireResult<Option<Command>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        match command::split_statements(sql).as_slice() {
            [] => Ok(None),
            [one] => Ok(Some(command::parse(one).map_err(syntax)?)),
            _ => Err(ConsoleError {
                code: SYNTAX_ERROR,
                message: "cannot insert multiple commands into a prepared statement".into(),
                hint: Some("send one console command per statement".into()),
            }
            .into()),
        }
    }

    fn get_parameter_types(&self, _stmt: &Command) -> PgWireResult<Vec<Type>> {
        Ok(Vec::new())
    }

    fn get_result_schema(
        &self,
        stmt: &Command,
        column_format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        let format = column_format.cloned().unwrap_or(Format::UnifiedText);
        Ok(result::columns(stmt)
            .map(|c| fields(c, &format))
            .unwrap_or_default())
    }
}

#[async_trait]
impl<B: Backend + ?Sized> ExtendedQueryHandler for Console<B> {
    type Statement = Command;
    type QueryParser = Parser;

    fn query_parser(&self) -> Arc<Parser> {
        self.parser.clone()
    }

    async fn do_query<C>(
        &self,
        _client: &mut C,
        portal: &Portal<Command>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Command>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let cmd = &portal.statement.statement;
        let answer = self.run(cmd).await?;
        response(answer, &portal.result_column_format)
    }
}

/// Startup without authentication (loopback, no credentials configured).
#[derive(Debug)]
pub struct Open;

impl NoopStartupHandler for Open {}

/// How a connection authenticates.
pub enum Startup {
    Open(Open),
    Scram(SASLAuthStartupHandler<DefaultServerParameterProvider>),
}

impl Debug for Startup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Startup::Open(_) => "Startup::Open",
            Startup::Scram(_) => "Startup::Scram",
        })
    }
}

#[async_trait]
impl StartupHandler for Startup {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match self {
            Startup::Open(h) => h.on_startup(client, message).await,
            Startup::Scram(h) => h.on_startup(client, message).await,
        }
    }
}

/// The handlers of every connection.
#[derive(Debug)]
pub struct Handlers<B: ?Sized> {
    pub console: Arc<Console<B>>,
    pub startup: Arc<Startup>,
}

impl<B: Backend + ?Sized> PgWireServerHandlers for Handlers<B> {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.console.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.console.clone()
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        self.startup.clone()
    }
}

/// How long shutdown waits for commands in flight (a cutover drains).
pub const SHUTDOWN_WAIT: Duration = Duration::from_secs(120);

#[cfg(test)]
mod tests {
    use pgwire::api::results::FieldFormat;

    use super::*;

    #[test]
    fn requested_formats_reach_the_fields() {
        let cols = result::columns(&Command::ShowLag).unwrap();
        let binary = fields(cols, &Format::UnifiedBinary);
        assert!(binary.iter().all(|f| f.format() == FieldFormat::Binary));
        let text = fields(cols, &Format::UnifiedText);
        assert!(text.iter().all(|f| f.format() == FieldFormat::Text));
        assert_eq!(text[0].name(), "lag_seconds");
    }
}
