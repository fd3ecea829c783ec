//! Child processes of the benchmark: started pinned to the servers' core,
//! their address read from their first output line, their peak memory read
//! from /proc, and killed when dropped.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running child process.
pub struct Proc {
    pub child: Child,
    pub addr: Option<SocketAddr>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        // SIGTERM first: servers with worker processes (nginx, Apache) take
        // their workers down with them; SIGKILL if that does not end it.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        for _ in 0..50 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// VmHWM of process `pid` in KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    status_field(pid, "VmHWM:")
}

/// User plus system CPU time of process `pid` so far (all its threads).
pub fn cpu_time(pid: u32) -> Duration {
    let ticks = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // Fields after the command name (which may hold spaces), from field 3.
            let after = stat.rsplit_once(')')?.1;
            let fields: Vec<&str> = after.split_whitespace().collect();
            let utime: u64 = fields.get(11)?.parse().ok()?;
            let stime: u64 = fields.get(12)?.parse().ok()?;
            Some(utime + stime)
        })
        .unwrap_or(0);
    // The kernel counts in clock ticks of 1/100 s on Linux.
    Duration::from_millis(ticks * 10)
}

/// `pids` and every process descending from one of them (nginx's and
/// Apache's workers), from the parent ids in `/proc/*/stat`.
pub fn descendants_and(pids: &[u32]) -> Vec<u32> {
    let mut parents = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let parent = (stat.rsplit_once(')'))
            .and_then(|(_, after)| after.split_whitespace().nth(1)?.parse::<u32>().ok());
        if let Some(parent) = parent {
            parents.push((pid, parent));
        }
    }
    let mut found = pids.to_vec();
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        for (pid, _) in parents.iter().filter(|(_, p)| *p == parent) {
            if !found.contains(pid) {
                found.push(*pid);
            }
        }
        i += 1;
    }
    found
}

/// VmRSS of process `pid` in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_field(pid, "VmRSS:")
}

fn status_field(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Starts `program args` pinned to the servers' core. `listening` extracts the
/// bound address from an output line (None: keep reading).
pub fn start(
    program: &str,
    args: &[&str],
    envs: &[(&str, String)],
    listening: impl Fn(&str) -> Option<SocketAddr>,
) -> Proc {
    let mut command = Command::new("taskset");
    command
        .args(["-c", &super::server_cpu(), program])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (k, v) in envs {
        command.env(k, v);
    }
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("start {program}: {e}"));
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = loop {
        match lines.next() {
            Some(Ok(line)) => {
                if let Some(addr) = listening(&line) {
                    break addr;
                }
            }
            _ => panic!("{program} exited before listening"),
        }
    };
    std::thread::spawn(move || for _ in lines {});
    Proc {
        child,
        addr: Some(addr),
    }
}

/// Starts a program that prints nothing useful (nginx, apache) and waits until
/// `port` accepts connections.
pub fn start_quiet(program: &str, args: &[&str], port: u16) -> Proc {
    let child = Command::new("taskset")
        .args(["-c", &super::server_cpu(), program])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start {program}: {e}"));
    // From here on, dropping the Proc kills and reaps the child.
    let mut proc = Proc { child, addr: None };
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    for _ in 0..100 {
        if std::net::TcpStream::connect(addr).is_ok() {
            proc.addr = Some(addr);
            return proc;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("{program} did not start listening on {port}");
}

/// `listening ADDR` lines (the bench's own servers).
pub fn plain_listening(line: &str) -> Option<SocketAddr> {
    line.strip_prefix("listening ")?.trim().parse().ok()
}

/// latchkey's JSON log line announcing its address.
pub fn latchkey_listening(line: &str) -> Option<SocketAddr> {
    let entry: serde_json::Value = serde_json::from_str(line).ok()?;
    (entry["fields"]["message"] == "latchkey is listening")
        .then(|| entry["fields"]["addr"].as_str()?.parse().ok())
        .flatten()
}

/// A free TCP port on 127.0.0.1 (free when asked; the bench owns the machine).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
