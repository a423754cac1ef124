//! The service's HTTP API: `POST /query` (also `/api/query`) and
//! `GET /api/tables`.
//!
//! `POST /query` takes the body every qmesh HTTP API takes
//! ([`qmesh_process::json::QueryRequest`]) without `service` (an instance
//! answers for its own tables; `service` and `all_instances` are for a
//! gateway):
//!
//! ```json
//! {"query": "select sym, max(price) as p from trade group by sym", "format": "records", "timeout_ms": 5000}
//! ```
//!
//! and answers the shared JSON form of [`qmesh_process::json`], the same
//! bytes a gateway answers for the same query:
//!
//! ```json
//! {"type":99,"result":[{"sym":"AAPL","p":101.5},{"sym":"IBM","p":99.25}]}
//! ```
//!
//! `format` is `records` (the default) or `columns` (also `?format=` in the
//! URL); `timeout_ms` can only shorten the service's own time limit. With
//! `Accept: application/vnd.apache.arrow.stream` the answer is the result as
//! an Arrow IPC stream instead, whose field metadata carry the kdb+ types.
//! Errors are the catalog's JSON (`{"error":"unknown table","detail":"quote"}`)
//! with its status, the same words the IPC side answers.
//!
//! **Deprecated** (kept for one release; each logs a warning the first time
//! it is used): the SQL as the whole body (any content type), and
//! `{"sql": "…"}`. Both are answered in their old form,
//! `{"columns":[…],"types":[…],"keys":1,"rows":2,"data":[{…},…]}` (`types` the
//! kdb+ type names, `keys` the number of key columns). Move to
//! `{"query": "…"}` and the shared answer.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use datafusion::arrow::ipc::writer::StreamWriter;
use datafusion::arrow::json::WriterBuilder;
use datafusion::arrow::json::writer::JsonArray;
use qmesh_process::json::{self, QueryRequest, TableForm};
use qmesh_process::{ErrorKind, WireError};
use serde::Deserialize;
use tracing::warn;

use crate::engine::{Engine, QueryError, QueryOutput};
use crate::mapping;

/// The media type of an Arrow IPC stream.
pub const ARROW_STREAM: &str = "application/vnd.apache.arrow.stream";

/// Largest request body accepted, in bytes (the SQL text is bounded far
/// lower by the engine).
pub const MAX_BODY_BYTES: usize = 2 << 20;

/// The catalog entry for a query error: the same word the IPC side answers
/// (see [`QueryError::to_wire`]).
pub fn wire_error(e: &QueryError) -> WireError {
    e.to_wire()
}

/// `?format=` in the URL.
#[derive(Debug, Default, Deserialize)]
struct Params {
    format: Option<String>,
}

/// The routes, over an engine.
pub fn router(engine: Arc<Engine>) -> Router {
    Router::new()
        .route("/query", post(query))
        .route("/api/query", post(query))
        .route("/api/tables", get(tables))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(engine)
}

async fn tables(State(engine): State<Arc<Engine>>) -> Response {
    let store = engine.store();
    let list: Vec<serde_json::Value> = store
        .names()
        .into_iter()
        .filter_map(|n| store.table(&n))
        .map(|t| {
            let columns: Vec<serde_json::Value> = t
                .schema()
                .fields()
                .iter()
                .zip(t.kdb_types())
                .map(|(f, kt)| serde_json::json!({"name": f.name(), "type": kt.name()}))
                .collect();
            serde_json::json!({"name": t.name(), "rows": t.rows(), "columns": columns})
        })
        .collect();
    axum::Json(serde_json::json!({ "tables": list })).into_response()
}

/// The deprecated request forms, each warned about once.
static WARNED_BARE: AtomicBool = AtomicBool::new(false);
static WARNED_SQL: AtomicBool = AtomicBool::new(false);

fn warn_once(flag: &AtomicBool, form: &str) {
    if !flag.swap(true, Ordering::Relaxed) {
        warn!(
            form,
            "deprecated POST /query form (answered in the old JSON form); send {{\"query\": \"…\"}} instead"
        );
    }
}

/// What a request asks.
#[derive(Debug, PartialEq, Eq)]
enum Ask {
    /// `{"query": …}`: the shared answer, laid out as `form`, within
    /// `timeout`.
    Query { sql: String, form: TableForm, timeout: Option<Duration> },
    /// A deprecated form: the old answer.
    Legacy { sql: String },
}

