//! The service's HTTP API: `POST /query` (also `/api/query`) and
//! `GET /api/tables`.
//!
//! `POST /query` takes the SQL as the body (any content type), or as
//! `{"sql": "…"}` with `Content-Type: application/json`. The answer is JSON:
//!
//! ```json
//! {"columns":["sym","p"],"types":["symbol","float"],"keys":1,"rows":2,
//!  "data":[{"sym":"AAPL","p":101.5},{"sym":"IBM","p":99.25}]}
//! ```
//!
//! `types` are the kdb+ types the columns have on the IPC side, `keys` how
//! many leading columns key the table (0: not keyed). With
//! `Accept: application/vnd.apache.arrow.stream` the answer is the result as
//! an Arrow IPC stream instead, with the same schema metadata. Errors are the
//! catalog's JSON (`{"error":"timeout","detail":…}`) with its status.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use datafusion::arrow::ipc::writer::StreamWriter;
use datafusion::arrow::json::WriterBuilder;
use datafusion::arrow::json::writer::JsonArray;
use qmesh_process::{ErrorKind, WireError};

use crate::engine::{Engine, QueryError, QueryOutput};
use crate::mapping;

/// The media type of an Arrow IPC stream.
pub const ARROW_STREAM: &str = "application/vnd.apache.arrow.stream";

/// Largest request body accepted, in bytes (the SQL text is bounded far
/// lower by the engine).
pub const MAX_BODY_BYTES: usize = 2 << 20;

/// The catalog entry for a query error.
pub fn wire_error(e: &QueryError) -> WireError {
    let kind = match e {
        QueryError::Timeout(_) => ErrorKind::Timeout,
        QueryError::Memory { .. } | QueryError::ResultTooLarge { .. } | QueryError::SqlTooLong(_) => {
            ErrorKind::Limit
        }
        QueryError::Sql(_) | QueryError::NotAQuery(_) => ErrorKind::BadRequest,
        QueryError::Map(_) => ErrorKind::ServiceError,
        QueryError::ShuttingDown => ErrorKind::ShuttingDown,
        QueryError::Internal(_) => ErrorKind::Internal,
    };
    WireError::with_detail(kind, e.to_string())
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

fn sql_of(headers: &HeaderMap, body: &Bytes) -> Result<String, WireError> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        let v: serde_json::Value = serde_json::from_slice(body)
            .map_err(|e| WireError::with_detail(ErrorKind::BadRequest, format!("body is not JSON: {e}")))?;
        v.get("sql").and_then(|s| s.as_str()).map(str::to_string).ok_or_else(|| {
            WireError::with_detail(ErrorKind::BadRequest, "expected {\"sql\": \"…\"}".to_string())
        })
    } else {
        String::from_utf8(body.to_vec())
            .map_err(|_| WireError::with_detail(ErrorKind::BadRequest, "SQL text is not UTF-8".to_string()))
    }
}

async fn query(State(engine): State<Arc<Engine>>, headers: HeaderMap, body: Bytes) -> Response {
    let sql = match sql_of(&headers, &body) {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let arrow =
        headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|v| v.contains(ARROW_STREAM));
    let limits = engine.limits();
    let result = engine
        .query_with(&sql, limits, move |out| if arrow { to_arrow_stream(&out) } else { to_json(&out) })
        .await;
    match result {
        Ok(body) => {
            let ct = if arrow { ARROW_STREAM } else { "application/json" };
            (StatusCode::OK, [(header::CONTENT_TYPE, ct)], body).into_response()
        }
        Err(e) => wire_error(&e).into_response(),
    }
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

/// The JSON answer (see the module documentation).
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
        assert_eq!(e.to_q_text(), "bad request: sql: Error during planning: x");
    }
}
