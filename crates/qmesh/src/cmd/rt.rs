//! `qmesh rt`: the reliable-transport stream node, and its two client
//! commands.
//!
//! * `qmesh rt -p PORT --http PORT --data DIR --stream NAME… [-u FILE]
//!   [--segment-bytes N] [--durability always|interval] [--archive-* …]`
//! * `qmesh rt tail HOST:PORT STREAM [--from start|latest|POS] [--count N]`:
//!   subscribe and print each message with its position, as q prints values.
//! * `qmesh rt reset HOST:HTTPPORT STREAM`: a hard reset through the HTTP API.

use std::io::Write;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use qmesh_codec::display::Console;
use qmesh_process::Shutdown;
use qmesh_rt::From;
use qmesh_rt::client::{Delivery, Subscriber};
use qmesh_rt_node::{Config, Durability, Policy, parse_durability};

use super::flags::{ServerFlags, parse_bytes, parse_duration};

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Subscribe to a stream and print each message with its position.
    Tail(TailArgs),
    /// Hard-reset a stream through the node's HTTP API (new session; subscribers get a `reset` event).
    Reset(ResetArgs),
    /// Publish numbered test messages `(`name;id)` through a `Publisher` (local log shipped to the node); for
    /// process tests and benchmarks.
    #[command(hide = true)]
    Publish(PublishArgs),
    /// Subscribe through a `Subscriber` (a local copy of the node's log, read from disk) and print each message
    /// delivered as `POS VALUE` (the position after it, then the value in one line); events are logged by the
    /// default handler. For process tests.
    #[command(hide = true)]
    Subscribe(SubscribeArgs),
}

#[derive(Debug, clap::Args)]
pub struct SubscribeArgs {
    /// The stream.
    #[arg(long)]
    pub stream: String,
    /// A node to copy from (repeatable; none: read the local copy only).
    #[arg(long = "cluster", value_delimiter = ',', value_parser = super::flags::parse_address)]
    pub cluster: Vec<String>,
    /// The local copy's directory (default `$RT_LOG_PATH/$stream`).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Where to start: `start` (`::`), `latest`, or a position printed earlier.
    #[arg(long, default_value = "start")]
    pub from: String,
    /// Exit after this many messages.
    #[arg(allow_negative_numbers = true, long)]
    pub count: Option<u64>,
    /// Deliver only `(`upd;`TABLE;…)` messages for these tables (a cached filter).
    #[arg(long, value_delimiter = ',')]
    pub tables: Vec<String>,
    /// The local copy's durability: always, interval or never.
    #[arg(long, default_value = "always", value_parser = parse_durability)]
    pub durability: Durability,
}