fn bad(detail: impl Into<String>) -> WireError {
    WireError::with_detail(ErrorKind::BadRequest, detail)
}

fn ask_of(body: &[u8], url_format: Option<&str>) -> Result<Ask, WireError> {
    if body.trim_ascii_start().starts_with(b"{") {
        let v: serde_json::Value =
            serde_json::from_slice(body).map_err(|e| bad(format!("JSON body: {e}")))?;
        if let Some(sql) = v.get("sql").filter(|_| v.get("query").is_none()) {
            warn_once(&WARNED_SQL, "{\"sql\": …}");
            let sql = sql.as_str().ok_or_else(|| bad("expected {\"sql\": \"…\"}"))?;
            return Ok(Ask::Legacy { sql: sql.to_string() });
        }
        let r = QueryRequest::parse(body)?;
        if r.service.is_some() || r.all_instances {
            return Err(bad(
                "`service` and `all_instances` are for a gateway; an instance answers for its own tables",
            ));
        }
        let form = r.table_form(url_format)?;
        Ok(Ask::Query { sql: r.query, form, timeout: r.timeout_ms.map(Duration::from_millis) })
    } else {
        warn_once(&WARNED_BARE, "SQL as the body");
        let sql = std::str::from_utf8(body).map_err(|_| bad("SQL text is not UTF-8"))?;
        Ok(Ask::Legacy { sql: sql.to_string() })
    }
}

async fn query(
    State(engine): State<Arc<Engine>>,
    Query(params): Query<Params>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let ask = match ask_of(&body, params.format.as_deref()) {
        Ok(a) => a,
        Err(e) => return e.into_response(),
    };
    let arrow =
        headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|v| v.contains(ARROW_STREAM));
    let mut limits = engine.limits();
    let (sql, shape) = match ask {
        Ask::Query { sql, form, timeout } => {
            if let Some(t) = timeout {
                limits.timeout = limits.timeout.min(t);
            }
            (sql, Some(form))
        }
        Ask::Legacy { sql } => (sql, None),
    };
    let result = engine
        .query_with(&sql, limits, move |out| match (arrow, shape) {
            (true, _) => to_arrow_stream(&out),
            (false, Some(form)) => to_answer(&out, form),
            (false, None) => to_json(&out),
        })
        .await;
    match result {
        Ok(body) => {
            let ct = if arrow { ARROW_STREAM } else { "application/json" };
            (StatusCode::OK, [(header::CONTENT_TYPE, ct)], body).into_response()
        }
        Err(e) => wire_error(&e).into_response(),
    }
}

/// The shared answer: the result as the kdb+ value the IPC side sends, in
/// the JSON form of [`qmesh_process::json`].
pub fn to_answer(out: &QueryOutput, form: TableForm) -> Result<Vec<u8>, QueryError> {
    let k = out.to_k()?;
    serde_json::to_vec(&json::answer(&k, form)).map_err(|e| QueryError::Internal(e.to_string()))
}

fn to_arrow_stream(out: &QueryOutput) -> Result<Vec<u8>, QueryError> {
    let mut buf = Vec::new();
    let err = |e: datafusion::arrow::error::ArrowError| QueryError::Internal(e.to_string());
    let mut w = StreamWriter::try_new(&mut buf, &out.schema).map_err(err)?;
    for b in &out.batches {
        w.write(b).map_err(err)?;
    }
    w.finish().map_err(err)?;
    drop(w);
    Ok(buf)
}

