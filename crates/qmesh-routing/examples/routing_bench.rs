//! The tools of `bench/routing.sh`.
//!
//! `routing_bench service [--lb HOST:PORT] [--name NAME] [--port P]`: a
//! whitepaper service (as `service.q`) that answers any query with `2`, on
//! one thread, one message at a time, as q does. It answers sync queries
//! directly (for the "direct" and HAProxy runs) and `queryService` from a
//! gateway, registering with the load balancer first.
//!
//! `routing_bench gateway [--lb HOST:PORT] [--port P] [--concurrency K]
//! [--instances A,B --service NAME]`: the qmesh gateway (the library `qmesh
//! gateway` runs), with an embedded load balancer unless `--lb` is given;
//! with `--instances`, the services are its static instances and plain
//! queries go to them (mserve mode, `qmesh mserve`); prints `gateway
//! listening ipc ADDR`.
//!
//! `routing_bench load --targets A,B --mode direct|routed --clients N
//! --seconds S [--warmup S] [--service NAME]`: N clients, each in a closed
//! loop of sync requests (`"1+1"` directly, `(`userQuery;(`NAME;"1+1"))`
//! through a gateway); clients are spread over the targets. Prints one JSON
//! line: throughput, latency percentiles, and the CPU time per request of
//! this process plus the `--watch PID,PID` processes (the servers).

// A command-line tool: its output is what it is for.
#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use qmesh_codec::{K, Message, RawObject};
use qmesh_ipc::{Address, ClientOptions, Connection, Handler, Peer, Responder, Server, ServerConfig};
use qmesh_routing::proto;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("service") => service(&args),
        Some("load") => load(&args),
        Some("gateway") => gateway(&args),
        _ => {
            eprintln!("usage: routing_bench service|load …");
            std::process::exit(2);
        }
    }
}

struct BenchService {
    name: qmesh_routing::ServiceName,
    lb: Option<qmesh_ipc::Sender>,
    two: RawObject,
}

impl Handler for BenchService {
    async fn on_sync(&self, _peer: &Peer, _msg: Message, responder: Responder) {
        let _ = responder.reply_raw(self.two.clone());
    }

    async fn on_async(&self, peer: &Peer, msg: Message) {
        let Some(call) = proto::call_of(&msg) else { return };
        if &call.name[..] != proto::QUERY_SERVICE {
            return;
        }
        let Some(Ok(items)) = call.args.first().map(RawObject::list_items) else { return };
        let Some(seq) = items.first().and_then(|s| proto::seq_arg(s).ok()) else { return };
        // execRequest: nh(`returnRes;(sq;result)), then NLB(`returnService;name)
        let reply =
            K::list(vec![K::sym("returnRes"), K::list(vec![K::long(seq.0), K::Raw(self.two.clone())])]);
        let _ = peer.send_async(&reply);
        if let Some(lb) = &self.lb {
            let _ = lb.send_async(&proto::return_service_name(&self.name));
        }
    }
}

fn service(args: &[String]) {
    // one thread: the service runs one message at a time, as q does
    let rt = tokio::runtime::Builder::new_current_thread()
        .on_thread_park(qmesh_ipc::on_thread_park)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let port: u16 = arg(args, "--port").and_then(|p| p.parse().ok()).unwrap_or(0);
        let name = qmesh_routing::ServiceName::new(arg(args, "--name").unwrap_or_else(|| "BENCH".into()));
        let server = Server::bind(ServerConfig::tcp(([127, 0, 0, 1], port).into())).await.expect("bind");
        let local = server.local_addr().expect("tcp");
        let lb = match arg(args, "--lb") {
            Some(a) => {
                let conn = Connection::connect(&Address::parse(&a).expect("--lb"), ClientOptions::default())
                    .await
                    .expect("connect to the load balancer");
                let (sender, _rx) = conn.split();
                let address = qmesh_routing::Address::new(format!(":127.0.0.1:{}", local.port()));
                sender.send_async(&proto::register_resource(&name, &address)).expect("register");
                // keep the receiver: dropping it is fine (nothing is pushed)
                Some(sender)
            }
            None => None,
        };
        println!("service listening ipc {local}");
        let two = RawObject::encode(&K::long(2));
        server.run(BenchService { name, lb, two }, std::future::pending()).await.expect("serve");
    });
}

fn gateway(args: &[String]) {
    let threads: usize = arg(args, "--threads").and_then(|c| c.parse().ok()).unwrap_or(2);
    let mut builder = if threads == 0 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    let rt = builder.on_thread_park(qmesh_ipc::on_thread_park).enable_all().build().expect("rt");
    rt.block_on(async {
        let port: u16 = arg(args, "--port").and_then(|p| p.parse().ok()).unwrap_or(0);
        let lb = match arg(args, "--lb") {
            Some(a) => qmesh_routing::LbLocation::Remote(Address::parse(&a).expect("--lb")),
            None => qmesh_routing::LbLocation::Embedded(qmesh_routing::lb::LbConfig {
                instance_concurrency: arg(args, "--concurrency").and_then(|c| c.parse().ok()).unwrap_or(1),
                ..qmesh_routing::lb::LbConfig::default()
            }),
        };
        let mut shell = qmesh_process::ShellOptions::new("gateway", "gateway");
        shell.ipc = qmesh_ipc::ServerConfig::tcp(([127, 0, 0, 1], port).into());
        let service =
            qmesh_routing::ServiceName::new(arg(args, "--service").unwrap_or_else(|| "BENCH".into()));
        let static_instances = match arg(args, "--instances") {
            Some(list) => {
                qmesh_routing::parse_instances(&[format!("{service}={list}")]).expect("--instances")
            }
            None => Vec::new(),
        };
        let default_service = (!static_instances.is_empty()).then_some(service);
        let opts = qmesh_routing::GatewayOptions {
            shell,
            lb,
            static_instances,
            default_service,
            ..qmesh_routing::GatewayOptions::default()
        };
        let bound = qmesh_routing::bind_gateway(opts).await.expect("bind");
        println!("gateway listening ipc {}", bound.ipc_addr().expect("tcp"));
        bound.run(qmesh_process::Shutdown::new()).await.expect("run");
    });
}

