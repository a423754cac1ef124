//! The query service: the process that holds data and answers queries.
//!
//! This is the "service" of the KX query-routing whitepaper done natively:
//! named tables held in memory as Apache Arrow record batches, queried in SQL
//! through [DataFusion](datafusion), answered as kdb+ tables. A whole estate
//! can run without a kdb+ licence, and a real q process can stand in the
//! place of any instance.
//!
//! * [`mapping`]: kdb+ ⇄ Arrow, column by column (the table below).
//! * [`store`]: named tables, append without row-by-row copies, the schema
//!   checked before anything changes; all ingest goes through [`Ingest`].
//! * [`engine`]: SQL through DataFusion with a per-query timeout that cancels
//!   the plan, a per-query memory pool and a bound on result size.
//! * [`demo`]: a data set in the shape of the whitepaper's `egTrade` and
//!   `egQuote`; [`load`]: tables from Parquet or CSV files.
//! * [`service`]: the process: kdb+ IPC (sync SQL strings, `upd`,
//!   `queryService`), registration with the load balancer, `POST /query`.
//! * [`stream`]: the tables fed from an RT stream (`--rt`, `--stream`),
//!   with the position kept beside a [`snapshot`] of the tables.
//! * [`feed`]: `qmesh feed`, a publisher of realistic trades and quotes in
//!   the demo's table shapes.
//!
//! # Running
//!
//! ```text
//! qmesh service --name EQUITY_MARKET_RDB --lb lbhost:5001 -p 5002 --http 8082 \
//!     --load trade=trade.parquet --load quote=quote.csv      # or --demo --demo-rows 1000000
//! ```
//!
//! ```q
//! q)h:hopen 5002
//! q)h"select sym, avg(price) as px from trade group by sym"   / a keyed table
//! q)h(`upd;`trade;newRows)                                  / or neg[h], as a tickerplant does
//! ```
//!
//! `curl -d '{"query":"select count(*) as n from trade"}' localhost:8082/query`
//! answers `{"type":98,"result":[{"n":1000000}]}`, the JSON every qmesh HTTP
//! API speaks ([`qmesh_process::json`]); a gateway answers the same query
//! with the same bytes.
//! See [`protocol`] for every message the service takes and sends, and
//! [`http`] for the JSON. A synchronous `upd` that does not fit the table is
//! answered with the error (`'schema mismatch: `trade`: column `price` is float, got
//! long`); an asynchronous one has no answer channel, so it is logged and
//! counted (`qmesh_service_upd_rejected_total`). Either way the table is
//! unchanged.
//!
//! # Errors
//!
//! Every error a client sees is a word of the shared catalog
//! ([`qmesh_process::ErrorKind`]), the same over IPC (`'unknown table: quote`)
//! and HTTP (`404 {"error":"unknown table","detail":"quote"}`):
//!
//! | word | when |
//! |---|---|
//! | `bad request` | SQL that does not parse or plan, a statement that is not a query, a message or body of no known form, `upd` data of no known shape, a bad table name |
//! | `unknown table` | the query reads a table the service does not hold; `upd` of a list of columns to a new table |
//! | `schema mismatch` | `upd` data that does not fit the table (nothing changed) |
//! | `unsupported type` | a column with no exact kdb+ ⇄ Arrow mapping (the detail names it) |
//! | `limit` | query memory, result rows or bytes, SQL text, store size, a table name longer than [`store::MAX_TABLE_NAME`] |
//! | `timeout` | the query ran past its time limit and was cancelled |
//! | `service error` | the query was planned but failed while running |
//! | `shutting down`, `internal` | as the catalog says |
//!
//! # kdb+ ⇄ Arrow
//!
//! Every field carries the kdb+ type name in its metadata under `kdb.type`
//! (see [`mapping::KDB_TYPE_KEY`]), so that kdb+ types sharing an Arrow type
//! come back as they went. kdb+ nulls are Arrow nulls both ways; infinities
//! (`0W`, `-0W`) are kept as the extreme values of the Arrow type, so they
//! still sort first and last. Temporals are moved from the kdb+ epoch
//! (2000.01.01) to the Unix epoch (1970.01.01) that Arrow and SQL use.
//!
//! | kdb+ (type) | Arrow | null | notes |
//! |---|---|---|---|
//! | boolean (1) | `Boolean` | — | kdb+ booleans have no null; an Arrow null comes back as `0b` |
//! | guid (2) | `FixedSizeBinary(16)`, extension `arrow.uuid` | `0Ng` (all zero) | bytes in wire order |
//! | byte (4) | `UInt8` | — | an Arrow null comes back as `0x00` |
//! | short (5) | `Int16` | `0Nh` | |
//! | int (6) | `Int32` | `0Ni` | |
//! | long (7) | `Int64` | `0N` | |
//! | real (8) | `Float32` | `0Ne` (any NaN) | a NaN's bits are kept under the null |
//! | float (9) | `Float64` | `0n` (any NaN) | as SQL aggregates skip nulls, `avg` behaves like q's |
//! | char (10), as a column | `Utf8`, one character a row | `" "` | bytes read as Latin-1 (byte *b* is U+00*b*), so every byte has a character and comes back |
//! | symbol (11) | `Dictionary(Int32, Utf8)` | `` ` `` (empty) | a column with a name that is not UTF-8 is `Dictionary(Int32, Binary)` |
//! | string (list of char vectors) | `Utf8` | — | a column with bytes that are not UTF-8 is `Binary`; an Arrow null comes back as `""` |
//! | list of byte vectors | `Binary` | — | |
//! | timestamp (12) | `Timestamp(Nanosecond)` | `0Np` | +946684800 s; kdb+ times after 2262.04.11 are refused (Arrow's range) |
//! | month (13) | `Date32`, the month's first day, `kdb.type=month` | `0Nm` | a date inside the month comes back as that month |
//! | date (14) | `Date32` | `0Nd` | +10957 days |
//! | datetime (15) | `Timestamp(Nanosecond)`, `kdb.type=datetime` | `0Nz` (any NaN) | a NaN's bits are kept under the null (as the value's 64 bits); the double is multiplied out exactly and rounded once to the nanosecond; coming back, the double that maps to that nanosecond is chosen. Exact for every millisecond value (all q prints) and for any double 64 days or more from 2000.01.01 |
//! | timespan (16) | `Duration(Nanosecond)` | `0Nn` | |
//! | minute (17) | `Time32(Second)`, `kdb.type=minute` | `0Nu` | ×60 |
//! | second (18) | `Time32(Second)` | `0Nv` | |
//! | time (19) | `Time32(Millisecond)` | `0Nt` | |
//!
//! Not mapped (refused with an `unsupported type` error naming the column): nested lists,
//! enumerations (send symbols), dictionaries and functions as columns.
//! Attributes (`` `s# `` …) are not kept: Arrow has none, and a sort order
//! claimed for a computed result could be false.
//!
//! **Text.** kdb+ symbols and strings are bytes; SQL text is UTF-8. Text that
//! is UTF-8 (all of it, in practice) maps to `Utf8`; a column holding any
//! other bytes maps to `Binary` (dictionary values for symbols) rather than
//! being altered, so the round trip stays exact, but SQL string functions do
//! not apply to it. A table's schema is fixed by its first data, so an `upd`
//! that brings non-UTF-8 bytes into a `Utf8` column is refused as a
//! mismatch.
//!
//! **Arrow types computed by SQL** map to their natural kdb+ type: `Int8` →
//! short, `UInt16` → int, `UInt32`/`UInt64` → long, `Float16` → real,
//! decimals → float, `LargeUtf8`/`Utf8View` → string, `Date64` → date,
//! `Time64` → timespan, `Duration(*)` → timespan, `Timestamp(*, tz)` →
//! timestamp (UTC). Other types (lists, structs, maps, intervals) are an
//! `unsupported type` error naming the column.
//!
//! **SQL names** are case-sensitive, as in q: `select bidSize from egQuote`.

pub mod demo;
pub mod engine;
pub mod feed;
pub mod http;
pub mod load;
pub mod mapping;
pub mod protocol;
pub mod service;
pub mod snapshot;
pub mod store;
pub mod stream;

pub use engine::{Engine, Limits, QueryError, QueryOutput};
pub use mapping::{KdbType, MapError};
pub use service::{Bound, Config, ServiceError, bind};
pub use store::{Ingest, Store, StoreError};
