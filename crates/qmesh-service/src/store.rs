//! The table store: named tables held as Arrow record batches.
//!
//! A table is a schema (fixed by the first data it receives) and a list of
//! record batches. Appending checks the whole batch against the schema before
//! anything changes, then pushes it: columns are moved, never copied row by
//! row. Small appends (a tickerplant sends a few hundred rows at a time) are
//! gathered into a tail that is compacted into one batch of
//! [`COMPACT_ROWS`] rows, so that queries scan a few large batches rather than
//! thousands of small ones.
//!
//! All ingest goes through the [`Ingest`] trait, so a new source (the stream
//! of the RT issue) only has to call it.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use datafusion::arrow::array::ArrayRef;
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use qmesh_codec::{Atom, Attr, K, Vector};
use qmesh_process::{ErrorKind, WireError};

use crate::mapping::{self, KdbType, MapError};

/// Rows gathered in a table's tail before they are compacted into one batch.
/// 64 Ki rows keeps a compaction under a few milliseconds while giving scans
/// batches of a useful size (DataFusion's own batch size is 8 Ki rows).
pub const COMPACT_ROWS: usize = 64 * 1024;

/// Default bound, in bytes, on all the data one service holds (Arrow memory,
/// as `RecordBatch::get_array_memory_size` counts it). An append that would
/// pass it is refused. 8 GiB: a third of the machines we run on.
pub const DEFAULT_MAX_STORE_BYTES: usize = 8 << 30;

/// Longest table name accepted, in bytes: the bound the service's IPC
/// protocol puts on every name it reads (table and function names), so a
/// name the protocol accepts is never refused here for its length, and a
/// query naming a longer table is refused as such (`limit`) rather than as
/// unknown.
pub const MAX_TABLE_NAME: usize = crate::protocol::MAX_NAME_BYTES;

/// What a panic while a lock of the store was held leaves: possibly a table
/// half appended. The process does not carry on with such state (the
/// project's rule: fail fast, a supervisor restarts the process, its data
/// comes back from its sources), so taking a poisoned lock panics too.
const POISONED: &str = "a store lock is poisoned: a panic interrupted an update of the tables";

fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().expect(POISONED)
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().expect(POISONED)
}

/// Errors of the store; their text is what a kdb+ sender sees, starting
/// with the word of the catalog entry [`StoreError::kind`] names.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    Map(#[from] MapError),
    /// The table does not exist and the data cannot create it.
    #[error("unknown table: {0}: a list of columns needs the table to exist (send a table to create it)")]
    UnknownTable(String),
    /// The data does not fit the table's schema; nothing was changed.
    #[error("schema mismatch: `{table}`: {detail}")]
    Mismatch { table: String, detail: String },
    /// The data is not something `upd` takes.
    #[error(
        "bad request: upd `{table}` takes a table, a list of columns or a list of atoms (one row); got {what}"
    )]
    BadData { table: String, what: String },
    /// A table name that cannot be one (empty, or characters other than
    /// letters, digits, `_` and `.`).
    #[error("bad request: bad table name {0:?}")]
    BadName(String),
    /// A table name longer than [`MAX_TABLE_NAME`] bytes.
    #[error("limit: table name of {0} bytes is above {MAX_TABLE_NAME}")]
    NameTooLong(usize),
    /// The store would grow past its bound.
    #[error("limit: store holds {held} bytes; appending {adding} more would pass the bound of {max}")]
    Full { held: usize, adding: usize, max: usize },
    /// Arrow refused an operation (a bug if it happens).
    #[error("internal: arrow: {0}")]
    Arrow(String),
}

