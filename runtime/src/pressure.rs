//! Memory pressure: whether this process may start new instances, judged
//! from what it really uses (its resident set) against the memory it
//! offers, and from what the machine has left. Reservations are a bet on
//! what replicas will use; this is the check that the bet held.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::sync::watch;

/// How often the resident set and the machine's free memory are read.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// Pressure ends once use falls below this share of the budget, so a node
/// at its edge does not flap between refusing and serving.
const RECOVER_AT: f64 = 0.95;

/// The machine is short of memory when less than this share of it is
/// available, however little this process uses.
const MACHINE_FLOOR_SHARE: u64 = 20;

/// The most the machine floor asks to keep free.
const MACHINE_FLOOR_MAX: u64 = 256 << 20;

/// What the guard last measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MemoryReading {
    /// Resident memory of this process, bytes.
    pub used: u64,
    /// Whether new instances are refused.
    pub pressure: bool,
}

/// Watches this process's memory from one sampler thread; cheap to clone
/// and to ask.
#[derive(Clone)]
pub struct MemoryGuard {
    shared: Arc<Shared>,
}

struct Shared {
    used: AtomicU64,
    pressure: AtomicBool,
    changes: watch::Sender<MemoryReading>,
}

/// Stops the sampler thread when dropped.
pub struct MemorySampler {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for MemorySampler {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl MemoryGuard {
    /// Starts sampling. `budget` is the memory this process offers (a
    /// node's `--capacity`); `None` leaves only the machine's own floor.
    pub fn start(budget: Option<u64>) -> (MemoryGuard, MemorySampler) {
        let (changes, _) = watch::channel(MemoryReading::default());
        let guard = MemoryGuard {
            shared: Arc::new(Shared {
                used: AtomicU64::new(0),
                pressure: AtomicBool::new(false),
                changes,
            }),
        };
        let sampled = guard.clone();
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("skiff-memory".into())
            .spawn(move || {
                let mut judge = Judge {
                    budget,
                    pressure: false,
                };
                loop {
                    let used = resident_bytes().unwrap_or(0);
                    let pressure = judge.pressure(used, machine_available());
                    sampled.record(MemoryReading { used, pressure });
                    match stopped.recv_timeout(SAMPLE_EVERY) {
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                        _ => break,
                    }
                }
            })
            .expect("spawning the memory sampler thread");
        (
            guard,
            MemorySampler {
                stop: Some(stop),
                thread: Some(thread),
            },
        )
    }

    fn record(&self, reading: MemoryReading) {
        self.shared.used.store(reading.used, Ordering::Relaxed);
        let was = self
            .shared
            .pressure
            .swap(reading.pressure, Ordering::Relaxed);
        if was != reading.pressure {
            if reading.pressure {
                tracing::warn!(
                    used = reading.used,
                    "short of memory: new instances are refused until it recovers"
                );
            } else {
                tracing::info!(used = reading.used, "memory pressure over: serving again");
            }
            self.shared.changes.send_replace(reading);
        }
    }

    /// Whether new instances are refused now.
    pub fn under_pressure(&self) -> bool {
        self.shared.pressure.load(Ordering::Relaxed)
    }

    /// The last reading.
    pub fn reading(&self) -> MemoryReading {
        MemoryReading {
            used: self.shared.used.load(Ordering::Relaxed),
            pressure: self.under_pressure(),
        }
    }

    /// Changes of pressure, as they happen.
    pub fn changes(&self) -> watch::Receiver<MemoryReading> {
        self.shared.changes.subscribe()
    }
}

/// Decides pressure from successive readings, with hysteresis.
struct Judge {
    budget: Option<u64>,
    pressure: bool,
}

impl Judge {
    /// `used`: this process's resident bytes; `machine`: the machine's
    /// `(available, total)` bytes, when known.
    fn pressure(&mut self, used: u64, machine: Option<(u64, u64)>) -> bool {
        let over_budget = self.budget.is_some_and(|budget| {
            let limit = if self.pressure {
                (budget as f64 * RECOVER_AT) as u64
            } else {
                budget
            };
            used >= limit
        });
        let machine_short = machine.is_some_and(|(available, total)| {
            let floor = (total / MACHINE_FLOOR_SHARE).min(MACHINE_FLOOR_MAX);
            let floor = if self.pressure {
                floor + floor / 2
            } else {
                floor
            };
            available < floor
        });
        self.pressure = over_budget || machine_short;
        self.pressure
    }
}

/// This process's resident set, from `/proc/self/status`.
pub fn resident_bytes() -> Option<u64> {
    kib_field(
        &std::fs::read_to_string("/proc/self/status").ok()?,
        "VmRSS:",
    )
}

/// A `Name:   123 kB` field of a `/proc` file, in bytes.
fn kib_field(text: &str, name: &str) -> Option<u64> {
    let kib: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix(name))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// `(MemAvailable, MemTotal)` of the machine, from `/proc/meminfo`.
fn machine_available() -> Option<(u64, u64)> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    Some((
        kib_field(&meminfo, "MemAvailable:")?,
        kib_field(&meminfo, "MemTotal:")?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const ROOMY: Option<(u64, u64)> = Some((8 << 30, 16 << 30));

    #[test]
    fn pressure_starts_at_the_budget_and_ends_below_ninety_five_percent() {
        let mut judge = Judge {
            budget: Some(100 * MIB),
            pressure: false,
        };
        assert!(!judge.pressure(99 * MIB, ROOMY));
        assert!(judge.pressure(100 * MIB, ROOMY));
        // Still over 95%: no flapping back.
        assert!(judge.pressure(96 * MIB, ROOMY));
        assert!(!judge.pressure(94 * MIB, ROOMY));
    }

    #[test]
    fn a_machine_out_of_memory_is_pressure_whatever_the_budget() {
        let mut judge = Judge {
            budget: None,
            pressure: false,
        };
        assert!(!judge.pressure(10 * MIB, ROOMY));
        // 16 GiB machine: the floor is 256 MiB.
        assert!(judge.pressure(10 * MIB, Some((200 * MIB, 16 << 30))));
        assert!(judge.pressure(10 * MIB, Some((300 * MIB, 16 << 30))));
        assert!(!judge.pressure(10 * MIB, Some((400 * MIB, 16 << 30))));
        // Unknown machine memory leaves only the budget.
        assert!(!judge.pressure(10 * MIB, None));
    }

    #[test]
    fn the_resident_set_is_read() {
        let used = resident_bytes().unwrap();
        assert!(used > MIB, "{used}");
        let (available, total) = machine_available().unwrap();
        assert!(available <= total && total > 0);
    }
}
