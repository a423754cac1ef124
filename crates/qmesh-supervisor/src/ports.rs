//! The free-port check `qmesh up` runs before starting anything, and who
//! holds a port that is taken (Linux: `/proc/net/tcp{,6}` for the listening
//! socket's inode, then `/proc/<pid>/fd` for the process holding it).

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::net::{IpAddr, TcpListener};

use crate::Error;

/// Most bytes of a command line quoted in an error.
const MAX_CMDLINE_QUOTED: usize = 160;

/// Checks that every port in `ports` (port → process name, what it is for)
/// can be bound on `bind`. The first taken one is an error naming the port,
/// the process of the estate it is for and, where the system says, the
/// process holding it.
pub fn check_free(bind: IpAddr, ports: &BTreeMap<u16, (&str, &str)>) -> Result<(), Error> {
    for (&port, &(name, what)) in ports {
        match TcpListener::bind((bind, port)) {
            Ok(l) => drop(l),
            Err(e) => {
                let holder = if e.kind() == ErrorKind::AddrInUse {
                    holder(port).unwrap_or_else(|| "another process".into())
                } else {
                    format!("cannot bind: {e}")
                };
                return Err(Error::PortTaken { port, process: name.into(), what: what.into(), holder });
            }
        }
    }
    Ok(())
}

/// `pid 1234 (qmesh gateway -p 5000 …)` for the process listening on TCP
/// `port`, if the system says (another user's process may be hidden).
pub fn holder(port: u16) -> Option<String> {
    let inodes: Vec<u64> = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .flat_map(|text| listening_inodes(&text, port))
        .collect();
    if inodes.is_empty() {
        return None;
    }
    let wanted: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else { continue };
        for fd in fds.flatten() {
            let Ok(link) = std::fs::read_link(fd.path()) else { continue };
            if wanted.iter().any(|w| link.as_os_str() == w.as_str()) {
                let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
                let mut cmd: String = String::from_utf8_lossy(&cmdline).replace('\0', " ").trim().to_string();
                if cmd.len() > MAX_CMDLINE_QUOTED {
                    let mut cut = MAX_CMDLINE_QUOTED;
                    while !cmd.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    cmd.truncate(cut);
                    cmd.push('…');
                }
                return Some(format!("pid {pid} ({cmd})"));
            }
        }
    }
    Some("a process this user cannot see".into())
}

/// Inodes of the sockets listening on `port` in a `/proc/net/tcp` table
/// (`sl local_address rem_address st … inode`, addresses `HEXIP:HEXPORT`,
/// state `0A` = LISTEN).
fn listening_inodes(table: &str, port: u16) -> Vec<u64> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let local_port = u16::from_str_radix(f.get(1)?.rsplit_once(':')?.1, 16).ok()?;
            (local_port == port && *f.get(3)? == "0A").then(|| f.get(9)?.parse().ok())?
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_listening_sockets_of_proc_net_tcp() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:1388 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0 100 0 0 10 0\n\
   1: 0100007F:1388 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 4343 1 0 100 0 0 10 0\n\
   2: 00000000:1389 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4444 1 0 100 0 0 10 0\n";
        assert_eq!(listening_inodes(table, 5000), [4242]);
        assert_eq!(listening_inodes(table, 5001), [4444]);
        assert!(listening_inodes(table, 5002).is_empty());
        assert!(listening_inodes("garbage\n1 2 3", 5000).is_empty());
    }

    #[test]
    fn a_taken_port_names_its_holder() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let mut ports = BTreeMap::new();
        ports.insert(port, ("gateway", "kdb+ IPC"));
        let e = check_free("127.0.0.1".parse().unwrap(), &ports).unwrap_err().to_string();
        assert!(e.contains(&format!("port {port}")) && e.contains("gateway"), "{e}");
        if cfg!(target_os = "linux") {
            assert!(e.contains(&format!("pid {}", std::process::id())), "{e}");
        }
        drop(l);
        check_free("127.0.0.1".parse().unwrap(), &ports).unwrap();
    }
}