impl StoreError {
    /// The catalog entry, the same over IPC and HTTP.
    pub fn kind(&self) -> ErrorKind {
        match self {
            StoreError::Map(e) => e.kind(),
            StoreError::UnknownTable(_) => ErrorKind::UnknownTable,
            StoreError::Mismatch { .. } => ErrorKind::SchemaMismatch,
            StoreError::BadData { .. } | StoreError::BadName(_) => ErrorKind::BadRequest,
            StoreError::NameTooLong(_) | StoreError::Full { .. } => ErrorKind::Limit,
            StoreError::Arrow(_) => ErrorKind::Internal,
        }
    }

    /// As the catalog's error: the kind, and the text after its word.
    pub fn to_wire(&self) -> WireError {
        crate::engine::wire(self.kind(), &self.to_string())
    }
}

/// Where data comes into the service. The IPC `upd` handler, `--load`,
/// `--demo` and (later) the stream subscriber all use this.
pub trait Ingest: Send + Sync {
    /// Appends a kdb+ payload as a tickerplant sends it: a table, a keyed
    /// table, a list of column vectors, or a list of atoms (one row).
    /// Returns the number of rows appended. On error nothing changed.
    fn upd(&self, table: &str, data: K) -> Result<usize, StoreError>;

    /// Appends an Arrow batch (creating the table if needed). On error
    /// nothing changed.
    fn append(&self, table: &str, batch: RecordBatch) -> Result<usize, StoreError>;
}

#[derive(Debug, Default)]
struct TableData {
    /// Compacted batches.
    sealed: Vec<RecordBatch>,
    /// Recent small batches, compacted once they reach [`COMPACT_ROWS`].
    tail: Vec<RecordBatch>,
    tail_rows: usize,
    rows: usize,
    bytes: usize,
}

/// One table.
#[derive(Debug)]
pub struct StoredTable {
    name: String,
    schema: SchemaRef,
    kdb_types: Vec<KdbType>,
    data: RwLock<TableData>,
}

impl StoredTable {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    /// The kdb+ type of each column.
    pub fn kdb_types(&self) -> &[KdbType] {
        &self.kdb_types
    }

    /// The batches as they are now (cheap: the batches are shared).
    pub fn snapshot(&self) -> Vec<RecordBatch> {
        let d = read(&self.data);
        d.sealed.iter().chain(d.tail.iter()).cloned().collect()
    }

    pub fn rows(&self) -> usize {
        read(&self.data).rows
    }

    pub fn bytes(&self) -> usize {
        read(&self.data).bytes
    }

    /// Checks a batch against the schema and rebuilds it on the table's own
    /// schema object.
    fn conform(&self, batch: RecordBatch) -> Result<RecordBatch, StoreError> {
        let mismatch = |detail: String| StoreError::Mismatch { table: self.name.clone(), detail };
        let theirs = batch.schema();
        let names: Vec<&str> = self.schema.fields().iter().map(|f| f.name().as_str()).collect();
        let got: Vec<&str> = theirs.fields().iter().map(|f| f.name().as_str()).collect();
        if names != got {
            return Err(mismatch(format!("columns are {names:?}, got {got:?}")));
        }
        for (i, (ours, theirs)) in self.schema.fields().iter().zip(theirs.fields().iter()).enumerate() {
            let want = self.kdb_types[i];
            let have = mapping::kdb_type_for(theirs)?;
            if ours.data_type() != theirs.data_type() || want != have {
                let detail = if want == have {
                    format!(
                        "column `{}` is {want} as {}, got {} (text that is not UTF-8?)",
                        ours.name(),
                        ours.data_type(),
                        theirs.data_type()
                    )
                } else {
                    format!("column `{}` is {want}, got {have}", ours.name())
                };
                return Err(mismatch(detail));
            }
        }
        let columns: Vec<ArrayRef> = batch.columns().to_vec();
        RecordBatch::try_new(Arc::clone(&self.schema), columns).map_err(|e| StoreError::Arrow(e.to_string()))
    }

