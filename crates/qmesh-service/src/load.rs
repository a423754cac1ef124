//! Tables from files at start (`--load trade=trade.parquet`).
//!
//! * **Parquet** keeps the file's Arrow types, including the Arrow schema a
//!   writer embeds (pyarrow does, and so do files written from qmesh): a
//!   dictionary-encoded string column is a symbol column, a plain one a
//!   string column, and `kdb.type` metadata is honoured.
//! * **CSV** (with a header row) has its types inferred: integers are longs,
//!   decimals floats, ISO timestamps timestamps, `YYYY-MM-DD` dates, and
//!   text becomes **symbols**, as q's `("S…";enlist",")0:` would load it.
//!
//! Either way every column is brought to the Arrow type its kdb+ type is
//! stored as (see the crate's table) before it reaches the store.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::compute::{CastOptions, cast_with_options};
use datafusion::arrow::datatypes::{
    DataType, DurationNanosecondType, Field, Schema, Time64MicrosecondType, Time64NanosecondType, TimeUnit,
    TimestampNanosecondType,
};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::mapping::{self, KdbType};
use crate::store::{COMPACT_ROWS, Ingest, StoreError};

/// Rows read to infer a CSV file's column types.
pub const CSV_INFER_ROWS: usize = 10_000;

/// Errors loading a file.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("load: bad spec {0:?}; expected NAME=FILE.parquet or NAME=FILE.csv")]
    Spec(String),
    #[error("load: {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("load: {path}: {detail}")]
    Format { path: PathBuf, detail: String },
    #[error("load: {path}: {source}")]
    Store { path: PathBuf, source: StoreError },
}

/// One `--load` argument: a table name and a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadSpec {
    pub table: String,
    pub path: PathBuf,
}

impl std::str::FromStr for LoadSpec {
    type Err = LoadError;

    fn from_str(s: &str) -> Result<LoadSpec, LoadError> {
        let (table, path) = s.split_once('=').ok_or_else(|| LoadError::Spec(s.to_string()))?;
        if table.is_empty() || path.is_empty() {
            return Err(LoadError::Spec(s.to_string()));
        }
        Ok(LoadSpec { table: table.to_string(), path: PathBuf::from(path) })
    }
}

/// What kind of file a path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Parquet,
    Csv,
}

fn kind(path: &Path) -> Option<Kind> {
    match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
        "parquet" | "pq" => Some(Kind::Parquet),
        "csv" => Some(Kind::Csv),
        _ => None,
    }
}

/// Loads one file into `ingest`; returns the rows loaded.
pub fn load(ingest: &dyn Ingest, spec: &LoadSpec) -> Result<usize, LoadError> {
    let path = spec.path.clone();
    let fmt = |detail: String| LoadError::Format { path: path.clone(), detail };
    let kind =
        kind(&spec.path).ok_or_else(|| LoadError::Spec(format!("{}={}", spec.table, path.display())))?;
    let file = File::open(&spec.path).map_err(|source| LoadError::Io { path: path.clone(), source })?;
    let mut rows = 0;
    let mut put = |batch: RecordBatch, text_as_symbol: bool| -> Result<(), LoadError> {
        let batch = normalize(&batch, text_as_symbol).map_err(|e| fmt(e.to_string()))?;
        rows += ingest
            .append(&spec.table, batch)
            .map_err(|source| LoadError::Store { path: path.clone(), source })?;
        Ok(())
    };
    match kind {
        Kind::Parquet => {
            let reader = ParquetRecordBatchReaderBuilder::try_new(file)
                .map_err(|e| fmt(e.to_string()))?
                .with_batch_size(COMPACT_ROWS)
                .build()
                .map_err(|e| fmt(e.to_string()))?;
            for batch in reader {
                put(batch.map_err(|e| fmt(e.to_string()))?, false)?;
            }
        }
        Kind::Csv => {
            use datafusion::arrow::csv::{ReaderBuilder, reader::Format};
            use std::io::Seek;
            let mut file = file;
            let format = Format::default().with_header(true);
            let (schema, _) =
                format.infer_schema(&mut file, Some(CSV_INFER_ROWS)).map_err(|e| fmt(e.to_string()))?;
            file.rewind().map_err(|source| LoadError::Io { path: path.clone(), source })?;
            let reader = ReaderBuilder::new(Arc::new(schema))
                .with_format(format)
                .with_batch_size(COMPACT_ROWS)
                .build(file)
                .map_err(|e| fmt(e.to_string()))?;
            for batch in reader {
                put(batch.map_err(|e| fmt(e.to_string()))?, true)?;
            }
        }
    }
    tracing::info!(table = %spec.table, path = %spec.path.display(), rows, "loaded");
    Ok(rows)
}

fn cast(a: &ArrayRef, to: &DataType) -> Result<ArrayRef, String> {
    let opts = CastOptions { safe: false, ..CastOptions::default() };
    cast_with_options(a, to, &opts).map_err(|e| e.to_string())
}

/// Brings every column of a batch to the Arrow type its kdb+ type is stored
/// as. `text_as_symbol` makes plain text columns symbols.
pub fn normalize(batch: &RecordBatch, text_as_symbol: bool) -> Result<RecordBatch, mapping::MapError> {
    let schema = batch.schema();
    let mut fields = Vec::with_capacity(schema.fields().len());
    let mut arrays = Vec::with_capacity(schema.fields().len());
    for (field, array) in schema.fields().iter().zip(batch.columns()) {
        let (f, a) = normalize_column(field, array, text_as_symbol).map_err(|detail| {
            mapping::MapError::UnsupportedArrow {
                column: field.name().clone(),
                arrow: format!("{} ({detail})", field.data_type()),
            }
        })?;
        fields.push(f);
        arrays.push(a);
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)
        .map_err(|e| mapping::MapError::Arrow(e.to_string()))
}

