//! The clock of `FLOWS`' stamps (`lb_common::conntrack::ticks`: the kernel's `jiffies >> 8`)
//! as userspace reads it, to turn the `[conntrack]` timeouts into ticks, to stamp flows carried
//! over by an upgrade, and to tell idle flows from active ones in `lb stats` and `lb explain`.
//!
//! No interface states the kernel's tick rate (`CONFIG_HZ`; `sysconf(_SC_CLK_TCK)` is the
//! fixed USER_HZ). `/proc/timer_list` prints `jiffies` beside the monotonic clock it is derived
//! from, and the kernel starts jiffies 300 s before wrapping 32 bits (`INITIAL_JIFFIES`), so
//! one reading gives the rate: `jiffies = 2^32 + HZ · (uptime − 300 s)`. Within a few seconds
//! of that wrap, where every rate fits, two readings 200 ms apart give it instead. The current
//! tick is then the monotonic clock times that rate, corrected by the offset seen in the
//! reading (jiffies start a fraction of a second after the monotonic clock).

use std::{path::Path, time::Duration};

/// Tick rates Linux can be built with (`CONFIG_HZ`).
const RATES: [u32; 9] = [24, 32, 100, 128, 250, 256, 300, 512, 1000];

/// Where the kernel prints its timers, with `now at N nsecs` and `jiffies: N`.
const TIMER_LIST: &str = "/proc/timer_list";

/// The tick rate assumed when the kernel's cannot be read: Debian's and Ubuntu's.
pub const ASSUMED_HZ: u32 = 250;

/// Jiffies per tick of `FLOWS` (`ticks` shifts them right by 8).
const JIFFIES_PER_TICK: u64 = 256;

/// Why the tick rate could not be found.
#[derive(Debug, thiserror::Error)]
pub enum ClockError {
    /// The file could not be read.
    #[error("cannot read {TIMER_LIST} (the kernel's tick rate is read from it)")]
    Read(#[source] std::io::Error),
    /// The file holds no `now at` or `jiffies:` line.
    #[error("{TIMER_LIST} has no `now at` and `jiffies:` lines")]
    Format,
    /// No known rate fits the readings.
    #[error(
        "{TIMER_LIST} gives a tick rate of about {measured} Hz, which no kernel is built with"
    )]
    Rate {
        /// What the readings gave.
        measured: f64,
    },
}

/// One reading of the kernel's clocks.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Reading {
    /// The monotonic clock, in nanoseconds.
    monotonic_ns: u64,
    /// `jiffies`.
    jiffies: u64,
}

impl Reading {
    /// The reading in `text`, the content of `/proc/timer_list`.
    fn parse(text: &str) -> Option<Self> {
        let monotonic_ns = text
            .lines()
            .find_map(|line| line.strip_prefix("now at ")?.strip_suffix(" nsecs"))?
            .trim()
            .parse()
            .ok()?;
        let jiffies = text
            .lines()
            .find_map(|line| line.trim().strip_prefix("jiffies:"))?
            .trim()
            .parse()
            .ok()?;
        Some(Self {
            monotonic_ns,
            jiffies,
        })
    }

    fn take(path: &Path) -> Result<Self, ClockError> {
        let text = std::fs::read_to_string(path).map_err(ClockError::Read)?;
        Self::parse(&text).ok_or(ClockError::Format)
    }
}

/// What `jiffies` is at `monotonic_ns` on a kernel of `hz`, by `INITIAL_JIFFIES`.
fn jiffies_at(hz: u32, monotonic_ns: u64) -> f64 {
    (1u64 << 32) as f64 + f64::from(hz) * (monotonic_ns as f64 / 1e9 - 300.0)
}

/// The rate that best fits one reading, if only one fits (the reading is far enough from the
/// wrap of 32 bits, 300 s after boot).
fn rate_of(reading: Reading) -> Option<u32> {
    // Jiffies start within a second of the monotonic clock; a rate fits if it explains the
    // reading to within 2 s of its own ticks.
    let fits: Vec<u32> = RATES
        .into_iter()
        .filter(|&hz| {
            (reading.jiffies as f64 - jiffies_at(hz, reading.monotonic_ns)).abs()
                < 2.0 * f64::from(hz)
        })
        .collect();
    match fits.as_slice() {
        [hz] => Some(*hz),
        _ => None,
    }
}

/// The known rate nearest to the rate between two readings.
fn rate_between(first: Reading, second: Reading) -> Result<u32, ClockError> {
    let seconds = second.monotonic_ns.saturating_sub(first.monotonic_ns) as f64 / 1e9;
    let measured = second.jiffies.saturating_sub(first.jiffies) as f64 / seconds;
    let nearest = RATES
        .into_iter()
        .min_by(|a, b| {
            let (da, db) = (
                (f64::from(*a) - measured).abs(),
                (f64::from(*b) - measured).abs(),
            );
            da.total_cmp(&db)
        })
        .unwrap_or(250);
    if (f64::from(nearest) - measured).abs() > 0.1 * measured {
        return Err(ClockError::Rate { measured });
    }
    Ok(nearest)
}

/// The kernel's tick rate and the offset of its jiffies from the monotonic clock.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FlowClock {
    hz: u32,
    /// `jiffies` minus what `INITIAL_JIFFIES` and the monotonic clock predict.
    offset: f64,
}

impl FlowClock {
    /// Reads the kernel's clocks (`/proc/timer_list`; root).
    pub fn read() -> Result<Self, ClockError> {
        let path = Path::new(TIMER_LIST);
        let first = Reading::take(path)?;
        let hz = match rate_of(first) {
            Some(hz) => hz,
            None => {
                std::thread::sleep(Duration::from_millis(200));
                rate_between(first, Reading::take(path)?)?
            }
        };
        Ok(Self::of_reading(hz, first))
    }

