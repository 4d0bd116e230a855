//! The run's request budget: a slot on the global tick grid for every lease in flight, and
//! the current rate, halved when the origin throttles and recovered step by step.
//!
//! With `--rate-limit R` and `--max-in-flight N`, slot `j` owns the ticks
//! `j/R + k·N/R` seconds after the Unix epoch (see `fetcher::pace`). Slots are exclusive
//! while a lease holds one, so all requests of the run, in every fetcher process, start on
//! one grid whose ticks are `1/R` apart: at most `R + 1` in any one-second window (the grid
//! runs 2% below `R`, as headroom for delays between a tick and the origin). When the
//! origin answers 429 or 503 the current rate is halved (at most once per recovery step,
//! not below [`FLOOR`]), then climbs back by a tenth of `R` per step without throttling;
//! new leases use that share of their slot's ticks, so the bound holds throughout.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use std::time::Instant;

/// The lowest rate throttling cuts to, in requests per second (or `R`, if lower).
pub const FLOOR: f64 = 1.0;
/// The grid runs this much below `R`: a request reaches the origin a little after its
/// tick (scheduling, the network), and the spread of those delays must not push a second
/// past the limit.
const HEADROOM: f64 = 0.98;
/// How much of `R` each recovery step gives back.
const RECOVERY_STEP: f64 = 0.1;

/// The shared budget of one run.
#[derive(Debug)]
pub struct Budget {
    /// Requests per second, all leases together (0 = unlimited).
    limit: f64,
    slots: usize,
    recover_every: Duration,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    in_use: Vec<bool>,
    /// The rate at `since`, from which recovery climbs.
    base: f64,
    /// The last throttling report (None: never throttled).
    since: Option<Instant>,
    last_cut: Option<Instant>,
}

/// Where a lease's requests may start: its slot's grid and its share of the current rate.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Pace {
    /// Requests per second for this lease (0 = unlimited).
    pub rate: f64,
    pub period_us: u64,
    pub phase_us: u64,
    pub slot: u32,
}

/// A slot held by one lease; given back when dropped.
#[derive(Debug)]
pub struct Slot {
    budget: Arc<Budget>,
    index: usize,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.budget.state.lock().expect("budget").in_use[self.index] = false;
    }
}

impl Budget {
    /// A budget of `limit` requests per second (0 = unlimited) over `slots` leases.
    pub fn new(limit: f64, slots: usize, recover_every: Duration) -> Self {
        let limit = if limit.is_finite() && limit > 0.0 {
            limit
        } else {
            0.0
        };
        let slots = slots.max(1);
        Self {
            limit,
            slots,
            recover_every: recover_every.max(Duration::from_millis(1)),
            state: Mutex::new(State {
                in_use: vec![false; slots],
                base: limit,
                since: None,
                last_cut: None,
            }),
        }
    }

    /// The rate new leases get now (0 = unlimited).
    pub fn current(&self) -> f64 {
        self.current_at(&self.state.lock().expect("budget"), Instant::now())
    }

    fn current_at(&self, state: &State, now: Instant) -> f64 {
        let Some(since) = state.since else {
            return self.limit;
        };
        let steps =
            (now.duration_since(since).as_secs_f64() / self.recover_every.as_secs_f64()).floor();
        (state.base + steps * RECOVERY_STEP * self.limit).min(self.limit)
    }

    /// The origin throttled: halves the rate (at most once per recovery step, not below the
    /// floor) and restarts the recovery clock. Returns the rate now.
    pub fn throttled(&self) -> f64 {
        self.throttled_at(Instant::now())
    }

    fn throttled_at(&self, now: Instant) -> f64 {
        if self.limit == 0.0 {
            return 0.0;
        }
        let mut state = self.state.lock().expect("budget");
        let current = self.current_at(&state, now);
        let may_cut = state
            .last_cut
            .is_none_or(|at| now.duration_since(at) >= self.recover_every);
        state.base = if may_cut {
            state.last_cut = Some(now);
            (current / 2.0).max(FLOOR.min(self.limit))
        } else {
            current
        };
        state.since = Some(now);
        state.base
    }