/// The deprecated answer (see the module documentation).
pub fn to_json(out: &QueryOutput) -> Result<Vec<u8>, QueryError> {
    let types: Vec<&str> = out
        .schema
        .fields()
        .iter()
        .map(|f| mapping::kdb_type_for(f).map(|t| t.name()))
        .collect::<Result<_, _>>()?;
    let columns: Vec<&str> = out.schema.fields().iter().map(|f| f.name().as_str()).collect();
    let mut data = Vec::new();
    {
        let mut w = WriterBuilder::new().with_explicit_nulls(true).build::<_, JsonArray>(&mut data);
        for b in &out.batches {
            w.write(b).map_err(|e| QueryError::Internal(e.to_string()))?;
        }
        w.finish().map_err(|e| QueryError::Internal(e.to_string()))?;
    }
    if data.is_empty() {
        data.extend_from_slice(b"[]");
    }
    let head =
        serde_json::json!({"columns": columns, "types": types, "keys": out.key_columns, "rows": out.rows()});
    let mut body = serde_json::to_vec(&head).map_err(|e| QueryError::Internal(e.to_string()))?;
    // Splice the data array in as the last member.
    body.pop();
    body.extend_from_slice(b",\"data\":");
    body.extend_from_slice(&data);
    body.push(b'}');
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Limits;
    use crate::store::{Ingest, Store};
    use qmesh_codec::{Attr, K, Table, Vector};

    async fn engine() -> Arc<Engine> {
        let store = Arc::new(Store::default());
        let t = K::Table(Table {
            attr: Attr::None,
            names: ["sym", "price"].into_iter().collect(),
            columns: vec![K::syms(["a", "b", "a"]), K::from(Vector::Float(vec![1.0, 2.0, f64::NAN]))],
        });
        store.upd("trade", t).expect("upd");
        Arc::new(Engine::new(store, Limits::default(), 1).expect("engine"))
    }

    #[tokio::test]
    async fn json_answer_has_types_keys_and_nulls() {
        let e = engine().await;
        let out =
            e.query("select sym, max(price) as p from trade group by sym order by sym").await.expect("q");
        let body = to_json(&out).expect("json");
        let v: serde_json::Value = serde_json::from_slice(&body).expect("valid JSON");
        assert_eq!(v["columns"], serde_json::json!(["sym", "p"]));
        assert_eq!(v["types"], serde_json::json!(["symbol", "float"]));
        assert_eq!(v["keys"], 1);
        assert_eq!(v["rows"], 2);
        assert_eq!(v["data"], serde_json::json!([{"sym": "a", "p": 1.0}, {"sym": "b", "p": 2.0}]));
        let out = e.query("select price from trade where sym = 'a'").await.expect("q");
        let v: serde_json::Value = serde_json::from_slice(&to_json(&out).expect("json")).expect("json");
        assert_eq!(v["data"], serde_json::json!([{"price": 1.0}, {"price": null}]));
        let out = e.query("select price from trade where sym = 'zz'").await.expect("q");
        let v: serde_json::Value = serde_json::from_slice(&to_json(&out).expect("json")).expect("json");
        assert_eq!(v["data"], serde_json::json!([]));
    }

    #[test]
    fn errors_map_to_the_catalog() {
        let e = wire_error(&QueryError::Timeout(std::time::Duration::from_secs(1)));
        assert_eq!(e.http_status(), 504);
        let e = wire_error(&QueryError::Sql("Error during planning: x".into()));
        assert_eq!(e.http_status(), 400);
        assert_eq!(e.to_q_text(), "bad request: Error during planning: x");
    }

    #[test]
    fn request_forms() {
        let q = |b: &str| ask_of(b.as_bytes(), None);
        assert_eq!(
            q(r#"{"query":"select 1","format":"columns","timeout_ms":5}"#),
            Ok(Ask::Query {
                sql: "select 1".into(),
                form: TableForm::Columns,
                timeout: Some(Duration::from_millis(5))
            })
        );
        assert_eq!(
            ask_of(br#"{"query":"select 1"}"#, Some("columns")),
            Ok(Ask::Query { sql: "select 1".into(), form: TableForm::Columns, timeout: None })
        );
        // deprecated, still answered
        assert_eq!(q(r#" {"sql":"select 1"}"#), Ok(Ask::Legacy { sql: "select 1".into() }));
        assert_eq!(q("select 1"), Ok(Ask::Legacy { sql: "select 1".into() }));
        // refused with the catalog's word
        for body in [
            r#"{"query":"x","service":"EQ"}"#,
            r#"{"query":"x","sqll":1}"#,
            r#"{"sql":1}"#,
            "{",
            r#"{"query":"x","format":"rows"}"#,
        ] {
            assert_eq!(q(body).map_err(|e| e.kind), Err(ErrorKind::BadRequest), "{body}");
        }
        assert!(ask_of(b"\xff", None).is_err());
    }

    #[tokio::test]
    async fn the_shared_answer_is_the_kdb_value_as_json() {
        let e = engine().await;
        let out =
            e.query("select sym, max(price) as p from trade group by sym order by sym").await.expect("q");
        let v: serde_json::Value =
            serde_json::from_slice(&to_answer(&out, TableForm::Records).expect("json")).expect("JSON");
        assert_eq!(
            v,
            serde_json::json!({"type": 99, "result": [{"sym": "a", "p": 1.0}, {"sym": "b", "p": 2.0}]})
        );
        let k = out.to_k().expect("k");
        assert_eq!(v, json::answer(&k, TableForm::Records));
    }
}