/// Linux's USER_HZ: the unit of the CPU times in `/proc/PID/stat`.
const CLOCK_TICKS_PER_S: f64 = 100.0;

/// User + system CPU time of the processes, in clock ticks (threads
/// included; `self` is this process).
fn cpu_ticks(pids: &[String]) -> u64 {
    pids.iter()
        .map(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            // fields after the command (which may hold spaces) end with ')'
            let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
            let f: Vec<&str> = rest.split_whitespace().collect();
            // utime and stime are fields 14 and 15: indexes 11 and 12 after ')'
            let t = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            t(11) + t(12)
        })
        .sum()
}

fn load(args: &[String]) {
    let targets: Vec<String> =
        arg(args, "--targets").expect("--targets").split(',').map(str::to_string).collect();
    let routed = arg(args, "--mode").as_deref() == Some("routed");
    let clients: usize = arg(args, "--clients").and_then(|c| c.parse().ok()).unwrap_or(1);
    let seconds: f64 = arg(args, "--seconds").and_then(|c| c.parse().ok()).unwrap_or(5.0);
    let warmup: f64 = arg(args, "--warmup").and_then(|c| c.parse().ok()).unwrap_or(1.0);
    let threads: usize = arg(args, "--threads").and_then(|c| c.parse().ok()).unwrap_or(1);
    let service = arg(args, "--service").unwrap_or_else(|| "BENCH".into());
    // the processes whose CPU time counts with ours (servers, proxy)
    let mut watch: Vec<String> = arg(args, "--watch")
        .map(|w| w.split(',').filter(|p| !p.is_empty()).map(str::to_string).collect())
        .unwrap_or_default();
    watch.push("self".into());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .on_thread_park(qmesh_ipc::on_thread_park)
        .enable_all()
        .build()
        .expect("rt");
    rt.block_on(async move {
        let msg = if routed {
            K::list(vec![K::sym("userQuery"), K::list(vec![K::sym(service.as_str()), K::string("1+1")])])
        } else {
            K::string("1+1")
        };
        let msg = RawObject::encode(&msg);
        let mut conns = Vec::with_capacity(clients);
        for i in 0..clients {
            let a = Address::parse(&targets[i % targets.len()]).expect("target");
            conns.push(Connection::connect(&a, ClientOptions::default()).await.expect("connect"));
        }
        // check once that the answer is 2
        let first = conns[0].call_raw(msg.clone()).await.expect("first call");
        assert_eq!(first.decode().expect("decode"), K::long(2), "unexpected answer");
        let measuring = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::with_capacity(clients);
        for conn in conns {
            let msg = msg.clone();
            let measuring = measuring.clone();
            let stop = stop.clone();
            tasks.push(tokio::spawn(async move {
                let mut lat: Vec<u32> = Vec::with_capacity(1 << 16);
                while !stop.load(Ordering::Relaxed) {
                    let t0 = Instant::now();
                    let r = conn.call_raw(msg.clone()).await;
                    let ns = t0.elapsed().as_nanos().min(u128::from(u32::MAX)) as u32;
                    if r.is_err() {
                        break;
                    }
                    if measuring.load(Ordering::Relaxed) {
                        lat.push(ns);
                    }
                }
                lat
            }));
        }
        tokio::time::sleep(Duration::from_secs_f64(warmup)).await;
        let cpu0 = cpu_ticks(&watch);
        measuring.store(true, Ordering::Relaxed);
        let t0 = Instant::now();
        tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
        measuring.store(false, Ordering::Relaxed);
        let elapsed = t0.elapsed().as_secs_f64();
        // (a watched process that exited meanwhile counts no more)
        let cpu_s = cpu_ticks(&watch).saturating_sub(cpu0) as f64 / CLOCK_TICKS_PER_S;
        stop.store(true, Ordering::Relaxed);
        let mut all: Vec<u32> = Vec::new();
        for t in tasks {
            all.extend(t.await.expect("client"));
        }
        all.sort_unstable();
        let pct = |p: f64| -> f64 {
            if all.is_empty() {
                return 0.0;
            }
            let i = ((all.len() as f64 - 1.0) * p).round() as usize;
            f64::from(all[i]) / 1000.0
        };
        println!(
            "{{\"mode\":\"{}\",\"clients\":{},\"requests\":{},\"qps\":{:.0},\"p50_us\":{:.1},\"p99_us\":{:.1},\"cpu_us\":{:.2}}}",
            if routed { "routed" } else { "direct" },
            clients,
            all.len(),
            all.len() as f64 / elapsed,
            pct(0.5),
            pct(0.99),
            cpu_s * 1e6 / all.len().max(1) as f64
        );
    });
}
