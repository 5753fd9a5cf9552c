//! Exponential backoff with jitter (pure; the caller supplies randomness).
//!
//! Same shape as the Go `cenkalti/backoff` used upstream: each delay is the current interval
//! randomized by `± randomization`, then the interval grows by `multiplier` up to `max`.

use std::time::Duration;

/// Exponential backoff state.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    multiplier: f64,
    randomization: f64,
    max: Duration,
    current: Duration,
}

impl Backoff {
    /// A backoff starting at `initial`, growing by `multiplier`, jittered by `± randomization`
    /// (a fraction, 1.0 = anywhere in `0..2x`), never longer than `max`.
    pub fn new(initial: Duration, multiplier: f64, randomization: f64, max: Duration) -> Self {
        Backoff {
            initial,
            multiplier,
            randomization: randomization.clamp(0.0, 1.0),
            max,
            current: initial,
        }
    }

    /// Upstream signal reconnect: 800 ms, x1.7, randomization 1.0, max 10 s.
    pub fn signal() -> Self {
        Self::new(
            Duration::from_millis(800),
            1.7,
            1.0,
            Duration::from_secs(10),
        )
    }

    /// Upstream relay reconnect: 2 s, x2, some jitter, max 60 s.
    pub fn relay() -> Self {
        Self::new(Duration::from_secs(2), 2.0, 0.5, Duration::from_secs(60))
    }

    /// Next delay; `unit` is a random number in `[0, 1)`.
    pub fn next_delay(&mut self, unit: f64) -> Duration {
        let cur = self.current.as_secs_f64();
        let delta = self.randomization * cur;
        let unit = unit.clamp(0.0, 1.0);
        let delay = (cur - delta + unit * 2.0 * delta).max(0.0);
        let delay = Duration::from_secs_f64(delay).min(self.max);
        self.current = Duration::from_secs_f64(cur * self.multiplier).min(self.max);
        delay
    }

    /// Next delay with thread-local randomness.
    pub fn next_random(&mut self) -> Duration {
        self.next_delay(rand::random::<f64>())
    }

    /// Back to the initial interval (after a good connection).
    pub fn reset(&mut self) {
        self.current = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_by_multiplier_and_caps() {
        let mut b = Backoff::signal();
        // unit 0.5 = no jitter.
        let d: Vec<u128> = (0..8).map(|_| b.next_delay(0.5).as_millis()).collect();
        for (got, want) in d.iter().zip([800u128, 1360, 2312]) {
            assert!(got.abs_diff(want) <= 1, "{got} vs {want}");
        }
        assert!(d.windows(2).all(|w| w[0] <= w[1]));
        assert!(d.last().unwrap().abs_diff(10_000) <= 1);
    }

    #[test]
    fn jitter_spans_zero_to_double_and_never_exceeds_max() {
        let mut b = Backoff::signal();
        assert_eq!(b.next_delay(0.0), Duration::ZERO);
        let mut b = Backoff::signal();
        assert!(b.next_delay(1.0).as_millis().abs_diff(1600) <= 1);
        for _ in 0..20 {
            assert!(b.next_delay(1.0) <= Duration::from_secs(10));
        }
    }

    #[test]
    fn reset_restarts_at_initial() {
        let mut b = Backoff::signal();
        for _ in 0..5 {
            b.next_delay(0.5);
        }
        b.reset();
        assert!(b.next_delay(0.5).as_millis().abs_diff(800) <= 1);
    }
}