    /// How many slots the grid has (`--max-in-flight`).
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// Takes a free slot for a lease; `None` if every slot is held.
    pub fn take_slot(self: &Arc<Self>) -> Option<Slot> {
        let mut state = self.state.lock().expect("budget");
        let index = state.in_use.iter().position(|used| !used)?;
        state.in_use[index] = true;
        Some(Slot {
            budget: self.clone(),
            index,
        })
    }

    /// The pace of a lease holding `slot`: unlimited without a limit, else the slot's grid
    /// and an even share of the current rate.
    pub fn pace(&self, slot: &Slot) -> Pace {
        if self.limit == 0.0 {
            return Pace::default();
        }
        let tick = 1e6 / (self.limit * HEADROOM);
        Pace {
            rate: self.current() / self.slots as f64,
            period_us: (tick * self.slots as f64).round().max(1.0) as u64,
            phase_us: (tick * slot.index as f64).round() as u64,
            slot: slot.index as u32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STEP: Duration = Duration::from_secs(10);

    #[test]
    fn slots_tile_one_grid_one_over_r_apart() {
        let budget = Arc::new(Budget::new(40.0, 8, STEP));
        let slots: Vec<Slot> = (0..8).map(|_| budget.take_slot().unwrap()).collect();
        assert!(budget.take_slot().is_none(), "eight slots for eight leases");
        let paces: Vec<Pace> = slots.iter().map(|s| budget.pace(s)).collect();
        for (j, p) in paces.iter().enumerate() {
            // Ticks 1/(0.98 R) = 25.51 ms apart.
            assert_eq!(p.period_us, 204_082);
            assert_eq!(p.phase_us, (25_510.2 * j as f64).round() as u64);
            assert_eq!(p.rate, 5.0);
        }
        drop(slots);
        let again = budget.take_slot().unwrap();
        assert_eq!(
            budget.pace(&again).slot,
            0,
            "a slot is free once its lease ended"
        );
    }

    #[test]
    fn no_limit_means_no_grid() {
        let budget = Arc::new(Budget::new(0.0, 8, STEP));
        let slot = budget.take_slot().unwrap();
        assert_eq!(budget.pace(&slot), Pace::default());
        assert_eq!(budget.throttled(), 0.0);
        assert_eq!(budget.current(), 0.0);
    }

    impl Budget {
        fn current_after(&self, now: Instant) -> f64 {
            self.current_at(&self.state.lock().unwrap(), now)
        }
    }

    #[test]
    fn throttling_halves_once_per_step_then_recovers_to_the_limit() {
        let budget = Budget::new(40.0, 8, STEP);
        let t0 = Instant::now();
        assert_eq!(budget.throttled_at(t0), 20.0);
        let soon = t0 + Duration::from_millis(300);
        assert_eq!(budget.throttled_at(soon), 20.0, "a burst of 429s cuts once");
        // The recovery clock restarted at the last report.
        assert_eq!(budget.current_after(soon + STEP), 24.0, "a step adds R/10");
        assert_eq!(
            budget.throttled_at(soon + STEP),
            12.0,
            "throttled again a step later: halved"
        );
        assert_eq!(
            budget.current_after(soon + STEP * 12),
            40.0,
            "up to R, not beyond"
        );
    }

    #[test]
    fn throttling_never_cuts_below_the_floor() {
        let budget = Budget::new(3.0, 2, STEP);
        let t0 = Instant::now();
        for i in 0..5 {
            budget.throttled_at(t0 + STEP * i);
        }
        assert_eq!(budget.throttled_at(t0 + STEP * 5), FLOOR);
        let tiny = Budget::new(0.5, 2, STEP);
        assert_eq!(tiny.throttled(), 0.5, "a limit below the floor stays");
    }
}
