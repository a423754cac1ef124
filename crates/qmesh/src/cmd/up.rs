//! `qmesh up [--config FILE] [--base-port N] [--only NAME…] [--data DIR]
//! [--print-config]`: starts a whole estate (see `qmesh-supervisor`), and
//! `qmesh status`: the estate as discovery sees it.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use qmesh_process::Shutdown;
use qmesh_supervisor::config::{DEFAULT_BASE_PORT, default_data_dir};
use qmesh_supervisor::{Estate, Event, Kind};

/// The file `qmesh up` reads when no `--config` names one, if it describes
/// processes (the same file whose tables give each kind's flag defaults).
const DEFAULT_CONFIG: &str = "qmesh.toml";

/// The table the example queries read: the demo feed's (and `--demo`'s) trades.
const EXAMPLE_TABLE: &str = "trade";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Lay the embedded default estate out from this port (default 5000): gateway kdb+ IPC N, gateway HTTP N+80, dashboard N+81, the rest N+1..N+5 and N+82..N+85. Ignored, with a warning, when a config file gives the ports.
    #[arg(long, env = "QMESH_BASE_PORT", value_name = "N")]
    pub base_port: Option<u16>,
    /// Write the estate's config (the embedded default, or the file's) to stdout and exit.
    #[arg(long)]
    pub print_config: bool,
    /// Start only these processes (names from the config; several allowed).
    #[arg(long, num_args = 1.., value_delimiter = ',', value_name = "NAME")]
    pub only: Vec<String>,
    /// Directory of every process's state and log (default: [estate] data, else $XDG_DATA_HOME/qmesh or ~/.local/share/qmesh); a second `qmesh up` resumes from it.
    #[arg(long, env = "QMESH_DATA")]
    pub data: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Exit status: 0 when every process of the config is active; 3 when one of them is not \
active (starting, warning, error, disconnected or absent); 1 when discovery cannot be reached or another error \
stops the command. Processes discovery knows that the config does not name (started by another config or an \
earlier --only run) are listed after the config's and do not change the status."
)]
pub struct StatusArgs {
    /// Base port of the embedded default estate (default 5000). Ignored, with a warning, when a config file gives the ports.
    #[arg(long, env = "QMESH_BASE_PORT", value_name = "N")]
    pub base_port: Option<u16>,
}

