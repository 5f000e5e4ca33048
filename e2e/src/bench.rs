//! Pieces of the benchmarks that are worth testing on their own: percentiles, reading the
//! worker's log and `/metrics`, and a process's peak memory. Pure, except [`peak_rss_bytes`]
//! and [`scrape`].

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// The `q`-quantile (0..=1) of `values` by the nearest-rank method; `None` when empty.
pub fn quantile(values: &[f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = (q * sorted.len() as f64).ceil().max(1.0) as usize;
    Some(sorted[rank.min(sorted.len()) - 1])
}

/// Checkpoint pauses (milliseconds) the worker logged, in its text or JSON log format:
/// `checkpoint taken` lines carry `pause_ms=N` / `"pause_ms":N`.
pub fn checkpoint_pauses_ms(log: &str) -> Vec<f64> {
    log.lines()
        .filter(|line| line.contains("checkpoint taken"))
        .filter_map(|line| {
            let at = line.find("pause_ms")? + "pause_ms".len();
            let digits: String = line[at..]
                .trim_start_matches(['=', '"', ':'])
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            digits.parse().ok()
        })
        .collect()
}

/// Sum of every series of `metric` in a Prometheus text exposition.
pub fn metric_sum(exposition: &str, metric: &str) -> f64 {
    exposition
        .lines()
        .filter(|line| {
            line.strip_prefix(metric)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The upper bound of the histogram bucket holding quantile `q` of `metric` (a Prometheus
/// histogram without labels other than `le`), as `histogram_quantile` would bound it.
pub fn histogram_quantile(exposition: &str, metric: &str, q: f64) -> Option<f64> {
    let prefix = format!("{metric}_bucket{{le=\"");
    let buckets: Vec<(f64, f64)> = exposition
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(&prefix)?;
            let (le, count) = rest.split_once("\"}")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, count.trim().parse().ok()?))
        })
        .collect();
    let total = buckets.last()?.1;
    buckets
        .iter()
        .find(|(_, count)| *count >= q * total && total > 0.0)
        .map(|(le, _)| *le)
}

/// `GET /metrics` from `addr` (`host:port`), as text.
pub fn scrape(addr: &str) -> std::io::Result<String> {
    http_get(addr, "/metrics").map(|(_, body)| body)
}

/// `GET path` from `addr` (`host:port`): the status code and the body.
pub fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    Ok((
        status,
        response
            .split_once("\r\n\r\n")
            .map_or(String::new(), |(_, body)| body.to_string()),
    ))
}

/// Peak resident memory of process `pid` so far (`VmHWM`), from `/proc`.
pub fn peak_rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// `bytes` as MiB with one decimal.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// CPU time (user + system) process `pid` has used so far, in seconds, from `/proc`.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; the fields after its `)` are fixed.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name, in clock
    // ticks: USER_HZ, 100 on every Linux ABI.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_histogram_quantile_is_bounded_by_its_bucket() {
        let text = "d_bucket{le=\"0.01\"} 50\nd_bucket{le=\"0.1\"} 98\nd_bucket{le=\"1.0\"} 100\nd_bucket{le=\"+Inf\"} 100\n";
        assert_eq!(histogram_quantile(text, "d", 0.5), Some(0.01));
        assert_eq!(histogram_quantile(text, "d", 0.99), Some(1.0));
        assert_eq!(histogram_quantile("", "d", 0.5), None);
    }

    #[test]
    fn quantiles_use_the_nearest_rank() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&values, 0.5), Some(50.0));
        assert_eq!(quantile(&values, 0.99), Some(99.0));
        assert_eq!(quantile(&values, 1.0), Some(100.0));
        assert_eq!(quantile(&[7.0, 3.0], 0.5), Some(3.0));
        assert_eq!(quantile(&[], 0.5), None);
    }

    #[test]
    fn pauses_are_read_from_text_and_json_logs() {
        let log = "\
2026-11-22T05:00:00Z  INFO sluice_worker::task: checkpoint taken task=3 checkpoint=2 pause_ms=41 records_in=9
2026-11-22T05:00:01Z  INFO sluice_worker::task: progress task=3 records_per_s=5
{\"level\":\"INFO\",\"fields\":{\"message\":\"checkpoint taken\",\"task\":1,\"pause_ms\":7}}";
        assert_eq!(checkpoint_pauses_ms(log), vec![41.0, 7.0]);
    }

    #[test]
    fn metric_sums_add_every_series_of_that_metric_only() {
        let text = "\
# TYPE sluice_records_in counter
sluice_records_in_total{task=\"0\"} 10
sluice_records_in_total{task=\"1\"} 32
sluice_records_in_total_other 5
sluice_records_out_total{task=\"0\"} 1";
        assert_eq!(metric_sum(text, "sluice_records_in_total"), 42.0);
    }

    #[test]
    fn this_process_has_a_peak_rss() {
        assert!(peak_rss_bytes(std::process::id()).unwrap() > 1024 * 1024);
    }

    #[test]
    fn cpu_time_grows_while_this_process_computes() {
        let me = std::process::id();
        let before = cpu_seconds(me).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let mut x = 1u64;
        // Spins until /proc shows 50 ms more (on a busy machine that takes longer than 50 ms).
        while cpu_seconds(me).unwrap() < before + 0.05 {
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
            assert!(
                std::time::Instant::now() < deadline,
                "CPU time stuck at {before} s"
            );
        }
        assert_eq!(cpu_seconds(u32::MAX), None);
    }
}
