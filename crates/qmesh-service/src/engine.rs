//! The query engine: SQL through DataFusion over the [`Store`].
//!
//! Every query is planned against the store's tables as they are when it
//! starts, then runs on the engine's own thread pool (so a heavy query never
//! stalls the IPC and HTTP tasks) with three limits that hold:
//!
//! * **time**: the deadline is measured by the caller; when it passes the
//!   query task is aborted and the engine waits for the plan to be dropped
//!   before answering, so the instance is free again when the error is sent;
//! * **memory**: each query has its own DataFusion memory pool of
//!   [`Limits::memory_bytes`]; spilling to disk is disabled, so an operator
//!   that needs more fails with DataFusion's "resources exhausted" message;
//! * **result size**: rows and Arrow bytes are counted as batches arrive; the
//!   query is stopped as soon as either bound is passed.

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::{SchemaProvider, Session, TableProvider};
use datafusion::common::DataFusionError;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::execution::TaskContext;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::memory_pool::{GreedyMemoryPool, TrackConsumersPool};
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::logical_expr::{Expr, LogicalPlan, TableType};
use datafusion::physical_plan::{ExecutionPlan, execute_stream};
use datafusion::prelude::{SessionConfig, SessionContext};
use futures::StreamExt;
use qmesh_codec::{Attr, Dict, K, Symbols, Table};
use qmesh_process::{ErrorKind, WireError};
use tokio::sync::Semaphore;

use crate::mapping::{self, MapError};
use crate::store::{MAX_TABLE_NAME, Store, StoredTable};

/// Default per-query time limit: the whitepaper's services run with `\T 10`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Default per-query memory, in bytes, for DataFusion's operators (hash
/// tables, sorts, …); the stored tables themselves are not counted. 1 GiB.
pub const DEFAULT_QUERY_MEMORY: usize = 1 << 30;

/// Default bound on the rows of a result.
pub const DEFAULT_MAX_RESULT_ROWS: usize = 10_000_000;

/// Default bound on the Arrow bytes of a result: 512 MiB, well under what a
/// kdb+ IPC message may carry to an old client (2 GiB).
pub const DEFAULT_MAX_RESULT_BYTES: usize = 512 << 20;

/// Queries that may run at once; others wait (the wait counts against their
/// time limit). A service behind the load balancer gets one at a time.
pub const MAX_CONCURRENT_QUERIES: usize = 16;

/// How long an aborted query may take to drop its plan before the engine
/// stops waiting for it (it is still aborted; this only bounds the wait).
/// DataFusion operators yield at every batch, so this is never reached in
/// practice.
pub const CANCEL_GRACE: Duration = Duration::from_secs(5);

/// Longest SQL text accepted, in bytes.
pub const MAX_SQL_BYTES: usize = 1 << 20;

/// Memory consumers named in a "resources exhausted" error.
const TOP_CONSUMERS: usize = 3;

/// Limits for one query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub timeout: Duration,
    pub memory_bytes: usize,
    pub max_result_rows: usize,
    pub max_result_bytes: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            timeout: DEFAULT_TIMEOUT,
            memory_bytes: DEFAULT_QUERY_MEMORY,
            max_result_rows: DEFAULT_MAX_RESULT_ROWS,
            max_result_bytes: DEFAULT_MAX_RESULT_BYTES,
        }
    }
}