    /// The kernel's clocks, read once per process (its tick rate and the offset of its
    /// jiffies never change), or, where they cannot be read, a clock that assumes
    /// `ASSUMED_HZ`, with one warning naming why: timeouts are then off by the ratio of the
    /// real rate to it.
    pub fn read_or_assume() -> Self {
        static CLOCK: std::sync::OnceLock<FlowClock> = std::sync::OnceLock::new();
        *CLOCK.get_or_init(|| {
            Self::read().unwrap_or_else(|error| {
                tracing::warn!(
                    "{}; assuming a tick rate of {ASSUMED_HZ} Hz (the [conntrack] timeouts \
                     scale with the real rate over it)",
                    crate::error::Chain(&error)
                );
                Self {
                    hz: ASSUMED_HZ,
                    offset: 0.0,
                }
            })
        })
    }

    fn of_reading(hz: u32, reading: Reading) -> Self {
        Self {
            hz,
            offset: reading.jiffies as f64 - jiffies_at(hz, reading.monotonic_ns),
        }
    }

    /// The kernel's tick rate (`CONFIG_HZ`).
    pub fn hz(&self) -> u32 {
        self.hz
    }

    /// The tick `FLOWS` is at now.
    pub fn now(&self) -> u32 {
        let mut now = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes one timespec to the pointer, which is valid.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
        let monotonic_ns = now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64;
        self.tick_at(monotonic_ns)
    }

    fn tick_at(&self, monotonic_ns: u64) -> u32 {
        let jiffies = (jiffies_at(self.hz, monotonic_ns) + self.offset).max(0.0) as u64;
        lb_common::conntrack::ticks(jiffies)
    }

    /// `duration` in ticks, rounded up (a timeout is never shorter than asked); saturates.
    pub fn ticks_of(&self, duration: Duration) -> u32 {
        let jiffies = duration.as_secs_f64() * f64::from(self.hz);
        (jiffies / JIFFIES_PER_TICK as f64)
            .ceil()
            .min(f64::from(u32::MAX)) as u32
    }

    /// How long `ticks` ticks are.
    pub fn duration_of(&self, ticks: u32) -> Duration {
        Duration::from_secs_f64(f64::from(ticks) * JIFFIES_PER_TICK as f64 / f64::from(self.hz))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The start of `/proc/timer_list` on a kernel of HZ=250, 185 s after boot.
    const SAMPLE: &str = "Timer List Version: v0.10\nHRTIMER_MAX_CLOCK_BASES: 8\nnow at 184953248355 nsecs\n\ncpu: 0\n clock 0:\n  .base:       ffff8e4a7bc1f300\n  .index:      0\n  .resolution: 1 nsecs\n  .idle_jiffies   : 4294908546\n  .last_jiffies   : 4294908546\njiffies: 4294938475\n";

    #[test]
    fn one_reading_far_from_the_wrap_gives_the_rate() {
        let reading = Reading::parse(SAMPLE).expect("reading");
        assert_eq!(
            reading,
            Reading {
                monotonic_ns: 184_953_248_355,
                jiffies: 4_294_938_475
            }
        );
        assert_eq!(rate_of(reading), Some(250));
        // An hour later, HZ=1000.
        let later = Reading {
            monotonic_ns: 3_600_000_000_000,
            jiffies: (1 << 32) + 3_300_000 - 120,
        };
        assert_eq!(rate_of(later), Some(1000));
        // At the wrap every rate fits: two readings are needed.
        let at_wrap = Reading {
            monotonic_ns: 300_000_000_000,
            jiffies: 1 << 32,
        };
        assert_eq!(rate_of(at_wrap), None);
        let after = Reading {
            monotonic_ns: 300_200_000_000,
            jiffies: (1 << 32) + 60,
        };
        assert_eq!(rate_between(at_wrap, after).expect("rate"), 300);
        assert!(rate_between(
            at_wrap,
            Reading {
                jiffies: (1 << 32) + 1000,
                ..after
            }
        )
        .is_err());
    }

    #[test]
    fn ticks_follow_the_monotonic_clock() {
        let reading = Reading::parse(SAMPLE).expect("reading");
        let clock = FlowClock::of_reading(250, reading);
        assert_eq!(
            clock.tick_at(reading.monotonic_ns),
            lb_common::conntrack::ticks(reading.jiffies)
        );
        let a_minute = clock.tick_at(reading.monotonic_ns + 60_000_000_000);
        assert_eq!(
            a_minute - clock.tick_at(reading.monotonic_ns),
            59,
            "60 s = 58.6 ticks"
        );
        assert_eq!(clock.ticks_of(Duration::from_secs(900)), 879);
        assert_eq!(clock.ticks_of(Duration::from_secs(1)), 1, "rounded up");
        assert_eq!(clock.ticks_of(Duration::ZERO), 0);
        assert!((clock.duration_of(879).as_secs_f64() - 900.096).abs() < 1e-6);
    }

    #[test]
    fn this_kernels_clock_matches_its_jiffies() {
        let clock = FlowClock::read().expect("clock");
        let reading = Reading::take(Path::new(TIMER_LIST)).expect("reading");
        let predicted = clock.tick_at(reading.monotonic_ns);
        let actual = lb_common::conntrack::ticks(reading.jiffies);
        assert!(
            predicted.abs_diff(actual) <= 1,
            "predicted tick {predicted}, kernel at {actual} (HZ {})",
            clock.hz()
        );
    }
}