/// The estate: `--config FILE`, else `./qmesh.toml` if it has `[[process]]`
/// tables, else the embedded default from `base_port`. Also the file the
/// children read their flag defaults from. A `base_port` given with a file
/// is ignored, with a warning on stderr.
fn estate(common: &crate::Common, base_port: Option<u16>) -> anyhow::Result<(Estate, Option<PathBuf>)> {
    let path = match &common.config {
        Some(p) => Some(p.clone()),
        None => {
            let p = PathBuf::from(DEFAULT_CONFIG);
            let describes = std::fs::read_to_string(&p)
                .ok()
                .and_then(|t| t.parse::<toml::Table>().ok())
                .is_some_and(|t| t.contains_key("process"));
            describes.then_some(p)
        }
    };
    match path {
        Some(p) => {
            if let Some(n) = base_port {
                warn(&format!(
                    "--base-port {n} (or QMESH_BASE_PORT) ignored: ports come from {}",
                    p.display()
                ));
            }
            let text = std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?;
            let estate = Estate::parse(&text).with_context(|| p.display().to_string())?;
            let abs = std::path::absolute(&p).unwrap_or(p);
            Ok((estate, Some(abs)))
        }
        None => Ok((Estate::default_layout(base_port.unwrap_or(DEFAULT_BASE_PORT))?, None)),
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

pub async fn run(args: Args, common: &crate::Common) -> anyhow::Result<ExitCode> {
    let (estate, config_file) = estate(common, args.base_port)?;
    if args.print_config {
        let mut out = std::io::stdout().lock();
        out.write_all(estate.to_toml()?.as_bytes())?;
        out.flush()?;
        return Ok(ExitCode::SUCCESS);
    }
    let this_host = host_name();
    let selected = estate.select(&args.only, &this_host)?;
    if selected.is_empty() {
        anyhow::bail!("no process of the estate runs on this host (use --only NAME to pick some)");
    }
    let bind: std::net::IpAddr =
        estate.estate.bind.parse().with_context(|| format!("[estate] bind = {}", estate.estate.bind))?;
    let data = match args.data.or_else(|| estate.estate.data.clone()) {
        Some(d) => d,
        None => default_data_dir(),
    };
    let data = std::path::absolute(&data).unwrap_or(data);
    // before anything starts: no other `qmesh up` runs one of these on this
    // data directory (held until this function returns)
    let _locks = qmesh_supervisor::lock::lock(&data, &selected)?;
    qmesh_supervisor::ports::check_free(bind, &estate.ports_of(&selected))?;
    let names: Vec<String> = selected.iter().map(|p| p.name.clone()).collect();
    let exe = std::env::current_exe().context("cannot find the qmesh executable")?;

    let n = names.len();
    say(&format!(
        "qmesh up: {n} {} ({}), state and logs in {}",
        if n == 1 { "process" } else { "processes" },
        names.join(" "),
        data.display()
    ));
    if args.only.is_empty() {
        let elsewhere = estate.elsewhere(&this_host)?;
        if !elsewhere.is_empty() {
            say(&format!(
                "qmesh up: not starting {} configured for other hosts: {}",
                if elsewhere.len() == 1 { "1 process" } else { "the processes" },
                elsewhere.join(", ")
            ));
        }
    }
    let width = names.iter().map(String::len).max().unwrap_or(0);
    let summary = Summary { estate: estate.clone(), selected: names.clone() };
    let opts = qmesh_supervisor::Options { estate, selected: names, data, exe, config_file };

    let shutdown = Shutdown::on_signals().context("signal handlers")?;
    let stop = shutdown.clone();
    // the children's death signal follows the thread that starts them: this
    // one lives until they are stopped
    let result = tokio::task::spawn_blocking(move || {
        let mut restarts = 0u64;
        let r = qmesh_supervisor::run(opts, &stop, &mut |e| {
            if let Event::Exited { .. } | Event::SpawnFailed { .. } | Event::StartTimedOut { .. } = e {
                restarts += 1;
            }
            progress(&e, width, &summary);
        });
        (r, restarts)
    })
    .await
    .context("the supervisor thread")?;
    let (result, restarts) = result;
    result?;
    let plural = if restarts == 1 { "" } else { "s" };
    say(&format!("qmesh up: stopped ({restarts} restart{plural})"));
    Ok(ExitCode::SUCCESS)
}

/// What the final summary needs.
struct Summary {
    estate: Estate,
    selected: Vec<String>,
}

/// A warning line on stderr (stdout carries the progress or the table).
fn warn(line: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "qmesh: warning: {line}");
    let _ = err.flush();
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn progress(e: &Event, w: usize, s: &Summary) {
    match e {
        Event::Starting { name, pid, restart, command } => {
            let again = if *restart > 0 { format!(" (restart {restart})") } else { String::new() };
            say(&format!("  {name:w$}  starting   pid {pid}{again}: {command}"));
        }
        Event::Listening { name, proto, addr } => say(&format!("  {name:w$}  listening  {proto} {addr}")),
        Event::Healthy { name, pid } => say(&format!("  {name:w$}  healthy    pid {pid}")),
        Event::AllHealthy => say(&where_things_are(s)),
        Event::Exited { name, pid, status, delay, restart } => say(&format!(
            "  {name:w$}  exited     pid {pid}, {status}; restart {restart} in {:.1}s",
            delay.as_secs_f64()
        )),
        Event::SpawnFailed { name, error, delay, restart } => say(&format!(
            "  {name:w$}  not started: {error}; restart {restart} in {:.1}s",
            delay.as_secs_f64()
        )),
        Event::StartTimedOut { name, pid } => {
            say(&format!("  {name:w$}  not healthy in time, pid {pid} killed"))
        }
        Event::Stopping { name, pid } => say(&format!("  {name:w$}  stopping   pid {pid}")),
        Event::Stopped { name, pid, status, killed } => {
            let how = if *killed { ", killed after the stop timeout" } else { "" };
            say(&format!("  {name:w$}  stopped    pid {pid}, {status}{how}"));
        }
    }
}

/// The lines printed once every process is healthy: where things are and
/// three queries that work as printed.
fn where_things_are(s: &Summary) -> String {
    let e = &s.estate;
    let started = |k: Kind| e.processes.iter().find(|p| p.kind == k && s.selected.contains(&p.name));
    let mut out = String::from("\nThe estate is up.\n");
    if let Some(d) = started(Kind::Discovery).filter(|d| d.http.is_some()) {
        let http = d.http.unwrap_or_default();
        out += &format!("  dashboard      http://{}:{http}/\n", e.host_of(d));
    }
    let Some(gw) = started(Kind::Gateway) else {
        out += "Ctrl-C stops the estate.";
        return out;
    };
    let host = e.host_of(gw);
    let port = gw.port.unwrap_or_default();
    out += &format!("  gateway        kdb+ IPC {host}:{port}");
    if let Some(http) = gw.http {
        out += &format!(", HTTP http://{host}:{http}/query");
    }
    out.push('\n');
    let service = e.first_of(Kind::Service).and_then(|p| p.service.clone());
    if let Some(svc) = service {
        let sql = format!("select sym, count(*) as n, avg(price) as price from {EXAMPLE_TABLE} group by sym");
        let q_port = if host == "localhost" { format!("::{port}") } else { format!(":{host}:{port}") };
        out += &format!("\nQuery it (service {svc}, SQL over the table {EXAMPLE_TABLE}):\n");
        out += &format!("  q     h:hopen `{q_port}; h(`userQuery;(`{svc};\"{sql}\"))\n");
        out += &format!(
            "  PyKX  PYKX_UNLICENSED=true python3 -c \"import pykx as kx; q = kx.SyncQConnection('{host}', {port}); \
             print(q('userQuery', kx.toq([kx.SymbolAtom('{svc}'), kx.CharVector('{sql}')])).pd())\"\n"
        );
        if let Some(http) = gw.http {
            out += &format!(
                "  curl  curl -s http://{host}:{http}/query -H 'content-type: application/json' \
                 -d '{{\"service\":\"{svc}\",\"query\":\"{sql}\"}}'\n"
            );
        }
    }
    out += "\nqmesh status lists the processes; Ctrl-C stops the estate.";
    out
}

pub async fn status(args: StatusArgs, common: &crate::Common) -> anyhow::Result<ExitCode> {
    let (estate, _) = estate(common, args.base_port)?;
    // the config's processes come first; rows discovery has of others (a process an earlier `--only` run or
    // another config started) follow, shown but not judged
    let configured = estate.processes.len();
    let lines = tokio::task::spawn_blocking(move || qmesh_supervisor::status::status(&estate)).await??;
    let w = |f: fn(&qmesh_supervisor::status::Line) -> &str, min: usize| {
        lines.iter().map(|l| f(l).len()).max().unwrap_or(0).max(min)
    };
    let (wn, wk, wa, ws) = (w(|l| &l.name, 4), w(|l| &l.kind, 4), w(|l| &l.address, 7), w(|l| &l.state, 5));
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:wn$}  {:wk$}  {:wa$}  {:ws$}  {:>8}  {:>7}  registered as",
        "name", "kind", "address", "state", "pid", "beat"
    )?;
    let mut all_active = true;
    for (n, l) in lines.iter().enumerate() {
        all_active &= n >= configured || l.state == "active";
        let pid = if l.pid > 0 { l.pid.to_string() } else { "-".into() };
        let age = if l.age_ms >= 0 { format!("{:.1}s", l.age_ms as f64 / 1000.0) } else { "-".into() };
        writeln!(
            out,
            "{:wn$}  {:wk$}  {:wa$}  {:ws$}  {pid:>8}  {age:>7}  {}",
            l.name, l.kind, l.address, l.state, l.registered_as
        )?;
    }
    out.flush()?;
    // like `systemctl is-active`: 0 only when every process is active; an
    // error (discovery unreachable) is 1 through main (see StatusArgs' help)
    Ok(if all_active { ExitCode::SUCCESS } else { ExitCode::from(3) })
}