/// Why a query failed. The `Display` text is the q error a client gets; it
/// starts with the word of the catalog entry [`QueryError::kind`] names
/// (`bad request: …`, `unknown table: …`), and HTTP answers the same word
/// ([`QueryError::to_wire`]).
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The deadline passed; the plan was cancelled.
    #[error("timeout: query ran longer than {0:?} and was cancelled")]
    Timeout(Duration),
    /// The query's memory pool was exhausted.
    #[error("limit: query memory of {limit} bytes exhausted: {detail}")]
    Memory { limit: usize, detail: String },
    /// The result passed a bound.
    #[error("limit: result above {limit} {what}")]
    ResultTooLarge { limit: usize, what: &'static str },
    /// The SQL text is too long.
    #[error("limit: SQL text of {0} bytes is above {MAX_SQL_BYTES}")]
    SqlTooLong(usize),
    /// The query names a table longer than any name the service holds
    /// ([`MAX_TABLE_NAME`]).
    #[error("limit: table name of {0} bytes is above {MAX_TABLE_NAME}")]
    NameTooLong(usize),
    /// The query names a table the store does not hold.
    #[error("unknown table: {0}")]
    UnknownTable(String),
    /// A statement that changes things (DDL, DML, SET …): the service only
    /// answers queries.
    #[error("bad request: only queries are allowed: {0}")]
    NotAQuery(String),
    /// DataFusion refused the query while parsing or planning it (syntax,
    /// an unknown column or function, types that do not fit); its message
    /// follows.
    #[error("bad request: {0}")]
    Sql(String),
    /// The query was planned but failed while running (a cast that fails on
    /// a value, …); DataFusion's message follows.
    #[error("service error: {0}")]
    Failed(String),
    /// The result has a column kdb+ cannot hold.
    #[error("{0}")]
    Map(#[from] MapError),
    /// The engine is stopping.
    #[error("shutting down")]
    ShuttingDown,
    /// The query task died (a bug).
    #[error("internal: query task failed: {0}")]
    Internal(String),
}

impl QueryError {
    /// DataFusion's error while parsing or planning.
    fn planning(e: DataFusionError, limits: &Limits) -> QueryError {
        match e.find_root() {
            DataFusionError::ResourcesExhausted(msg) => {
                QueryError::Memory { limit: limits.memory_bytes, detail: msg.clone() }
            }
            _ => QueryError::Sql(e.strip_backtrace()),
        }
    }

    /// DataFusion's error while running a plan.
    fn running(e: DataFusionError, limits: &Limits) -> QueryError {
        match e.find_root() {
            DataFusionError::ResourcesExhausted(msg) => {
                QueryError::Memory { limit: limits.memory_bytes, detail: msg.clone() }
            }
            _ => QueryError::Failed(e.strip_backtrace()),
        }
    }

    /// The catalog entry, the same over IPC and HTTP.
    pub fn kind(&self) -> ErrorKind {
        match self {
            QueryError::Timeout(_) => ErrorKind::Timeout,
            QueryError::Memory { .. }
            | QueryError::ResultTooLarge { .. }
            | QueryError::SqlTooLong(_)
            | QueryError::NameTooLong(_) => ErrorKind::Limit,
            QueryError::UnknownTable(_) => ErrorKind::UnknownTable,
            QueryError::NotAQuery(_) | QueryError::Sql(_) => ErrorKind::BadRequest,
            QueryError::Failed(_) => ErrorKind::ServiceError,
            QueryError::Map(e) => e.kind(),
            QueryError::ShuttingDown => ErrorKind::ShuttingDown,
            QueryError::Internal(_) => ErrorKind::Internal,
        }
    }

    /// As the catalog's error (for HTTP): the kind, and the text after its
    /// word as the detail.
    pub fn to_wire(&self) -> WireError {
        wire(self.kind(), &self.to_string())
    }
}

/// `text` (`word: detail`) as a [`WireError`] of `kind`.
pub(crate) fn wire(kind: ErrorKind, text: &str) -> WireError {
    let detail = text.strip_prefix(kind.word()).map(|d| d.trim_start_matches(':').trim()).unwrap_or(text);
    if detail.is_empty() { WireError::new(kind) } else { WireError::with_detail(kind, detail) }
}

/// A query's result, as Arrow.
#[derive(Debug, Clone)]
pub struct QueryOutput {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
    /// How many leading columns are the keys of a group-by (0: not keyed).
    pub key_columns: usize,
}

impl QueryOutput {
    pub fn rows(&self) -> usize {
        self.batches.iter().map(RecordBatch::num_rows).sum()
    }

    /// The result as a kdb+ table, keyed when [`QueryOutput::key_columns`]
    /// says so.
    pub fn to_k(&self) -> Result<K, MapError> {
        let table = mapping::batches_to_table(&self.schema, &self.batches)?;
        let k = self.key_columns;
        if k == 0 || k >= table.columns.len() {
            return Ok(K::Table(table));
        }
        let names: Vec<&[u8]> = table.names.iter().collect();
        let key_names: Symbols = names[..k].iter().copied().collect();
        let value_names: Symbols = names[k..].iter().copied().collect();
        let mut columns = table.columns;
        let values = columns.split_off(k);
        Ok(K::Dict(Box::new(Dict {
            keys: K::Table(Table { attr: Attr::None, names: key_names, columns }),
            values: K::Table(Table { attr: Attr::None, names: value_names, columns: values }),
            sorted: false,
        })))
    }
}

/// DataFusion's view of the store: every stored table, as it is when a
/// query is planned.
#[derive(Debug)]
struct StoreSchema {
    store: Arc<Store>,
}

#[async_trait]
impl SchemaProvider for StoreSchema {
    fn table_names(&self) -> Vec<String> {
        self.store.names()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>, DataFusionError> {
        Ok(self.store.table(name).map(|t| Arc::new(StoreTable { table: t }) as Arc<dyn TableProvider>))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.store.table(name).is_some()
    }
}

/// One stored table as a DataFusion table.
#[derive(Debug)]
struct StoreTable {
    table: Arc<StoredTable>,
}

#[async_trait]
impl TableProvider for StoreTable {
    fn schema(&self) -> SchemaRef {
        self.table.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>, DataFusionError> {
        // Batches are spread over as many partitions as the session runs
        // in parallel, round robin, so every core scans.
        let batches = self.table.snapshot();
        let n = state.config().target_partitions().max(1).min(batches.len().max(1));
        let mut partitions: Vec<Vec<RecordBatch>> = vec![Vec::new(); n];
        for (i, b) in batches.into_iter().enumerate() {
            partitions[i % n].push(b);
        }
        let exec = MemorySourceConfig::try_new_exec(&partitions, self.schema(), projection.cloned())?;
        Ok(exec)
    }
}

/// Decrements the running-query count when a query task ends, however it
/// ends (completed, failed, or aborted and dropped).
struct RunningGuard(Arc<AtomicUsize>);

impl Drop for RunningGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Counts a plan as executing from the moment its stream exists until it
/// is dropped.
struct ExecutingGuard(tokio::sync::watch::Sender<usize>);

impl ExecutingGuard {
    fn new(tx: tokio::sync::watch::Sender<usize>) -> ExecutingGuard {
        tx.send_modify(|n| *n += 1);
        ExecutingGuard(tx)
    }
}

impl Drop for ExecutingGuard {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// Where query plans run.
#[derive(Debug)]
enum Pool {
    /// A runtime of the engine's own.
    Own(Option<tokio::runtime::Runtime>),
    /// A runtime the caller provides (tests, or a process that wants one pool).
    Handle(tokio::runtime::Handle),
}

/// The SQL engine over a store.
pub struct Engine {
    ctx: SessionContext,
    store: Arc<Store>,
    limits: Limits,
    pool: Pool,
    running: Arc<AtomicUsize>,
    executing: tokio::sync::watch::Sender<usize>,
    slots: Arc<Semaphore>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("tables", &self.store.names())
            .field("limits", &self.limits)
            .field("running", &self.running())
            .finish()
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if let Pool::Own(rt) = &mut self.pool
            && let Some(rt) = rt.take()
        {
            rt.shutdown_background();
        }
    }
}

/// Errors building the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("query thread pool: {0}")]
    Runtime(#[from] std::io::Error),
    #[error("datafusion: {0}")]
    DataFusion(#[from] DataFusionError),
}

impl Engine {
    /// An engine running queries on a thread pool of its own with `threads`
    /// workers (the number of cores when 0).
    pub fn new(store: Arc<Store>, limits: Limits, threads: usize) -> Result<Engine, EngineError> {
        let threads = if threads == 0 {
            std::thread::available_parallelism().map_or(1, NonZeroUsize::get)
        } else {
            threads
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("qmesh-query")
            .enable_time()
            .build()?;
        Engine::build(store, limits, threads, Pool::Own(Some(rt)))
    }

    /// An engine running queries on the given runtime.
    pub fn with_runtime(
        store: Arc<Store>,
        limits: Limits,
        handle: tokio::runtime::Handle,
    ) -> Result<Engine, EngineError> {
        let threads = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
        Engine::build(store, limits, threads, Pool::Handle(handle))
    }

    fn build(store: Arc<Store>, limits: Limits, threads: usize, pool: Pool) -> Result<Engine, EngineError> {
        let mut config = SessionConfig::new().with_target_partitions(threads).with_information_schema(true);
        // kdb+ names are case-sensitive (`egTrade`, `bidSize`): identifiers
        // are taken as written. Function names are matched in any case.
        config.options_mut().sql_parser.enable_ident_normalization = false;
        let runtime = base_runtime(DEFAULT_QUERY_MEMORY)?;
        let state = SessionStateBuilder::new()
            .with_config(config)
            .with_runtime_env(runtime)
            .with_default_features()
            .build();
        let ctx = SessionContext::new_with_state(state);
        let schema = Arc::new(StoreSchema { store: Arc::clone(&store) });
        let catalog = ctx
            .catalog("datafusion")
            .ok_or_else(|| DataFusionError::Internal("no default catalog".to_string()))?;
        catalog.register_schema("public", schema)?;
        Ok(Engine {
            ctx,
            store,
            limits,
            pool,
            running: Arc::new(AtomicUsize::new(0)),
            executing: tokio::sync::watch::Sender::new(0),
            slots: Arc::new(Semaphore::new(MAX_CONCURRENT_QUERIES)),
        })
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Queries whose plan is alive right now.
    pub fn running(&self) -> usize {
        self.running.load(Ordering::SeqCst)
    }

    /// The number of plans executing now, as a channel that tells of each
    /// change.
    pub fn executing(&self) -> tokio::sync::watch::Receiver<usize> {
        self.executing.subscribe()
    }

    fn spawn<F>(&self, fut: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match &self.pool {
            Pool::Own(Some(rt)) => rt.spawn(fut),
            Pool::Own(None) => tokio::spawn(fut),
            Pool::Handle(h) => h.spawn(fut),
        }
    }

    /// Runs a query with the engine's limits, as Arrow.
    pub async fn query(&self, sql: &str) -> Result<QueryOutput, QueryError> {
        self.query_with(sql, self.limits, Ok).await
    }

    /// Runs a query with the engine's limits, as a kdb+ table.
    pub async fn query_k(&self, sql: &str) -> Result<K, QueryError> {
        self.query_with(sql, self.limits, |out| out.to_k().map_err(QueryError::from)).await
    }

    /// Runs a query with the given limits; `finish` turns the result into
    /// what the caller sends, inside the time limit.
    pub async fn query_with<T, F>(&self, sql: &str, limits: Limits, finish: F) -> Result<T, QueryError>
    where
        T: Send + 'static,
        F: FnOnce(QueryOutput) -> Result<T, QueryError> + Send + 'static,
    {
        if sql.len() > MAX_SQL_BYTES {
            return Err(QueryError::SqlTooLong(sql.len()));
        }
        let deadline = tokio::time::Instant::now() + limits.timeout;
        let permit = tokio::time::timeout_at(deadline, Arc::clone(&self.slots).acquire_owned())
            .await
            .map_err(|_| QueryError::Timeout(limits.timeout))?
            .map_err(|_| QueryError::ShuttingDown)?;
        let state = self.ctx.state();
        let store = Arc::clone(&self.store);
        let sql = sql.to_string();
        self.running.fetch_add(1, Ordering::SeqCst);
        let guard = RunningGuard(Arc::clone(&self.running));
        let executing = self.executing.clone();
        let task = self.spawn(async move {
            let _guard = guard;
            let _permit = permit;
            let out = run(state, store, &sql, limits, executing).await?;
            finish(out)
        });
        // If the caller goes away (an HTTP client hangs up, a connection
        // closes), the query goes with it.
        let mut task = AbortOnDrop(Some(task));
        let joined = match task.0.as_mut() {
            Some(handle) => tokio::time::timeout_at(deadline, handle).await,
            None => return Err(QueryError::Internal("query task missing".to_string())),
        };
        match joined {
            Ok(Ok(result)) => {
                task.0 = None;
                result
            }
            Ok(Err(join)) if join.is_cancelled() => Err(QueryError::ShuttingDown),
            Ok(Err(join)) => Err(QueryError::Internal(join.to_string())),
            Err(_elapsed) => {
                let Some(handle) = task.0.take() else { return Err(QueryError::Timeout(limits.timeout)) };
                handle.abort();
                // Wait for the plan to be dropped, on the engine's clock so
                // a paused test clock does not skip the wait.
                let waited =
                    self.spawn(async move { tokio::time::timeout(CANCEL_GRACE, handle).await.is_ok() });
                if !matches!(waited.await, Ok(true)) {
                    tracing::warn!(grace = ?CANCEL_GRACE, "a timed-out query did not stop within the grace period");
                }
                Err(QueryError::Timeout(limits.timeout))
            }
        }
    }
}

/// Aborts a query task when its caller drops the future waiting for it.
struct AbortOnDrop<T>(Option<tokio::task::JoinHandle<T>>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            h.abort();
        }
    }
}

/// The runtime environment of a query: its own memory pool, no spilling.
fn base_runtime(memory_bytes: usize) -> Result<Arc<RuntimeEnv>, DataFusionError> {
    let top = NonZeroUsize::new(TOP_CONSUMERS).unwrap_or(NonZeroUsize::MIN);
    RuntimeEnvBuilder::new()
        .with_memory_pool(Arc::new(TrackConsumersPool::new(GreedyMemoryPool::new(memory_bytes), top)))
        .with_disk_manager_builder(DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled))
        .build_arc()
}

/// Plans and runs one query to completion (inside the query task).
async fn run(
    state: datafusion::execution::SessionState,
    store: Arc<Store>,
    sql: &str,
    limits: Limits,
    executing: tokio::sync::watch::Sender<usize>,
) -> Result<QueryOutput, QueryError> {
    let df = |e| QueryError::planning(e, &limits);
    let dialect = state.config().options().sql_parser.dialect;
    let statement = state.sql_to_statement(sql, &dialect).map_err(df)?;
    check_tables(&state, &statement, &store)?;
    let plan = state.statement_to_plan(statement).await.map_err(df)?;
    check_read_only(&plan)?;
    let key_columns = key_columns(&plan);
    // A kdb+ user expects `select … where …` to come back in table order;
    // DataFusion keeps order only within a partition, so such queries scan
    // as one. Queries that aggregate or sort run on every core.
    let state = if keeps_row_order(&plan) && state.config().target_partitions() > 1 {
        // (The catalog is shared: the copy must not create a default one over it.)
        let config =
            state.config().clone().with_target_partitions(1).with_create_default_catalog_and_schema(false);
        SessionStateBuilder::new_from_existing(state).with_config(config).build()
    } else {
        state
    };
    let physical = state.create_physical_plan(&plan).await.map_err(df)?;
    let schema = physical.schema();
    let base = state.runtime_env();
    let memory = base_runtime(limits.memory_bytes).map_err(df)?;
    let runtime = Arc::new(RuntimeEnv {
        memory_pool: Arc::clone(&memory.memory_pool),
        disk_manager: Arc::clone(&memory.disk_manager),
        cache_manager: Arc::clone(&base.cache_manager),
        object_store_registry: Arc::clone(&base.object_store_registry),
    });
    let task_ctx = Arc::new(TaskContext::from(&state).with_runtime(runtime));
    let mut stream = execute_stream(physical, task_ctx).map_err(df)?;
    let _executing = ExecutingGuard::new(executing);
    let mut batches = Vec::new();
    let (mut rows, mut bytes) = (0usize, 0usize);
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(|e| QueryError::running(e, &limits))?;
        rows += batch.num_rows();
        bytes += batch.get_array_memory_size();
        if rows > limits.max_result_rows {
            return Err(QueryError::ResultTooLarge { limit: limits.max_result_rows, what: "rows" });
        }
        if bytes > limits.max_result_bytes {
            return Err(QueryError::ResultTooLarge { limit: limits.max_result_bytes, what: "bytes" });
        }
        batches.push(batch);
    }
    Ok(QueryOutput { schema, batches, key_columns })
}

/// Whether a plan's answer has an order a q user expects to be the table's
/// own: no aggregation, sort or window anywhere in it.
pub fn keeps_row_order(plan: &LogicalPlan) -> bool {
    use datafusion::common::tree_node::TreeNodeRecursion;
    let mut keeps = true;
    let _ = plan.apply_with_subqueries(|node| {
        if matches!(
            node,
            LogicalPlan::Aggregate(_)
                | LogicalPlan::Sort(_)
                | LogicalPlan::Window(_)
                | LogicalPlan::Distinct(_)
        ) {
            keeps = false;
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    keeps
}

/// Names the tables a statement reads that the store does not hold (the
/// first one), or that are longer than any table name can be, before
/// DataFusion plans it: so an unknown table is `unknown table: x` rather
/// than a planning message. Names in another schema (`information_schema`),
/// table functions and the statement's own `WITH` names are DataFusion's
/// business.
fn check_tables(
    state: &datafusion::execution::SessionState,
    statement: &datafusion::sql::parser::Statement,
    store: &Store,
) -> Result<(), QueryError> {
    // Only a query reads tables; any other statement (DDL, DML) is refused
    // as `only queries are allowed` once planned, whatever it names.
    let datafusion::sql::parser::Statement::Statement(inner) = statement else { return Ok(()) };
    if !matches!(inner.as_ref(), datafusion::sql::sqlparser::ast::Statement::Query(_)) {
        return Ok(());
    }
    let Ok(references) = state.resolve_table_references(statement) else { return Ok(()) };
    for r in references {
        if !matches!((r.catalog(), r.schema()), (None | Some("datafusion"), None | Some("public"))) {
            continue;
        }
        let name = r.table();
        if name.len() > MAX_TABLE_NAME {
            return Err(QueryError::NameTooLong(name.len()));
        }
        // A table function (`generate_series(…)`, `range(…)`) is named like
        // a table; DataFusion plans it.
        if store.table(name).is_none() && !state.table_functions().contains_key(name) {
            return Err(QueryError::UnknownTable(name.to_string()));
        }
    }
    Ok(())
}

/// Refuses plans that would change anything (DDL, DML, `SET`, `COPY` …).
fn check_read_only(plan: &LogicalPlan) -> Result<(), QueryError> {
    match plan {
        LogicalPlan::Ddl(_) | LogicalPlan::Dml(_) | LogicalPlan::Copy(_) | LogicalPlan::Statement(_) => {
            Err(QueryError::NotAQuery(plan.display().to_string()))
        }
        _ => {
            let options = datafusion::execution::context::SQLOptions::new()
                .with_allow_ddl(false)
                .with_allow_dml(false)
                .with_allow_statements(false);
            options.verify_plan(plan).map_err(|e| QueryError::NotAQuery(e.strip_backtrace()))
        }
    }
}

/// How many leading output columns are the keys of a group-by, so the
/// result can be a keyed table as q's `select … by …` gives: all the
/// grouping columns must come first, as plain columns, with at least one
/// other column after them. Anything else (grouping sets, keys computed or
/// out of place, keys not all selected) is an unkeyed table.
pub fn key_columns(plan: &LogicalPlan) -> usize {
    let mut node = plan;
    let mut projection: Option<&[Expr]> = None;
    loop {
        match node {
            LogicalPlan::Sort(s) => node = &s.input,
            LogicalPlan::Limit(l) => node = &l.input,
            LogicalPlan::SubqueryAlias(a) if projection.is_none() => node = &a.input,
            LogicalPlan::Projection(p) if projection.is_none() => {
                projection = Some(&p.expr);
                node = &p.input;
            }
            LogicalPlan::Aggregate(agg) => {
                let groups = agg.group_expr.len();
                if groups == 0 || agg.group_expr.iter().any(|e| matches!(e, Expr::GroupingSet(_))) {
                    return 0;
                }
                let outputs = match projection {
                    None => groups + agg.aggr_expr.len(),
                    Some(p) => p.len(),
                };
                let keys = match projection {
                    None => groups,
                    Some(exprs) => {
                        let mut seen = vec![false; groups];
                        let mut n = 0;
                        for e in exprs {
                            let Expr::Column(c) = e.clone().unalias() else { break };
                            match agg.schema.index_of_column(&c) {
                                Ok(i) if i < groups && !seen[i] => {
                                    seen[i] = true;
                                    n += 1;
                                }
                                _ => break,
                            }
                        }
                        if seen.iter().all(|s| *s) { n } else { 0 }
                    }
                };
                return if keys > 0 && keys < outputs { keys } else { 0 };
            }
            _ => return 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Ingest;
    use qmesh_codec::{Vector, nulls};

    fn store_with_trades() -> Arc<Store> {
        let store = Arc::new(Store::default());
        let t = K::Table(Table {
            attr: Attr::None,
            names: ["sym", "price", "size"].into_iter().collect(),
            columns: vec![
                K::syms(["a", "b", "a", "c"]),
                K::from(Vector::Float(vec![1.0, 2.0, 3.0, f64::NAN])),
                K::from(Vector::Long(vec![10, 20, 30, nulls::LONG_NULL])),
            ],
        });
        store.upd("trade", t).expect("upd");
        store
    }

    fn engine(store: Arc<Store>, limits: Limits) -> Engine {
        Engine::new(store, limits, 2).expect("engine")
    }

    #[tokio::test]
    async fn group_by_is_keyed_and_nulls_are_skipped() {
        let e = engine(store_with_trades(), Limits::default());
        let k = e
            .query_k("select sym, avg(price) as p, sum(size) as s from trade group by sym order by sym")
            .await;
        let K::Dict(d) = k.expect("query") else { panic!("keyed table expected") };
        let K::Table(keys) = &d.keys else { panic!("keys") };
        let K::Table(values) = &d.values else { panic!("values") };
        assert_eq!(keys.columns[0], K::syms(["a", "b", "c"]));
        let K::Vector(_, Vector::Float(p)) = &values.columns[0] else { panic!("float") };
        assert_eq!(p[..2], [2.0, 2.0]);
        assert!(p[2].is_nan(), "avg of only nulls is null");
        assert_eq!(values.columns[1], K::from(Vector::Long(vec![40, 20, nulls::LONG_NULL])));
    }

    #[tokio::test]
    async fn plain_select_is_an_unkeyed_table_and_identifiers_keep_case() {
        let store = store_with_trades();
        let t = K::Table(Table {
            attr: Attr::None,
            names: ["bidSize"].into_iter().collect(),
            columns: vec![K::from(Vector::Long(vec![1, 2]))],
        });
        store.upd("egQuote", t).expect("upd");
        let e = engine(store, Limits::default());
        let k = e.query_k("select bidSize from egQuote where bidSize > 1").await.expect("query");
        let K::Table(t) = k else { panic!("table") };
        assert_eq!(t.columns[0], K::from(Vector::Long(vec![2])));
        // a group key that is not first: unkeyed
        let k = e.query_k("select count(*) as n, sym from trade group by sym").await.expect("query");
        assert!(matches!(k, K::Table(_)));
    }

    #[tokio::test]
    async fn errors_carry_datafusion_messages() {
        let e = engine(store_with_trades(), Limits::default());
        let err = e.query_k("select nope from trade").await.unwrap_err().to_string();
        assert!(err.starts_with("bad request: "), "{err}");
        assert!(err.contains("nope"), "{err}");
        let err = e.query_k("selec 1").await.unwrap_err().to_string();
        assert!(err.starts_with("bad request: "), "{err}");
        let err = e.query_k("drop table trade").await.unwrap_err();
        assert!(matches!(err, QueryError::NotAQuery(_) | QueryError::Sql(_)), "{err}");
        assert!(e.store().table("trade").is_some());
        let err = e.query_k("create table x as select 1").await.unwrap_err();
        assert!(matches!(err, QueryError::NotAQuery(_) | QueryError::Sql(_)), "{err}");
        assert!(e.store().table("x").is_none());
    }

    #[tokio::test]
    async fn timeout_cancels_the_plan_and_frees_the_engine() {
        let limits = Limits { timeout: Duration::from_secs(3600), ..Limits::default() };
        let e = Arc::new(engine(store_with_trades(), limits));
        let mut executing = e.executing();
        // Runs for hours if not stopped.
        let q = {
            let e = Arc::clone(&e);
            tokio::spawn(async move {
                e.query_k("select count(*) from generate_series(1, 100000000000) a where value % 7 = 3").await
            })
        };
        executing.wait_for(|n| *n > 0).await.expect("engine alive");
        // The plan is running: now let the hour pass.
        tokio::time::pause();
        tokio::time::advance(Duration::from_secs(3601)).await;
        let err = q.await.expect("task").unwrap_err();
        assert!(matches!(err, QueryError::Timeout(_)), "{err}");
        assert_eq!(err.to_string(), "timeout: query ran longer than 3600s and was cancelled");
        assert_eq!(e.running(), 0, "the plan is dropped before the error is returned");
        assert_eq!(*e.executing().borrow(), 0);
        tokio::time::resume();
        // and the engine answers the next query
        let k = e.query_k("select count(*) as n from trade").await.expect("next query");
        let K::Table(t) = k else { panic!("table") };
        assert_eq!(t.columns[0], K::from(Vector::Long(vec![4])));
    }

    #[tokio::test]
    async fn a_caller_that_goes_away_takes_its_query_with_it() {
        let e = Arc::new(engine(store_with_trades(), Limits::default()));
        let mut executing = e.executing();
        let q = {
            let e = Arc::clone(&e);
            tokio::spawn(async move {
                e.query_k("select count(*) from generate_series(1, 100000000000) a where value % 7 = 3").await
            })
        };
        executing.wait_for(|n| *n > 0).await.expect("engine alive");
        q.abort();
        let _ = q.await;
        executing.wait_for(|n| *n == 0).await.expect("plan dropped");
    }

    #[tokio::test]
    async fn memory_limit_is_a_clear_error() {
        let limits = Limits { memory_bytes: 1 << 20, ..Limits::default() };
        let e = engine(store_with_trades(), limits);
        let err = e
            .query_k("select value, count(*) from generate_series(1, 2000000) group by value order by value")
            .await
            .unwrap_err();
        assert!(matches!(err, QueryError::Memory { .. }), "{err}");
        let text = err.to_string();
        assert!(text.starts_with("limit: query memory of 1048576 bytes exhausted: "), "{text}");
        assert_eq!(e.running(), 0);
        // a small query still runs
        e.query_k("select count(*) from trade").await.expect("small query");
    }

    #[tokio::test]
    async fn result_size_is_bounded() {
        let limits = Limits { max_result_rows: 1000, ..Limits::default() };
        let e = engine(store_with_trades(), limits);
        let err = e.query_k("select * from generate_series(1, 5000)").await.unwrap_err();
        assert_eq!(err.to_string(), "limit: result above 1000 rows");
        let limits = Limits { max_result_bytes: 10_000, ..Limits::default() };
        let e = engine(store_with_trades(), limits);
        let err = e.query_k("select * from generate_series(1, 50000)").await.unwrap_err();
        assert_eq!(err.to_string(), "limit: result above 10000 bytes");
    }

    #[tokio::test]
    async fn selects_keep_table_order() {
        let store = Arc::new(Store::default());
        for chunk in 0..6i64 {
            let t = K::Table(Table {
                attr: Attr::None,
                names: ["x"].into_iter().collect(),
                columns: vec![K::from(Vector::Long((chunk * 3..chunk * 3 + 3).collect()))],
            });
            store.upd("t", t).expect("upd");
        }
        let e = Engine::new(store, Limits::default(), 4).expect("engine");
        for _ in 0..20 {
            let K::Table(t) = e.query_k("select x from t where x % 2 = 0").await.expect("q") else {
                panic!()
            };
            assert_eq!(t.columns[0], K::from(Vector::Long((0..18).filter(|x| x % 2 == 0).collect())));
        }
    }

    #[tokio::test]
    async fn sees_appends_made_after_it_was_built() {
        let store = store_with_trades();
        let e = engine(Arc::clone(&store), Limits::default());
        let row = K::list(vec![K::sym("d"), K::Atom(qmesh_codec::Atom::Float(9.0)), K::long(1)]);
        store.upd("trade", row).expect("upd");
        let K::Table(t) = e.query_k("select count(*) as n from trade").await.expect("q") else { panic!() };
        assert_eq!(t.columns[0], K::from(Vector::Long(vec![5])));
        let K::Table(t) = e.query_k("show tables").await.expect("show") else { panic!() };
        assert!(t.column(b"table_name").is_some());
    }

    #[tokio::test]
    async fn tables_are_checked_before_planning() {
        let e = engine(store_with_trades(), Limits::default());
        let err = e.query_k("select * from quote").await.unwrap_err();
        assert_eq!(err.to_string(), "unknown table: quote");
        assert_eq!(err.to_wire(), WireError::with_detail(ErrorKind::UnknownTable, "quote"));
        let long = "q".repeat(MAX_TABLE_NAME + 1);
        let err = e.query_k(&format!("select * from {long}")).await.unwrap_err();
        assert!(matches!(err, QueryError::NameTooLong(n) if n == MAX_TABLE_NAME + 1), "{err}");
        assert_eq!(err.kind(), ErrorKind::Limit);
        // the statement's own names, and other schemas, are DataFusion's
        e.query_k("with q as (select 1 as x) select x from q").await.expect("cte");
        e.query_k("select table_name from information_schema.tables").await.expect("information_schema");
        let err = e.query_k("select cast('x' as bigint) from trade").await.unwrap_err();
        assert!(matches!(err.kind(), ErrorKind::BadRequest | ErrorKind::ServiceError), "{err}");
    }

    /// Every error's text starts with the word of its catalog entry, so IPC
    /// (the text) and HTTP (the kind) say the same.
    #[test]
    fn error_texts_start_with_their_catalog_word() {
        let errors = [
            QueryError::Timeout(Duration::from_secs(1)),
            QueryError::Memory { limit: 1, detail: "x".into() },
            QueryError::ResultTooLarge { limit: 1, what: "rows" },
            QueryError::SqlTooLong(9),
            QueryError::NameTooLong(9),
            QueryError::UnknownTable("t".into()),
            QueryError::NotAQuery("x".into()),
            QueryError::Sql("x".into()),
            QueryError::Failed("x".into()),
            QueryError::Map(MapError::NotATable(7)),
            QueryError::Map(MapError::UnsupportedArrow { column: "c".into(), arrow: "List".into() }),
            QueryError::ShuttingDown,
            QueryError::Internal("x".into()),
        ];
        for e in errors {
            let text = e.to_string();
            assert_eq!(ErrorKind::from_word(&text), Some(e.kind()), "{text}");
            assert_eq!(WireError::from_q_text(&text), e.to_wire(), "{text}");
        }
    }

    /// The null numpy, PyKX and Java write for a datetime (the positive
    /// quiet NaN) comes back from a query as it went in, as floats and
    /// reals do.
    #[tokio::test]
    async fn nan_payloads_come_back_through_a_query() {
        let store = Arc::new(Store::default());
        let nan = f64::from_bits(0x7FF8_0000_0000_0000);
        let odd = f64::from_bits(0xFFF0_0000_0000_0001);
        let t = K::Table(Table {
            attr: Attr::None,
            names: ["z", "f", "e"].into_iter().collect(),
            columns: vec![
                K::from(Vector::Datetime(vec![1.5, nan, odd])),
                K::from(Vector::Float(vec![nan, 2.0, odd])),
                K::from(Vector::Real(vec![f32::from_bits(0x7FC0_0001), 1.0, f32::from_bits(0xFFC0_0000)])),
            ],
        });
        store.upd("t", t).expect("upd");
        let e = engine(store, Limits::default());
        let K::Table(back) = e.query_k("select * from t").await.expect("q") else { panic!("table") };
        let bits = |k: &K| match k {
            K::Vector(_, Vector::Datetime(v) | Vector::Float(v)) => v.iter().map(|x| x.to_bits()).collect(),
            K::Vector(_, Vector::Real(v)) => v.iter().map(|x| u64::from(x.to_bits())).collect::<Vec<u64>>(),
            other => panic!("{other:?}"),
        };
        assert_eq!(bits(&back.columns[0]), [1.5f64.to_bits(), nan.to_bits(), odd.to_bits()]);
        assert_eq!(bits(&back.columns[1]), [nan.to_bits(), 2.0f64.to_bits(), odd.to_bits()]);
        assert_eq!(bits(&back.columns[2]), [0x7FC0_0001, 1.0f32.to_bits().into(), 0xFFC0_0000]);
    }
}
