//! Every limit of the registry, with its reason and unit. Each is checked
//! before anything is stored or allocated for it.

/// Most processes the registry holds. A heartbeat from one more new name is
/// refused (`'limit: registry full`). Ten times the 10,000 of the benchmark;
/// the row is a few hundred bytes, so the whole table stays in tens of MB.
pub const MAX_PROCESSES: usize = 100_000;

/// Largest IPC message the registry reads, in bytes (checked from the
/// header before the body is read). A heartbeat is ~200 bytes; with every
/// attribute at its limit it stays under 32 KiB.
pub const MAX_MESSAGE_BYTES: u64 = 64 * 1024;

/// Longest process name, in bytes (q symbols; Prometheus label values).
pub const MAX_NAME_BYTES: usize = 128;

/// Longest kind (`rdb`, `hdb`, `gateway`, …), in bytes.
pub const MAX_KIND_BYTES: usize = 64;

/// Longest `ip` or `address`, in bytes (a DNS name is at most 253).
pub const MAX_ADDRESS_BYTES: usize = 300;

/// Longest `qVersion`, in bytes.
pub const MAX_VERSION_BYTES: usize = 64;

/// Longest self-reported `note`, in bytes (Consul truncates check output at 4 KiB;
/// a note is one line for a dashboard).
pub const MAX_NOTE_BYTES: usize = 1024;

/// Most attributes per process (Consul's service meta allows 64).
pub const MAX_ATTRS: usize = 32;

/// Longest attribute name, in bytes (Consul: 128).
pub const MAX_ATTR_KEY_BYTES: usize = 64;

/// Longest attribute value, in bytes (Consul: 512).
pub const MAX_ATTR_VALUE_BYTES: usize = 512;

/// Most WebSocket subscribers at once (dashboards, scripts).
pub const MAX_WS_SUBSCRIBERS: usize = 256;

/// Most changes queued for one WebSocket subscriber; one further behind is
/// told (`{"type":"dropped"}`) and disconnected, and may resume.
pub const WS_QUEUE: usize = 8_192;

/// Changes kept for resuming subscribers.
pub const FEED_HISTORY: usize = 65_536;

/// Most names or kinds one subscription may list.
pub const MAX_SUBSCRIBE_NAMES: usize = 1_024;

/// Most IPC connections at once: every process may hold one, plus room for
/// lookups and reconnects that overlap an old connection.
pub const MAX_CONNECTIONS: usize = MAX_PROCESSES + 1_024;