    fn push(&self, batch: RecordBatch) -> Result<(), StoreError> {
        let mut d = write(&self.data);
        let rows = batch.num_rows();
        d.rows += rows;
        d.bytes += batch.get_array_memory_size();
        if rows >= COMPACT_ROWS {
            d.sealed.push(batch);
            return Ok(());
        }
        d.tail.push(batch);
        d.tail_rows += rows;
        if d.tail_rows >= COMPACT_ROWS {
            let merged =
                concat_batches(&self.schema, d.tail.iter()).map_err(|e| StoreError::Arrow(e.to_string()))?;
            let before: usize = d.tail.iter().map(RecordBatch::get_array_memory_size).sum();
            d.bytes = d.bytes - before + merged.get_array_memory_size();
            d.tail.clear();
            d.tail_rows = 0;
            d.sealed.push(merged);
        }
        Ok(())
    }
}

/// The named tables of one service.
#[derive(Debug)]
pub struct Store {
    tables: RwLock<BTreeMap<String, Arc<StoredTable>>>,
    max_bytes: usize,
}

impl Default for Store {
    fn default() -> Store {
        Store::new(DEFAULT_MAX_STORE_BYTES)
    }
}

impl Store {
    /// An empty store that refuses to hold more than `max_bytes`.
    pub fn new(max_bytes: usize) -> Store {
        Store { tables: RwLock::new(BTreeMap::new()), max_bytes }
    }

    pub fn table(&self, name: &str) -> Option<Arc<StoredTable>> {
        read(&self.tables).get(name).cloned()
    }

    /// Table names, sorted.
    pub fn names(&self) -> Vec<String> {
        read(&self.tables).keys().cloned().collect()
    }

    /// Bytes held by all tables.
    pub fn bytes(&self) -> usize {
        read(&self.tables).values().map(|t| t.bytes()).sum()
    }

    fn check_name(name: &str) -> Result<(), StoreError> {
        if name.len() > MAX_TABLE_NAME {
            return Err(StoreError::NameTooLong(name.len()));
        }
        let ok = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
        if ok { Ok(()) } else { Err(StoreError::BadName(name.to_string())) }
    }

    /// A new, empty table (not yet in the store) with the schema of `schema`.
    fn new_table(name: &str, schema: &Schema) -> Result<Arc<StoredTable>, StoreError> {
        Self::check_name(name)?;
        let kdb_types = mapping::kdb_types(schema)?;
        let fields: Vec<_> = schema
            .fields()
            .iter()
            .zip(&kdb_types)
            .map(|(f, kt)| kt.field(f.name(), f.data_type().clone()))
            .collect();
        Ok(Arc::new(StoredTable {
            name: name.to_string(),
            schema: Arc::new(Schema::new(fields)),
            kdb_types,
            data: RwLock::new(TableData::default()),
        }))
    }

    /// Removes a table. Returns whether it existed.
    pub fn drop_table(&self, name: &str) -> bool {
        write(&self.tables).remove(name).is_some()
    }

    fn check_room(&self, adding: usize) -> Result<(), StoreError> {
        let held = self.bytes();
        if held.saturating_add(adding) > self.max_bytes {
            return Err(StoreError::Full { held, adding, max: self.max_bytes });
        }
        Ok(())
    }