fn normalize_column(field: &Field, a: &ArrayRef, text_as_symbol: bool) -> Result<(Field, ArrayRef), String> {
    let name = field.name();
    let dt = field.data_type();
    let is_text = matches!(dt, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View);
    let kt = if is_text && text_as_symbol && KdbType::of_field(field).is_none() {
        KdbType::Symbol
    } else {
        mapping::kdb_type_for(field).map_err(|e| e.to_string())?
    };
    let target = if kt.arrow_type_binary().as_ref() == Some(dt) { dt.clone() } else { kt.arrow_type() };
    let array: ArrayRef = if dt == &target {
        Arc::clone(a)
    } else {
        match (dt, &target) {
            (DataType::Timestamp(_, tz), DataType::Timestamp(TimeUnit::Nanosecond, None)) => {
                // Keep the instant: change the unit under the same zone, then
                // drop the zone (values are UTC either way).
                let ns = cast(a, &DataType::Timestamp(TimeUnit::Nanosecond, tz.clone()))?;
                Arc::new(
                    ns.as_primitive::<TimestampNanosecondType>().clone().with_timezone_opt(None::<String>),
                )
            }
            (DataType::Time64(TimeUnit::Nanosecond), DataType::Duration(TimeUnit::Nanosecond)) => Arc::new(
                a.as_primitive::<Time64NanosecondType>().reinterpret_cast::<DurationNanosecondType>(),
            ),
            (DataType::Time64(TimeUnit::Microsecond), DataType::Duration(TimeUnit::Nanosecond)) => {
                let us = a.as_primitive::<Time64MicrosecondType>();
                let ns: datafusion::arrow::array::DurationNanosecondArray =
                    us.unary(|v: i64| v.saturating_mul(1000));
                Arc::new(ns)
            }
            (DataType::Time32(TimeUnit::Millisecond), _) if kt == KdbType::Time => Arc::clone(a),
            _ => cast(a, &target)?,
        }
    };
    let mut f = kt.field(name, array.data_type().clone());
    if array.data_type() != &target && kt.arrow_type_binary().as_ref() != Some(array.data_type()) {
        return Err(format!("became {} rather than {target}", array.data_type()));
    }
    f.set_nullable(true);
    Ok((f, array))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use datafusion::arrow::array::{Int8Array, StringArray, TimestampMillisecondArray};

    fn tmp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("qmesh-service-load-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp dir");
        dir.join(name)
    }

    #[test]
    fn specs_parse() {
        let s: LoadSpec = "trade=/data/t.parquet".parse().expect("spec");
        assert_eq!(s.table, "trade");
        assert!("trade".parse::<LoadSpec>().is_err());
        assert!("=x.csv".parse::<LoadSpec>().is_err());
    }

    #[test]
    fn csv_text_becomes_symbols() {
        let path = tmp("t.csv");
        std::fs::write(&path, "sym,price,size,day\nAAPL,1.5,100,2024-01-02\nMSFT,2.5,200,2024-01-03\n")
            .expect("write");
        let store = Store::default();
        let n = load(&store, &LoadSpec { table: "t".into(), path }).expect("load");
        assert_eq!(n, 2);
        let t = store.table("t").expect("table");
        assert_eq!(t.kdb_types(), &[KdbType::Symbol, KdbType::Float, KdbType::Long, KdbType::Date]);
    }

    #[test]
    fn parquet_round_trips_kdb_types() {
        use datafusion::parquet::arrow::ArrowWriter;
        let t = qmesh_codec::Table {
            attr: qmesh_codec::Attr::None,
            names: ["sym", "m", "t"].into_iter().collect(),
            columns: vec![
                qmesh_codec::K::syms(["a", "b"]),
                qmesh_codec::K::from(qmesh_codec::Vector::Month(vec![1, 2])),
                qmesh_codec::K::from(qmesh_codec::Vector::Time(vec![1, 2])),
            ],
        };
        let batch = mapping::table_to_batch(t, None).expect("batch");
        let path = tmp("t.parquet");
        let mut w =
            ArrowWriter::try_new(File::create(&path).expect("create"), batch.schema(), None).expect("w");
        w.write(&batch).expect("write");
        w.close().expect("close");
        let store = Store::default();
        load(&store, &LoadSpec { table: "t".into(), path }).expect("load");
        let t = store.table("t").expect("table");
        assert_eq!(t.kdb_types(), &[KdbType::Symbol, KdbType::Month, KdbType::Time]);
    }

    #[test]
    fn foreign_arrow_types_are_normalized() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("a", DataType::Int8, true),
            Field::new("s", DataType::Utf8, true),
            Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, Some("+01:00".into())), true),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int8Array::from(vec![1])),
                Arc::new(StringArray::from(vec!["x"])),
                Arc::new(TimestampMillisecondArray::from(vec![946_684_800_000]).with_timezone("+01:00")),
            ],
        )
        .expect("batch");
        let n = normalize(&batch, false).expect("normalize");
        assert_eq!(n.schema().field(0).data_type(), &DataType::Int16);
        assert_eq!(n.schema().field(1).data_type(), &DataType::Utf8);
        assert_eq!(n.schema().field(2).data_type(), &DataType::Timestamp(TimeUnit::Nanosecond, None));
        // the instant is kept: 2000.01.01D00:00 UTC
        let ts = n.column(2).as_primitive::<TimestampNanosecondType>().value(0);
        assert_eq!(ts, mapping::KDB_EPOCH_NS);
        let n = normalize(&batch, true).expect("normalize");
        assert_eq!(mapping::kdb_type_for(n.schema().field(1)).expect("kt"), KdbType::Symbol);
        let _ = n.column(0).len();
    }
}
