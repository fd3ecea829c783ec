//! Redis servers a test starts for itself from Debian's redis-server (one
//! server, a cluster, or a Sentinel set, by `tests/redis/`'s scripts), on
//! free loopback ports, stopped when dropped.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::Command;

/// `count` free loopback ports in a row, and the same ports + 10000 (a
/// cluster node's bus port) free too; all below Linux's ephemeral range
/// (32768 and up), where a client connection of a test running beside
/// could take one between this check and the server's start.
pub fn free_ports(count: u16) -> u16 {
    let free = |port: u16| {
        std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
            && std::net::TcpListener::bind(("127.0.0.1", port + 10000)).is_ok()
    };
    let mut base = 11000 + (latchkey::secret::random_u64() % 1150) as u16 * 10;
    while !(base..base + count).all(free) {
        base += 10;
    }
    base
}

/// Redis servers of the test's own, started by one of `tests/redis/`'s
/// scripts (the test fails them over or kills them), stopped when dropped.
pub struct OwnServers {
    dir: tempfile::TempDir,
    script: PathBuf,
    env: Vec<(OsString, OsString)>,
    /// The store URL the script printed.
    pub url: String,
    /// The first of the ports they took.
    pub first_port: u16,
}

/// Runs `script` with `args` and `env`; its output, once it succeeded.
/// When it fails, whatever it started in `dir` is stopped first (the test
/// panics before an `OwnServers` exists to stop them when dropped).
fn run(script: &Path, args: &[&OsStr], env: &[(OsString, OsString)], dir: &Path) -> String {
    let out = Command::new(script)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", script.display()));
    if !out.status.success() {
        stop(dir);
        panic!(
            "{} {args:?}: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// `tests/redis/stop.sh DIR`: stops every server started in `dir`.
fn stop(dir: &Path) {
    let stop = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/redis/stop.sh");
    let _ = Command::new(stop).arg(dir).status();
}

impl OwnServers {
    /// `tests/redis/SCRIPT start` on `ports` free ports in a row.
    pub fn start(script: &str, ports: u16) -> Self {
        Self::start_with(script, ports, &[])
    }

    /// [`OwnServers::start`] with these environment variables (the
    /// scripts' `REDIS_TLS_DIR`, `REDIS_TLS_AUTH_CLIENTS`).
    pub fn start_with(script: &str, ports: u16, env: &[(&str, &OsStr)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/redis")
            .join(script);
        let env: Vec<_> = (env.iter())
            .map(|(k, v)| (OsString::from(k), v.to_os_string()))
            .collect();
        let first_port = free_ports(ports);
        let port = first_port.to_string();
        let url = run(
            &script,
            &["start".as_ref(), dir.path().as_os_str(), port.as_ref()],
            &env,
            dir.path(),
        );
        Self {
            dir,
            script,
            env,
            url,
            first_port,
        }
    }

    /// `sentinel.sh rejoin`: a server on `port` again (one the test
    /// killed), as a replica of the master the sentinels name now.
    pub fn rejoin(&self, port: u16) {
        let port = port.to_string();
        let args = [
            "rejoin".as_ref(),
            self.dir.path().as_os_str(),
            port.as_ref(),
        ];
        run(&self.script, &args, &self.env, self.dir.path());
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
        stop(self.dir.path());
    }
}

#[cfg(feature = "redis")]
/// The master's `redis://HOST:PORT` as the sentinel at `sentinel`
/// (`HOST:PORT`) names it (the sets of `sentinel.sh` watch `latchkey`).
pub async fn master_named_by(sentinel: &str) -> String {
    let client = redis::Client::open(format!("redis://{sentinel}")).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let (host, port): (String, u16) = redis::cmd("SENTINEL")
        .arg("GET-MASTER-ADDR-BY-NAME")
        .arg("latchkey")
        .query_async(&mut con)
        .await
        .unwrap();
    format!("redis://{host}:{port}")
}
