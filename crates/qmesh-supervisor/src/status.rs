//! `qmesh status`: the estate's processes and their state, as the discovery
//! registry sees them (`GET /api/processes` on its HTTP port).

use std::net::{SocketAddr, ToSocketAddrs};

use serde_json::Value;

use crate::Error;
use crate::config::{Estate, Kind, ProcessSpec};

/// One process of the config and what discovery says of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// Its name in the config (or in discovery, for a process the config
    /// does not name).
    pub name: String,
    /// Its kind.
    pub kind: String,
    /// `host:port` (kdb+ IPC), or empty.
    pub address: String,
    /// Discovery's state (`active`, `warning`, `error`, `disconnected`,
    /// `starting`), or `absent` when discovery has no row for it.
    pub state: String,
    /// The name it heartbeats under (a service instance: `SERVICE:PORT`).
    pub registered_as: String,
    /// Its pid as it reported it, 0 if unknown.
    pub pid: i64,
    /// Milliseconds since its last heartbeat, -1 if unknown.
    pub age_ms: i64,
}

/// The discovery process's HTTP address.
pub fn discovery_http(estate: &Estate) -> Result<SocketAddr, Error> {
    let d = estate.discovery().ok_or_else(|| Error::Config("the estate has no discovery process".into()))?;
    let port = d.http.ok_or_else(|| Error::Config(format!("process {}: no http port", d.name)))?;
    let host = estate.host_of(d);
    (host, port)
        .to_socket_addrs()
        .map_err(|e| Error::Discovery(format!("{host}:{port}: {e}")))?
        .next()
        .ok_or_else(|| Error::Discovery(format!("{host}: no address")))
}

/// Asks discovery and pairs its rows with the config's processes (by kind
/// and IPC port, else by name); rows the config does not name follow.
pub fn status(estate: &Estate) -> Result<Vec<Line>, Error> {
    let addr = discovery_http(estate)?;
    let (code, body) = crate::http::get(addr, &addr.to_string(), "/api/processes")
        .map_err(|e| Error::Discovery(format!("{addr}: {e} (is the estate up?)")))?;
    if code != 200 {
        return Err(Error::Discovery(format!("{addr}: GET /api/processes answered {code}")));
    }
    let doc: Value = serde_json::from_slice(&body).map_err(|e| Error::Discovery(format!("{addr}: {e}")))?;
    let rows = doc.get("processes").and_then(Value::as_array).cloned().unwrap_or_default();
    Ok(pair(estate, &rows))
}

fn pair(estate: &Estate, rows: &[Value]) -> Vec<Line> {
    let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let i = |v: &Value, k: &str, d: i64| v.get(k).and_then(Value::as_i64).unwrap_or(d);
    let matches = |p: &ProcessSpec, r: &Value| {
        let port = i(r, "port", -1);
        (p.port.is_some_and(|x| i64::from(x) == port) && s(r, "kind") == p.kind.as_str())
            || s(r, "name") == p.name
            || (p.kind == Kind::Feed && s(r, "kind") == "feed" && p.port.is_none())
    };
    let mut used = vec![false; rows.len()];
    let mut out = Vec::new();
    for p in &estate.processes {
        let found = rows.iter().enumerate().find(|(n, r)| !used[*n] && matches(p, r));
        let address = p.port.map(|port| format!("{}:{port}", estate.host_of(p))).unwrap_or_default();
        out.push(match found {
            Some((n, r)) => {
                used[n] = true;
                Line {
                    name: p.name.clone(),
                    kind: p.kind.to_string(),
                    address,
                    state: s(r, "state"),
                    registered_as: s(r, "name"),
                    pid: i(r, "pid", 0),
                    age_ms: i(r, "age", -1),
                }
            }
            None => Line {
                name: p.name.clone(),
                kind: p.kind.to_string(),
                address,
                state: "absent".into(),
                registered_as: String::new(),
                pid: 0,
                age_ms: -1,
            },
        });
    }
    for (n, r) in rows.iter().enumerate().filter(|(n, _)| !used[*n]) {
        let _ = n;
        out.push(Line {
            name: s(r, "name"),
            kind: s(r, "kind"),
            address: format!("{}:{}", s(r, "host"), i(r, "port", 0)),
            state: s(r, "state"),
            registered_as: s(r, "name"),
            pid: i(r, "pid", 0),
            age_ms: i(r, "age", -1),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pairs_rows_with_the_config() {
        let e = Estate::default_layout(5000).unwrap();
        let rows = [
            json!({"name":"EQUITY_MARKET_RDB:5005","kind":"service","host":"127.0.0.1","port":5005,"state":"error","pid":9,"age":12000}),
            json!({"name":"gateway","kind":"gateway","host":"127.0.0.1","port":5000,"state":"active","pid":7,"age":500}),
            json!({"name":"tp","kind":"tickerplant","host":"b","port":6000,"state":"active","pid":1,"age":1}),
        ];
        let lines = pair(&e, &rows);
        let by = |n: &str| lines.iter().find(|l| l.name == n).unwrap().clone();
        assert_eq!(by("rdb2").state, "error");
        assert_eq!(by("rdb2").registered_as, "EQUITY_MARKET_RDB:5005");
        assert_eq!(by("gateway").state, "active");
        assert_eq!(by("rdb1").state, "absent");
        assert_eq!(lines.last().unwrap().name, "tp");
        assert_eq!(lines.len(), e.processes.len() + 1);
    }
}
