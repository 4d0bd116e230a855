//! Request pacing for one lease: its slot on the run's global tick grid, or a plain GCRA
//! limit (burst 1) when the coordinator sends no grid.
//!
//! # Why a grid holds the run's limit
//!
//! The coordinator gives each lease in flight a slot `j` in `0..N` (N = `--max-in-flight`;
//! a slot is handed out again only after its lease ended) and the grid of a limit `R`:
//! period `P = N / R`, phase `φ_j = j / R`, in microseconds since the Unix epoch. A lease
//! starts every request at a tick `φ_j + k·P` and uses each tick at most once. The union of
//! all slots' ticks is one grid with ticks `1/R` apart, so whatever the number of leases,
//! their churn, or the processes (on NTP-synced clocks) that run them, the origins see at
//! most `R + 1` request starts in any one-second window. A throttled lease uses only a
//! fraction of its ticks — a subset of the same grid — so mixing leases cut at different
//! rates never breaks the bound.

use std::{num::NonZeroU32, sync::Mutex, time::Duration};

use alldocs_proto::v1::Lease;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::time::Instant;

/// How late after its tick a request may still start; a request woken later takes the
/// next free tick. At `R` requests per second this adds at most `R × 5 ms` (one request
/// at 200/s) to any one-second window.
const LATE_WAKE: Duration = Duration::from_millis(5);

/// How a lease paces its requests.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Pace {
    Unlimited,
    /// Requests per second, spaced evenly (no burst).
    Rate(f64),
    Grid(Grid),
}

/// One slot of the run's tick grid.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Grid {
    pub period_us: u64,
    pub phase_us: u64,
    /// The share of this slot's ticks the lease may use, in (0, 1].
    pub fraction: f64,
}

impl Pace {
    /// The pacing a lease asks for: its grid when it has one, else its `rate_limit`.
    pub fn of_lease(lease: &Lease) -> Self {
        let rate = lease.rate_limit;
        if !(rate > 0.0 && rate.is_finite()) {
            return Self::Unlimited;
        }
        let period_us = lease.rate_grid_period_us;
        if period_us == 0 {
            return Self::Rate(rate);
        }
        Self::Grid(Grid {
            period_us,
            phase_us: lease.rate_grid_phase_us % period_us,
            fraction: (rate * period_us as f64 / 1e6).clamp(1e-3, 1.0),
        })
    }
}

/// Waits for the moment a lease may start its next request.
pub enum Limiter {
    Gcra(DefaultDirectRateLimiter),
    Grid(GridLimiter),
}

impl Limiter {
    /// The limiter for `pace`; `None` when unlimited.
    pub fn new(pace: Pace) -> Option<Self> {
        match pace {
            Pace::Unlimited => None,
            Pace::Rate(rate) => {
                let period = Duration::from_secs_f64(1.0 / rate).max(Duration::from_nanos(1));
                let quota = Quota::with_period(period)
                    .expect("period is positive")
                    .allow_burst(NonZeroU32::MIN);
                Some(Self::Gcra(RateLimiter::direct(quota)))
            }
            Pace::Grid(grid) => Some(Self::Grid(GridLimiter::new(grid, unix_now_us()))),
        }
    }

    pub async fn until_ready(&self) {
        match self {
            Self::Gcra(limiter) => limiter.until_ready().await,
            Self::Grid(limiter) => loop {
                let tick = limiter.reserve(Instant::now());
                tokio::time::sleep_until(tick).await;
                // Woken late (a busy machine): sending now would bunch requests up with
                // the next slots' ones, so take a later tick instead.
                if Instant::now() <= tick + LATE_WAKE {
                    return;
                }
            },
        }
    }
}

fn unix_now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Hands out this slot's grid ticks, each once, never one already past.
pub struct GridLimiter {
    grid: Grid,
    /// The tokio instant at which the wall clock read `origin_us`: maps the Unix grid
    /// onto tokio's clock (so tests can run it in virtual time).
    origin: Instant,
    origin_us: u64,
    /// The first tick index not yet handed out.
    next: Mutex<u64>,
}

impl GridLimiter {
    /// A limiter whose wall clock reads `now_unix_us` now.
    pub fn new(grid: Grid, now_unix_us: u64) -> Self {
        Self {
            grid,
            origin: Instant::now(),
            origin_us: now_unix_us,
            next: Mutex::new(0),
        }
    }

    /// Whether tick `k` is among the `fraction` of ticks this lease uses (evenly spread).
    fn uses(&self, k: u64) -> bool {
        let f = self.grid.fraction;
        f >= 1.0 || ((k + 1) as f64 * f).floor() > (k as f64 * f).floor()
    }