    /// Turns an `upd` payload into a batch for `table` (existing or not).
    fn batch_for(&self, table: &str, data: K) -> Result<RecordBatch, StoreError> {
        let existing = self.table(table);
        let bad = |what: String| StoreError::BadData { table: table.to_string(), what };
        match data {
            K::Table(t) => {
                let names = mapping::column_names(&t.names)?;
                match &existing {
                    None => Ok(mapping::columns_to_batch(&names, t.columns, None)?),
                    Some(ex) => {
                        let (names, columns) = reorder(ex, table, names, t.columns)?;
                        Ok(mapping::columns_to_batch(&names, columns, Some(ex.kdb_types()))?)
                    }
                }
            }
            K::Dict(d) => match (d.keys, d.values) {
                (K::Table(k), K::Table(v)) => {
                    let mut names = mapping::column_names(&k.names)?;
                    names.extend(mapping::column_names(&v.names)?);
                    let mut columns = k.columns;
                    columns.extend(v.columns);
                    let table_k = qmesh_codec::Table {
                        attr: Attr::None,
                        names: names.iter().map(String::as_bytes).collect(),
                        columns,
                    };
                    self.batch_for(table, K::Table(table_k))
                }
                (k, v) => Err(bad(format!("a dictionary ({}h!{}h)", k.ty(), v.ty()))),
            },
            K::List(_, items) => {
                let Some(ex) = existing else {
                    return Err(StoreError::UnknownTable(table.to_string()));
                };
                let names: Vec<String> = ex.schema.fields().iter().map(|f| f.name().clone()).collect();
                if items.len() != names.len() {
                    return Err(StoreError::Mismatch {
                        table: table.to_string(),
                        detail: format!("table has {} columns, got a list of {}", names.len(), items.len()),
                    });
                }
                let is_row = items.iter().any(|i| matches!(i, K::Atom(_)));
                let columns = if is_row {
                    items
                        .into_iter()
                        .zip(ex.kdb_types())
                        .map(|(item, kt)| match (item, kt) {
                            (K::Atom(a), _) => Ok(K::Vector(Attr::None, mapping::atom_to_vector(a))),
                            (s @ K::Vector(_, Vector::Char(_)), KdbType::String)
                            | (s @ K::Vector(_, Vector::Byte(_)), KdbType::Bytes) => Ok(K::list(vec![s])),
                            (other, _) => Err(bad(format!("a row holding a {}h item", other.ty()))),
                        })
                        .collect::<Result<Vec<K>, StoreError>>()?
                } else {
                    items
                };
                Ok(mapping::columns_to_batch(&names, columns, Some(ex.kdb_types()))?)
            }
            K::Atom(Atom::Symbol(_)) | K::Atom(_) => Err(bad(format!("an atom ({}h)", data.ty()))),
            other => Err(bad(format!("type {}h", other.ty()))),
        }
    }
}

/// Puts a table's columns in the stored order; the names must be the same set.
fn reorder(
    ex: &StoredTable,
    table: &str,
    names: Vec<String>,
    columns: Vec<K>,
) -> Result<(Vec<String>, Vec<K>), StoreError> {
    let want: Vec<&str> = ex.schema.fields().iter().map(|f| f.name().as_str()).collect();
    if names.iter().map(String::as_str).eq(want.iter().copied()) {
        return Ok((names, columns));
    }
    let mut sorted_want = want.clone();
    sorted_want.sort_unstable();
    let mut sorted_got: Vec<&str> = names.iter().map(String::as_str).collect();
    sorted_got.sort_unstable();
    if sorted_want != sorted_got {
        return Err(StoreError::Mismatch {
            table: table.to_string(),
            detail: format!("columns are {want:?}, got {names:?}"),
        });
    }
    let mut slots: Vec<Option<K>> = vec![None; want.len()];
    for (n, c) in names.iter().zip(columns) {
        if let Some(i) = want.iter().position(|w| w == n) {
            slots[i] = Some(c);
        }
    }
    let columns = slots.into_iter().map(|c| c.unwrap_or(K::list(vec![]))).collect();
    Ok((want.iter().map(|s| s.to_string()).collect(), columns))
}

impl Ingest for Store {
    fn upd(&self, table: &str, data: K) -> Result<usize, StoreError> {
        let batch = self.batch_for(table, data)?;
        self.append(table, batch)
    }

