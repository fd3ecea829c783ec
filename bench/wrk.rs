//! Steady-state load with `wrk`, pinned to its own core where there is one,
//! and the parsing of its report.

use std::process::Command;
use std::time::Duration;

/// What one `wrk` run measured.
#[derive(Debug, Clone, Copy, Default)]
pub struct Load {
    /// Requests per second.
    pub rps: f64,
    /// Requests completed in the run.
    pub requests: u64,
    /// Median latency, ms.
    pub p50_ms: f64,
    /// 99th percentile latency, ms.
    pub p99_ms: f64,
    /// Non-2xx/3xx responses and socket errors.
    pub errors: u64,
}

/// Runs `wrk` against `url` with `connections` for `duration`, sending `cookie`.
pub fn run(url: &str, cookie: Option<&str>, connections: u32, duration: Duration) -> Load {
    let mut command = Command::new("taskset");
    command.args(["-c", &super::load_cpu(), "wrk"]);
    command.args([
        "-t1",
        &format!("-c{connections}"),
        &format!("-d{}s", duration.as_secs().max(1)),
        "--latency",
    ]);
    if let Some(cookie) = cookie {
        command.args(["-H", &format!("Cookie: {cookie}")]);
    }
    command.arg(url);
    let output = command.output().expect("run wrk (apt-get install wrk)");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    parse(&text).unwrap_or_else(|| panic!("unreadable wrk output:\n{text}"))
}

fn millis(value: &str) -> Option<f64> {
    let (number, unit) = value
        .find(|c: char| c.is_ascii_alphabetic())
        .map(|i| value.split_at(i))?;
    let n: f64 = number.parse().ok()?;
    Some(match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        _ => return None,
    })
}

fn parse(text: &str) -> Option<Load> {
    let mut load = Load::default();
    for line in text.lines().map(str::trim) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            ["Requests/sec:", rps] => load.rps = rps.parse().ok()?,
            [n, "requests", "in", ..] => load.requests = n.parse().ok()?,
            ["50%", value] => load.p50_ms = millis(value)?,
            ["99%", value] => load.p99_ms = millis(value)?,
            ["Non-2xx", "or", "3xx", "responses:", n] => load.errors += n.parse::<u64>().ok()?,
            ["Socket", "errors:", rest @ ..] => {
                load.errors += rest
                    .iter()
                    .filter_map(|f| f.trim_end_matches(',').parse::<u64>().ok())
                    .sum::<u64>()
            }
            _ => {}
        }
    }
    (load.rps > 0.0).then_some(load)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_wrk_report() {
        let report = "Running 1s test @ http://127.0.0.1:1/\n  1 threads and 64 connections\n\
            Latency Distribution\n     50%  512.00us\n     75%    1.00ms\n     90%    2.00ms\n     99%    4.50ms\n\
            12345 requests in 1.00s, 1.00MB read\n  Socket errors: connect 0, read 2, write 0, timeout 1\n\
            Non-2xx or 3xx responses: 3\nRequests/sec:  12345.67\nTransfer/sec:      1.00MB\n";
        let load = parse(report).unwrap();
        assert!((load.rps - 12345.67).abs() < 0.01);
        assert!((load.p50_ms - 0.512).abs() < 1e-9);
        assert!((load.p99_ms - 4.5).abs() < 1e-9);
        assert_eq!(load.errors, 6);
        assert_eq!(load.requests, 12345);
    }
}