    /// Takes the next free tick at or after `now` and returns when it is.
    pub fn reserve(&self, now: Instant) -> Instant {
        let Grid {
            period_us,
            phase_us,
            ..
        } = self.grid;
        let now_us = self.origin_us + now.duration_since(self.origin).as_micros() as u64;
        let first = now_us.saturating_sub(phase_us).div_ceil(period_us);
        let mut next = self.next.lock().expect("grid limiter");
        let mut k = first.max(*next);
        while !self.uses(k) {
            k += 1;
        }
        *next = k + 1;
        let at_us = phase_us + k * period_us;
        self.origin + Duration::from_micros(at_us.saturating_sub(self.origin_us))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid(period_us: u64, phase_us: u64, fraction: f64) -> GridLimiter {
        GridLimiter::new(
            Grid {
                period_us,
                phase_us,
                fraction,
            },
            // An arbitrary wall clock, not on a tick.
            1_700_000_000_123_457,
        )
    }

    /// Unix microseconds of a tokio instant, on the limiter's clock.
    fn unix_us(l: &GridLimiter, at: Instant) -> u64 {
        l.origin_us + at.duration_since(l.origin).as_micros() as u64
    }

    #[test]
    fn requests_start_only_on_the_slots_ticks_each_tick_once() {
        // 8 slots at 40/s: period 200 ms; slot 3 sits 75 ms into each period.
        let l = grid(200_000, 75_000, 1.0);
        // A caller that asks again the moment its previous tick came.
        let mut now = l.origin;
        let mut starts = Vec::new();
        for _ in 0..20 {
            now = l.reserve(now);
            starts.push(unix_us(&l, now));
        }
        for (i, t) in starts.iter().enumerate() {
            assert_eq!(t % 200_000, 75_000, "start {i} at {t} is on a tick");
        }
        for w in starts.windows(2) {
            assert_eq!(
                w[1] - w[0],
                200_000,
                "consecutive ticks, none skipped or reused"
            );
        }
        assert!(starts[0] >= 1_700_000_000_123_457, "no tick in the past");
    }

    #[test]
    fn concurrent_callers_share_the_ticks() {
        let l = grid(100_000, 0, 1.0);
        let mut reserved: Vec<u64> = (0..10).map(|_| unix_us(&l, l.reserve(l.origin))).collect();
        reserved.sort_unstable();
        reserved.dedup();
        assert_eq!(reserved.len(), 10, "ten callers get ten distinct ticks");
        assert_eq!(reserved[9] - reserved[0], 900_000);
    }

    #[test]
    fn a_late_caller_skips_ticks_that_passed() {
        let l = grid(100_000, 0, 1.0);
        let first = unix_us(&l, l.reserve(l.origin));
        let later = unix_us(&l, l.reserve(l.origin + Duration::from_millis(550)));
        // First tick at …200 ms; 550 ms later the clock reads …673 ms: next is …700 ms.
        assert_eq!(
            later - first,
            500_000,
            "the next tick after now, not a missed one"
        );
    }

    #[test]
    fn a_fraction_uses_that_share_of_the_same_ticks() {
        let l = grid(100_000, 20_000, 0.25);
        let ticks: Vec<u64> = (0..8).map(|_| unix_us(&l, l.reserve(l.origin))).collect();
        for t in &ticks {
            assert_eq!(t % 100_000, 20_000, "still on the slot's grid");
        }
        let gaps: Vec<u64> = ticks.windows(2).map(|w| w[1] - w[0]).collect();
        assert_eq!(gaps, vec![400_000; 7], "every fourth tick: {ticks:?}");
    }

    #[tokio::test]
    async fn the_limiter_waits_for_the_tick() {
        let limiter = Limiter::new(Pace::Grid(Grid {
            period_us: 50_000,
            phase_us: 0,
            fraction: 1.0,
        }))
        .unwrap();
        let started = std::time::Instant::now();
        for _ in 0..3 {
            limiter.until_ready().await;
        }
        // Three distinct ticks 50 ms apart: the last is at least 100 ms after the first.
        assert!(started.elapsed() >= Duration::from_millis(100));
    }

    #[test]
    fn the_grid_comes_from_the_lease() {
        let mut lease = Lease {
            rate_limit: 2.5,
            rate_grid_period_us: 200_000,
            rate_grid_phase_us: 1_075_000,
            ..Lease::default()
        };
        assert_eq!(
            Pace::of_lease(&lease),
            Pace::Grid(Grid {
                period_us: 200_000,
                phase_us: 75_000,
                fraction: 0.5
            })
        );
        lease.rate_grid_period_us = 0;
        assert_eq!(Pace::of_lease(&lease), Pace::Rate(2.5));
        lease.rate_limit = 0.0;
        assert_eq!(Pace::of_lease(&lease), Pace::Unlimited);
        lease.rate_limit = f64::NAN;
        assert_eq!(Pace::of_lease(&lease), Pace::Unlimited);
    }
}