    fn append(&self, table: &str, batch: RecordBatch) -> Result<usize, StoreError> {
        let (mut t, new) = match self.table(table) {
            Some(t) => (t, false),
            None => (Self::new_table(table, &batch.schema())?, true),
        };
        let mut batch = t.conform(batch)?;
        let rows = batch.num_rows();
        self.check_room(batch.get_array_memory_size())?;
        if new {
            // Only now, with the data checked, does the table appear.
            let mut tables = write(&self.tables);
            match tables.entry(table.to_string()) {
                std::collections::btree_map::Entry::Occupied(e) => {
                    // Created meanwhile by another sender: check against theirs.
                    t = Arc::clone(e.get());
                    batch = t.conform(batch)?;
                }
                std::collections::btree_map::Entry::Vacant(v) => {
                    v.insert(Arc::clone(&t));
                }
            }
        }
        if rows > 0 {
            t.push(batch)?;
        }
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qmesh_codec::{Table, Vector, nulls};

    fn trade(syms: &[&str], prices: &[f64]) -> K {
        K::Table(Table {
            attr: Attr::None,
            names: ["sym", "price", "size"].into_iter().collect(),
            columns: vec![
                K::syms(syms.iter().copied()),
                K::from(Vector::Float(prices.to_vec())),
                K::from(Vector::Long(vec![100; prices.len()])),
            ],
        })
    }

    #[test]
    fn upd_creates_then_appends() {
        let s = Store::default();
        assert_eq!(s.upd("trade", trade(&["a", "b"], &[1.0, 2.0])).expect("create"), 2);
        assert_eq!(s.upd("trade", trade(&["c"], &[3.0])).expect("append"), 1);
        let t = s.table("trade").expect("exists");
        assert_eq!(t.rows(), 3);
        assert_eq!(t.snapshot().len(), 2);
        assert_eq!(t.kdb_types(), &[KdbType::Symbol, KdbType::Float, KdbType::Long]);
    }

    #[test]
    fn list_of_columns_and_single_rows() {
        let s = Store::default();
        s.upd("trade", trade(&["a"], &[1.0])).expect("create");
        let cols = K::list(vec![
            K::syms(["x", "y"]),
            K::from(Vector::Float(vec![5.0, 6.0])),
            K::from(Vector::Long(vec![1, 2])),
        ]);
        assert_eq!(s.upd("trade", cols).expect("columns"), 2);
        let row = K::list(vec![K::sym("z"), K::Atom(Atom::Float(7.0)), K::long(3)]);
        assert_eq!(s.upd("trade", row).expect("row"), 1);
        assert_eq!(s.table("trade").expect("t").rows(), 4);
    }

    #[test]
    fn bad_schema_changes_nothing() {
        let s = Store::default();
        s.upd("trade", trade(&["a"], &[1.0])).expect("create");
        let before = s.table("trade").expect("t").snapshot();
        // price sent as long
        let wrong =
            K::list(vec![K::syms(["x"]), K::from(Vector::Long(vec![5])), K::from(Vector::Long(vec![1]))]);
        let err = s.upd("trade", wrong).unwrap_err();
        assert_eq!(err.to_string(), "schema mismatch: `trade`: column `price` is float, got long");
        // wrong number of columns
        let err = s.upd("trade", K::list(vec![K::syms(["x"])])).unwrap_err();
        assert!(err.to_string().starts_with("schema mismatch: `trade`: table has 3 columns"), "{err}");
        // columns of unequal length
        let ragged = K::list(vec![
            K::syms(["x", "y"]),
            K::from(Vector::Float(vec![5.0])),
            K::from(Vector::Long(vec![1])),
        ]);
        assert!(s.upd("trade", ragged).unwrap_err().to_string().starts_with("bad request: column"));
        // other column names
        let other = K::Table(Table {
            attr: Attr::None,
            names: ["sym", "px", "size"].into_iter().collect(),
            columns: vec![K::syms(["a"]), K::from(Vector::Float(vec![1.0])), K::from(Vector::Long(vec![1]))],
        });
        assert!(s.upd("trade", other).unwrap_err().to_string().starts_with("schema mismatch:"));
        let after = s.table("trade").expect("t").snapshot();
        assert_eq!(before, after);
        assert_eq!(s.table("trade").expect("t").rows(), 1);
    }

    #[test]
    fn table_columns_in_another_order_are_reordered() {
        let s = Store::default();
        s.upd("trade", trade(&["a"], &[1.0])).expect("create");
        let t = K::Table(Table {
            attr: Attr::None,
            names: ["size", "sym", "price"].into_iter().collect(),
            columns: vec![K::from(Vector::Long(vec![9])), K::syms(["q"]), K::from(Vector::Float(vec![2.0]))],
        });
        assert_eq!(s.upd("trade", t).expect("reordered"), 1);
    }

    #[test]
    fn unknown_table_needs_names() {
        let s = Store::default();
        let err = s.upd("nope", K::list(vec![K::syms(["a"])])).unwrap_err();
        assert!(matches!(err, StoreError::UnknownTable(_)));
        assert!(s.upd("bad name", trade(&["a"], &[1.0])).is_err());
    }

    #[test]
    fn small_batches_are_compacted() {
        let s = Store::default();
        let n = 1000;
        let syms: Vec<&str> = (0..n).map(|i| if i % 2 == 0 { "a" } else { "b" }).collect();
        let prices: Vec<f64> = (0..n).map(|i| i as f64).collect();
        let batches = COMPACT_ROWS / n + 1;
        for _ in 0..batches {
            s.upd("trade", trade(&syms, &prices)).expect("append");
        }
        let t = s.table("trade").expect("t");
        assert_eq!(t.rows(), batches * n);
        let snap = t.snapshot();
        assert_eq!(snap.len(), 1, "one compacted batch");
        assert_eq!(snap[0].num_rows(), batches * n);
    }

    #[test]
    fn the_bound_on_bytes_holds() {
        let s = Store::new(1024);
        let prices: Vec<f64> = (0..1000).map(f64::from).collect();
        let syms: Vec<&str> = vec!["a"; 1000];
        let err = s.upd("trade", trade(&syms, &prices)).unwrap_err();
        assert!(matches!(err, StoreError::Full { .. }), "{err}");
        assert!(s.table("trade").is_none(), "a refused first upd creates no table");
    }

    #[test]
    fn nulls_survive_the_store() {
        let s = Store::default();
        let t = K::Table(Table {
            attr: Attr::None,
            names: ["x"].into_iter().collect(),
            columns: vec![K::from(Vector::Long(vec![1, nulls::LONG_NULL]))],
        });
        s.upd("t", t).expect("create");
        let tb = s.table("t").expect("t");
        let back = mapping::batches_to_table(&tb.schema(), &tb.snapshot()).expect("back");
        assert_eq!(back.columns[0], K::from(Vector::Long(vec![1, nulls::LONG_NULL])));
    }

    /// Every error's text starts with the word of its catalog entry.
    #[test]
    fn error_texts_start_with_their_catalog_word() {
        let errors = [
            StoreError::Map(MapError::Length { column: "c".into(), got: 1, expected: 2 }),
            StoreError::UnknownTable("t".into()),
            StoreError::Mismatch { table: "t".into(), detail: "x".into() },
            StoreError::BadData { table: "t".into(), what: "x".into() },
            StoreError::BadName("a b".into()),
            StoreError::NameTooLong(MAX_TABLE_NAME + 1),
            StoreError::Full { held: 1, adding: 2, max: 2 },
            StoreError::Arrow("x".into()),
        ];
        for e in errors {
            let text = e.to_string();
            assert_eq!(ErrorKind::from_word(&text), Some(e.kind()), "{text}");
            assert_eq!(WireError::from_q_text(&text), e.to_wire(), "{text}");
        }
        let s = Store::default();
        let err = s.upd(&"t".repeat(MAX_TABLE_NAME + 1), trade(&["a"], &[1.0])).unwrap_err();
        assert!(matches!(err, StoreError::NameTooLong(_)), "{err}");
    }
}
