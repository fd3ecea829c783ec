//! Redis servers a test starts for itself from Debian's redis-server (one
//! server, a cluster, or a Sentinel set, by `tests/redis/`'s scripts), on
//! free loopback ports, stopped when dropped.

use std::path::Path;
use std::process::Command;

/// `count` free loopback ports in a row, and the same ports + 10000 (a
/// cluster node's bus port) free too.
pub fn free_ports(count: u16) -> u16 {
    let free = |port: u16| {
        std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
            && std::net::TcpListener::bind(("127.0.0.1", port + 10000)).is_ok()
    };
    let mut base = 21000 + (latchkey::secret::random_u64() % 2000) as u16 * 10;
    while !(base..base + count).all(free) {
        base += 10;
    }
    base
}

/// Redis servers of the test's own, started by one of `tests/redis/`'s
/// scripts (the test fails them over or kills them), stopped when dropped.
pub struct OwnServers {
    dir: tempfile::TempDir,
    /// The store URL the script printed.
    pub url: String,
    /// The first of the ports they took.
    pub first_port: u16,
}

impl OwnServers {
    /// `tests/redis/SCRIPT start` on `ports` free ports in a row.
    pub fn start(script: &str, ports: u16) -> Self {
        Self::start_with(script, ports, &[])
    }

    /// [`OwnServers::start`] with these environment variables (the
    /// scripts' `REDIS_TLS_DIR`, `REDIS_TLS_AUTH_CLIENTS`).
    pub fn start_with(script: &str, ports: u16, env: &[(&str, &std::ffi::OsStr)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/redis")
            .join(script);
        let first_port = free_ports(ports);
        let out = Command::new(&script)
            .arg("start")
            .arg(dir.path())
            .arg(first_port.to_string())
            .envs(env.iter().copied())
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", script.display()));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let url = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        Self {
            dir,
            url,
            first_port,
        }
    }

    /// Sends `signal` (`STOP`, `CONT`, `KILL`) to the server on `port`.
    pub fn signal(&self, port: u16, signal: &str) {
        let pidfile = self.dir.path().join(format!("redis-{port}.pid"));
        let pid = std::fs::read_to_string(pidfile).unwrap();
        let sent = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.trim())
            .status()
            .unwrap();
        assert!(sent.success());
    }
}

impl Drop for OwnServers {
    fn drop(&mut self) {
        let stop = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/redis/stop.sh");
        let _ = Command::new(stop).arg(self.dir.path()).status();
    }
}
