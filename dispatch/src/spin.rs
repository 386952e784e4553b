//! How long helper threads spin after a threaded call, waiting for the next one.
//!
//! Waking a sleeping thread costs 15–80 µs on the machines this was measured on, so by
//! default a helper spins for 200 µs after each call ([`DEFAULT_SPIN_TIME`]): back-to-
//! back calls then find their helpers awake. An engine that makes calls far apart, or
//! shares its cores, pays for that spinning in CPU time (a 64×256×256 GEMM every 1 ms
//! on 2 threads: about 9× the CPU time of the work itself), so the time is the
//! caller's to choose, 0 meaning that helpers go back to sleep at once:
//!
//! - per call: [`Options::with_spin_time`](crate::Options::with_spin_time);
//! - for the process: [`set_spin_time`];
//! - else the environment variable `QGEMM_SPIN_US` (microseconds), read once, at the
//!   first threaded call; a value that is not a number of microseconds is ignored;
//! - else [`DEFAULT_SPIN_TIME`].
//!
//! A threaded call sets the time its helpers spin after it; where calls with different
//! times overlap, the helpers spin for the one that started last. Single-threaded
//! calls start no helpers and change nothing.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// The spin time when neither the API nor `QGEMM_SPIN_US` sets one.
pub const DEFAULT_SPIN_TIME: Duration = Duration::from_micros(200);

/// The spin time that [`set_spin_time`] set, in nanoseconds, or [`UNSET`].
static PROCESS: AtomicU64 = AtomicU64::new(UNSET);
const UNSET: u64 = u64::MAX;

/// Sets how long helper threads spin after each threaded call, for calls that do not
/// set their own (`None`: back to `QGEMM_SPIN_US`, else [`DEFAULT_SPIN_TIME`]).
/// `Duration::ZERO` makes helpers sleep as soon as a call's tasks are done. Times
/// above a second are taken as a second.
pub fn set_spin_time(spin: Option<Duration>) {
    PROCESS.store(spin.map_or(UNSET, nanos), Relaxed);
}

/// How long helper threads spin after a threaded call that sets no time of its own:
/// [`set_spin_time`]'s, else `QGEMM_SPIN_US`, else [`DEFAULT_SPIN_TIME`].
pub fn spin_time() -> Duration {
    match PROCESS.load(Relaxed) {
        UNSET => from_env(),
        ns => Duration::from_nanos(ns),
    }
}

/// At most a second, in nanoseconds.
fn nanos(spin: Duration) -> u64 {
    spin.min(Duration::from_secs(1)).as_nanos() as u64
}

/// `QGEMM_SPIN_US`, read once.
fn from_env() -> Duration {
    static ENV: OnceLock<Duration> = OnceLock::new();
    *ENV.get_or_init(|| parse_env(std::env::var("QGEMM_SPIN_US").ok().as_deref()))
}

/// A value of `QGEMM_SPIN_US`: whole microseconds, at most a second; anything else
/// (unset, empty, not a number) is the default.
pub(crate) fn parse_env(value: Option<&str>) -> Duration {
    match value.map(str::trim).and_then(|v| v.parse::<u64>().ok()) {
        Some(us) => Duration::from_nanos(nanos(Duration::from_micros(us))),
        None => DEFAULT_SPIN_TIME,
    }
}

/// The spin time of a call that asks for `per_call`, in nanoseconds (at most a second).
pub(crate) fn for_call(per_call: Option<Duration>) -> u64 {
    nanos(per_call.unwrap_or_else(spin_time))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_values() {
        assert_eq!(parse_env(None), DEFAULT_SPIN_TIME);
        assert_eq!(parse_env(Some("")), DEFAULT_SPIN_TIME);
        assert_eq!(parse_env(Some("fast")), DEFAULT_SPIN_TIME);
        assert_eq!(parse_env(Some("-5")), DEFAULT_SPIN_TIME);
        assert_eq!(parse_env(Some(" 0 ")), Duration::ZERO);
        assert_eq!(parse_env(Some("50")), Duration::from_micros(50));
        assert_eq!(parse_env(Some("99999999999")), Duration::from_secs(1));
    }

    #[test]
    fn a_call_s_own_time_comes_first_and_is_capped() {
        assert_eq!(for_call(Some(Duration::ZERO)), 0);
        assert_eq!(for_call(Some(Duration::from_micros(7))), 7_000);
        assert_eq!(for_call(Some(Duration::from_secs(5))), 1_000_000_000);
    }
}
