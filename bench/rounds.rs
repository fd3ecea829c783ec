//! The steady-state measurement: every setup loaded in several short rounds,
//! the setups interleaved round by round (A B C … A B C …), so that a noisy
//! neighbour moves one round of every row rather than the whole of one row;
//! each ratio is taken within a round (both rows measured minutes apart at
//! most seconds) and reported as the median over the rounds with its
//! min–max. Next to throughput, the CPU time the setup's own processes
//! spent per request served, from `/proc/PID/stat` over the measured window:
//! far steadier than req/s on a shared machine.

use std::time::Duration;

use super::procs;
use super::wrk::{self, Load};

/// One steady-state setup: where to load it, with which cookie, and the
/// processes whose CPU it costs (each with its children: nginx's and
/// Apache's workers).
pub struct Target {
    /// The row's name.
    pub name: String,
    /// The URL `wrk` loads.
    pub url: String,
    /// The session cookie it sends, if the setup needs one.
    pub cookie: Option<String>,
    /// The root processes of the setup (the proxy; not the upstream, not a
    /// store server).
    pub pids: Vec<u32>,
}

/// One round of one setup.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// What `wrk` saw.
    pub load: Load,
    /// The setup's processes' CPU time over the window.
    pub cpu: Duration,
}

impl Sample {
    /// CPU microseconds per request served.
    pub fn cpu_us_per_request(&self) -> f64 {
        if self.load.requests == 0 {
            return f64::NAN;
        }
        self.cpu.as_secs_f64() * 1e6 / self.load.requests as f64
    }
}

/// How the rounds run.
pub struct Plan {
    /// Rounds per setup.
    pub rounds: usize,
    /// Each round's measured window.
    pub window: Duration,
    /// The warm-up of each setup before its first round.
    pub warm_up: Duration,
    /// `wrk` connections.
    pub connections: u32,
}

/// The CPU time of the processes `pids` and all their descendants.
fn tree_cpu(pids: &[u32]) -> Duration {
    procs::descendants_and(pids)
        .into_iter()
        .map(procs::cpu_time)
        .sum()
}

/// Measures every target `plan.rounds` times, interleaved; `[target][round]`.
pub fn measure(targets: &[Target], plan: &Plan) -> Vec<Vec<Sample>> {
    for target in targets {
        let _ = wrk::run(
            &target.url,
            target.cookie.as_deref(),
            plan.connections,
            plan.warm_up,
        );
    }
    let mut samples: Vec<Vec<Sample>> = targets.iter().map(|_| Vec::new()).collect();
    for round in 0..plan.rounds {
        for (i, target) in targets.iter().enumerate() {
            let before = tree_cpu(&target.pids);
            let load = wrk::run(
                &target.url,
                target.cookie.as_deref(),
                plan.connections,
                plan.window,
            );
            let cpu = tree_cpu(&target.pids).saturating_sub(before);
            eprintln!(
                "round {}/{}: {}: {:.0} req/s, {:.1} µs CPU per request",
                round + 1,
                plan.rounds,
                target.name,
                load.rps,
                Sample { load, cpu }.cpu_us_per_request()
            );
            samples[i].push(Sample { load, cpu });
        }
    }
    samples
}

/// The median of `values` (NaN-free; `NaN` when empty).
pub fn median(values: &[f64]) -> f64 {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    }
}

/// A ratio of a row to a base row, round by round: its median and range.
#[derive(Debug, Clone, Copy)]
pub struct Ratio {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Ratio {
    /// `value(row) / value(base)` in each round.
    pub fn of(row: &[Sample], base: &[Sample], value: impl Fn(&Sample) -> f64) -> Self {
        let ratios: Vec<f64> = (row.iter().zip(base))
            .map(|(r, b)| value(r) / value(b))
            .filter(|r| r.is_finite())
            .collect();
        Self {
            median: median(&ratios),
            min: ratios.iter().copied().fold(f64::NAN, f64::min),
            max: ratios.iter().copied().fold(f64::NAN, f64::max),
        }
    }

    /// `0.93× (0.88–0.97)`.
    pub fn show(&self) -> String {
        if self.median.is_nan() {
            return "–".into();
        }
        format!("{:.2}× ({:.2}–{:.2})", self.median, self.min, self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(rps: f64, requests: u64, cpu_ms: u64) -> Sample {
        Sample {
            load: Load {
                rps,
                requests,
                ..Load::default()
            },
            cpu: Duration::from_millis(cpu_ms),
        }
    }

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    /// A ratio is taken within each round, so a round in which the whole
    /// machine was slow moves both rows and not the ratio.
    #[test]
    fn ratios_are_taken_round_by_round() {
        let base = [
            sample(100.0, 300, 300),
            sample(50.0, 150, 150),
            sample(100.0, 300, 300),
        ];
        let row = [
            sample(90.0, 270, 540),
            sample(45.0, 135, 270),
            sample(80.0, 240, 480),
        ];
        let rps = Ratio::of(&row, &base, |s| s.load.rps);
        assert!((rps.median - 0.9).abs() < 1e-9, "{rps:?}");
        assert!((rps.min - 0.8).abs() < 1e-9 && (rps.max - 0.9).abs() < 1e-9);
        let cpu = Ratio::of(&row, &base, Sample::cpu_us_per_request);
        assert!((cpu.median - 2.0).abs() < 1e-9, "{cpu:?}");
        assert_eq!(rps.show(), "0.90× (0.80–0.90)");
    }

    #[test]
    fn cpu_per_request() {
        assert!((sample(1.0, 1000, 50).cpu_us_per_request() - 50.0).abs() < 1e-9);
        assert!(sample(1.0, 0, 50).cpu_us_per_request().is_nan());
    }
}
