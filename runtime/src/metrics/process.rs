//! The process's own figures under the names every Prometheus client
//! gives them (`process_resident_memory_bytes`, `process_cpu_seconds_total`,
//! `process_open_fds`, `process_start_time_seconds`), read from `/proc` at
//! each scrape, and `skiff_build_info`.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;
use std::time::{SystemTime, UNIX_EPOCH};

/// Reads the process's figures at each scrape.
#[derive(Debug)]
pub struct ProcessCollector {
    /// When the process started serving metrics, Unix seconds.
    started: f64,
}

impl Default for ProcessCollector {
    fn default() -> Self {
        ProcessCollector {
            started: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
        }
    }
}

/// CPU time (user and system) this process used, seconds, from
/// `/proc/self/stat`.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name may hold spaces: the fields follow its ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let (user, system): (f64, f64) = (fields.get(11)?.parse().ok()?, fields.get(12)?.parse().ok()?);
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (ticks > 0).then(|| (user + system) / ticks as f64)
}

/// Open file descriptors.
fn open_fds() -> Option<i64> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count() as i64)
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        if let Some(bytes) = crate::pressure::resident_bytes() {
            ConstGauge::new(bytes as i64).encode(encoder.encode_descriptor(
                "process_resident_memory",
                "Resident memory of the process.",
                Some(&Unit::Bytes),
                MetricType::Gauge,
            )?)?;
        }
        if let Some(seconds) = cpu_seconds() {
            ConstCounter::new(seconds).encode(encoder.encode_descriptor(
                "process_cpu",
                "CPU time the process used, user and system.",
                Some(&Unit::Seconds),
                MetricType::Counter,
            )?)?;
        }
        if let Some(fds) = open_fds() {
            ConstGauge::new(fds).encode(encoder.encode_descriptor(
                "process_open_fds",
                "Open file descriptors.",
                None,
                MetricType::Gauge,
            )?)?;
        }
        ConstGauge::new(self.started).encode(encoder.encode_descriptor(
            "process_start_time",
            "When the process started serving metrics, Unix time.",
            Some(&Unit::Seconds),
            MetricType::Gauge,
        )?)?;
        let mut info = encoder.encode_descriptor(
            "skiff_build_info",
            "The Skiff version this process runs (always 1).",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(1)
            .encode(info.encode_family(&[("version", env!("CARGO_PKG_VERSION"))])?)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;

    #[test]
    fn the_process_figures_are_read() {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(ProcessCollector::default()));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for name in [
            "process_resident_memory_bytes ",
            "process_cpu_seconds_total ",
            "process_open_fds ",
            "process_start_time_seconds ",
            "skiff_build_info{version=",
        ] {
            assert!(text.contains(name), "{name}: {text}");
        }
    }
}