#[derive(Debug, clap::Args)]
pub struct PublishArgs {
    /// The stream.
    #[arg(long)]
    pub stream: String,
    /// A node to ship to (repeatable).
    #[arg(long = "cluster", value_delimiter = ',', value_parser = super::flags::parse_address)]
    pub cluster: Vec<String>,
    /// The parent directory of publisher logs (default `$RT_LOG_PATH`).
    #[arg(long)]
    pub path: Option<PathBuf>,
    /// The publisher id (part of the directory name, the message's first item).
    #[arg(long)]
    pub publisher_id: String,
    /// The last message id to publish; ids run from one after the last id in the local log (or 1).
    #[arg(allow_negative_numbers = true, long)]
    pub to: i64,
    /// The first message id, instead of one after the last id in the local log.
    #[arg(long)]
    pub first_id: Option<i64>,
    /// Messages per local write (one fsync each).
    #[arg(allow_negative_numbers = true, long, default_value_t = 100)]
    pub batch: usize,
    /// The local log's durability: always, interval or never.
    #[arg(long, default_value = "always", value_parser = parse_durability)]
    pub durability: Durability,
    /// The local log's roll point.
    #[arg(allow_negative_numbers = true, long, default_value = "1GiB", value_parser = parse_bytes)]
    pub segment_bytes: u64,
    /// Messages per second at most (0: as fast as the local log takes them).
    #[arg(allow_negative_numbers = true, long, default_value_t = 0)]
    pub rate: u64,
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub server: ServerFlags,
    /// The node's name (in `/api/identity` and to discovery).
    #[arg(long, env = "QMESH_NAME", default_value = "rt")]
    pub name: String,
    /// Directory holding one sub-directory of segments per stream.
    #[arg(long, env = "QMESH_DATA")]
    pub data: Option<PathBuf>,
    /// A stream to host (repeatable); the first is the default, where `.u.upd` appends.
    #[arg(long = "stream", env = "QMESH_STREAM", value_delimiter = ',')]
    pub streams: Vec<String>,
    /// Segment size at which a stream's log rolls (`1GiB`, `64MiB`, bytes; at most 1GiB).
    #[arg(allow_negative_numbers = true, long, env = "QMESH_SEGMENT_BYTES", default_value = "1GiB", value_parser = parse_bytes)]
    pub segment_bytes: u64,
    /// When a sync .rt.pub is answered: `always` (after fsync; group commit), `interval` (once written; fsync each second) or `never`.
    #[arg(long, env = "QMESH_DURABILITY", default_value = "always", value_parser = parse_durability)]
    pub durability: Durability,
    /// Archiver: remove rolled segments whose newest message is older than this (`7d` as `168h`; off by default).
    #[arg(long, env = "QMESH_ARCHIVE_MAX_AGE", value_parser = parse_duration)]
    pub archive_max_age: Option<Duration>,
    /// Archiver: keep a stream's segments under this many bytes, removing rolled ones oldest first.
    #[arg(allow_negative_numbers = true, long, env = "QMESH_ARCHIVE_MAX_BYTES", value_parser = parse_bytes)]
    pub archive_max_bytes: Option<u64>,
    /// Archiver: remove rolled segments, oldest first, while the data disk is fuller than this percentage.
    #[arg(allow_negative_numbers = true, long, env = "QMESH_ARCHIVE_MAX_DISK_PERCENT")]
    pub archive_max_disk_percent: Option<f64>,
    /// How often the archiver looks at each stream.
    #[arg(long, env = "QMESH_ARCHIVE_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub archive_interval: Duration,
    /// Discovery registry to heartbeat to (`host:port`, `:host:port:user:password`).
    #[arg(long, env = "QMESH_DISCOVERY")]
    pub discovery: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct TailArgs {
    /// The node (`host:port`, `:host:port:user:password`).
    pub addr: String,
    /// The stream.
    pub stream: String,
    /// Where to start: `start` (oldest unarchived), `latest`, or a position. The position printed above each
    /// message is the one after it (rt.qpk's restart point): `--from` it resumes with the next message.
    #[arg(long, default_value = "latest")]
    pub from: String,
    /// Stop after this many messages.
    #[arg(allow_negative_numbers = true, long)]
    pub count: Option<u64>,
}

#[derive(Debug, clap::Args)]
pub struct ResetArgs {
    /// The node's HTTP address: `host:port`, or q's `host:port:user:password` for a node started with `-u`
    /// (without a user, the `--credentials` file is looked up for `host:port`).
    pub http: String,
    /// The stream.
    pub stream: String,
}

pub async fn run(args: Args, _common: &crate::Common) -> anyhow::Result<ExitCode> {
    match args.command {
        Some(Command::Tail(t)) => tail(t).await,
        Some(Command::Reset(r)) => reset(r).await,
        Some(Command::Publish(p)) => publish(p).await,
        Some(Command::Subscribe(a)) => subscribe(a).await,
        None => serve(args.serve).await,
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let Some(data) = args.data else { bail!("--data DIR is required") };
    let config = Config {
        shell: args.server.shell("rt", &args.name, 0),
        data,
        streams: args.streams,
        segment_bytes: args.segment_bytes,
        durability: args.durability,
        archive: Policy {
            max_age: args.archive_max_age,
            max_bytes: args.archive_max_bytes,
            max_disk_percent: args.archive_max_disk_percent,
        },
        archive_interval: args.archive_interval,
    };
    let shutdown = Shutdown::on_signals().context("signal handlers")?;
    let bound = qmesh_rt_node::bind(config).await?;
    super::announce(&bound.listening_lines())?;
    let _heartbeat = super::discovery::heartbeat(
        args.discovery.as_deref(),
        &args.name,
        "rt",
        Some(bound.ipc_addr()),
        bound.http_addr(),
        &shutdown,
    )?;
    bound.run(shutdown).await?;
    Ok(ExitCode::SUCCESS)
}

async fn tail(args: TailArgs) -> anyhow::Result<ExitCode> {
    let from = match args.from.as_str() {
        "start" | "::" => From::Start,
        "latest" => From::Latest,
        p => From::Position(p.parse().with_context(|| format!("--from {p}: start, latest or a position"))?),
    };
    let mut sub = Subscriber::connect(&args.addr, &args.stream, from).await?;
    let console = Console::DEFAULT;
    let mut seen = 0u64;
    let mut out = std::io::stdout().lock();
    writeln!(out, "subscribed to {} from {}", args.stream, sub.start())?;
    out.flush()?;
    while args.count.is_none_or(|n| seen < n) {
        // The node closing the connection is not the end a script asked for
        // (`--count`, or Ctrl-C): say so and exit non-zero.
        let Some(d) = sub.next().await? else {
            bail!("{}: connection closed after {seen} messages", args.addr);
        };
        match d {
            Delivery::Message { value, pos, .. } => {
                seen += 1;
                let text = console.render(&value);
                writeln!(out, "{pos}")?;
                out.write_all(text.as_bytes())?;
                if !text.ends_with('\n') {
                    writeln!(out)?;
                }
            }
            Delivery::Event { event, p1, p2, .. } => writeln!(out, "{event} {p1} {p2}")?,
        }
        out.flush()?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn reset(args: ResetArgs) -> anyhow::Result<ExitCode> {
    let answer = qmesh_rt_node::http::request_reset(&args.http, &args.stream).await?;
    writeln!(std::io::stdout().lock(), "{answer}")?;
    Ok(ExitCode::SUCCESS)
}

async fn publish(args: PublishArgs) -> anyhow::Result<ExitCode> {
    use qmesh_codec::{K, RawObject};
    use qmesh_rt::publisher::{Header, Publisher, PublisherConfig};
    let mut cfg = PublisherConfig::new(&args.stream);
    if let Some(p) = args.path {
        cfg.path = p;
    }
    cfg.publisher_id = Some(args.publisher_id.clone());
    cfg.cluster = args.cluster;
    cfg.durability = args.durability;
    cfg.segment_size = args.segment_bytes;
    let p = Publisher::start(cfg).await?;
    let first = args.first_id.unwrap_or_else(|| p.last_id().map_or(1, |d| d as i64 + 1));
    let mut out = std::io::stdout().lock();
    writeln!(out, "publishing {} from {first} to {}", p.key(), args.to)?;
    out.flush()?;
    let mut id = first;
    let started = std::time::Instant::now();
    while id <= args.to {
        if args.rate > 0 {
            let due = started + Duration::from_secs_f64((id - first) as f64 / args.rate as f64);
            tokio::time::sleep_until(due.into()).await;
        }
        let end = (id + args.batch.max(1) as i64 - 1).min(args.to);
        let msgs: Vec<(Vec<u8>, Header)> = (id..=end)
            .map(|i| {
                let k = K::list(vec![K::sym(&args.publisher_id), K::long(i)]);
                (RawObject::encode(&k).bytes().to_vec(), Header { id: Some(i), ..Header::default() })
            })
            .collect();
        p.publish_batch(msgs.iter().map(|(b, h)| (b.as_slice(), h)))?;
        id = end + 1;
    }
    writeln!(out, "published {}", args.to)?;
    out.flush()?;
    p.flush().await?;
    writeln!(out, "acked {}", args.to)?;
    out.flush()?;
    p.close().await;
    Ok(ExitCode::SUCCESS)
}

async fn subscribe(args: SubscribeArgs) -> anyhow::Result<ExitCode> {
    use qmesh_rt::filter::Predicate;
    use qmesh_rt::subscriber::{Subscriber as Sub, SubscriberConfig, log_event};
    let from = match args.from.as_str() {
        "start" | "::" => From::Start,
        "latest" => From::Latest,
        p => From::Position(p.parse().with_context(|| format!("--from {p}: start, latest or a position"))?),
    };
    let mut cfg = SubscriberConfig::new(&args.stream);
    if let Some(d) = args.dir {
        cfg.dir = d;
    }
    cfg.cluster = args.cluster;
    cfg.durability = args.durability;
    let shutdown = Shutdown::on_signals().context("signal handlers")?;
    // `None`: the count is reached; `Some`: stdout failed
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<Option<std::io::Error>>();
    let count = args.count;
    let mut seen = 0u64;
    let on_msg = move |m: &qmesh_rt::subscriber::Msg<'_>| {
        let line = match m.decode() {
            Ok(v) => format!("{} {}\n", m.pos, qmesh_codec::display::repr(&v)),
            Err(e) => format!("{} <undecodable: {e}>\n", m.pos),
        };
        // one write per message: a position printed is a position delivered
        if let Err(e) = std::io::stdout().lock().write_all(line.as_bytes()) {
            let _ = done_tx.send(Some(e));
            return;
        }
        seen += 1;
        if count == Some(seen) {
            let _ = done_tx.send(None);
        }
    };
    let stream = args.stream.clone();
    let on_event = move |e, p1, p2| log_event(&stream, e, p1, p2);
    let sub = if args.tables.is_empty() {
        Sub::start(cfg, from, on_msg).await?
    } else {
        let tables = args.tables;
        let pred = Predicate::cached(move |x, y| x == b"upd" && tables.iter().any(|t| t.as_bytes() == y));
        Sub::start_filtered(cfg, from, pred, on_msg, on_event).await?
    };
    let ended = tokio::select! {
        e = done_rx.recv() => e.flatten(),
        () = shutdown.triggered() => None,
    };
    sub.unsub();
    match ended {
        Some(e) => Err(e.into()),
        None => {
            writeln!(std::io::stdout().lock(), "position {}", sub.position())?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
