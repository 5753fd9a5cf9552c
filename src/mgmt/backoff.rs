//! Exponential backoff with jitter, as NetBird's clients use for reconnects.

use rand::Rng;
use std::time::Duration;

/// Exponential backoff: `initial × factor^n`, capped at `max`, each wait randomised by
/// ±`jitter` (1.0 = anywhere from 0 to twice the interval).
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    factor: f64,
    max: Duration,
    jitter: f64,
    current: Duration,
}

impl Backoff {
    /// A backoff with the given shape.
    pub fn new(initial: Duration, factor: f64, max: Duration, jitter: f64) -> Self {
        Backoff {
            initial,
            factor,
            max,
            jitter: jitter.clamp(0.0, 1.0),
            current: initial,
        }
    }

    /// The management/signal stream backoff: 0.8 s, ×1.7, ±100 %, at most 10 s.
    pub fn stream() -> Self {
        Self::new(
            Duration::from_millis(800),
            1.7,
            Duration::from_secs(10),
            1.0,
        )
    }

    /// The next wait, drawing the jitter from `rng`.
    pub fn next_with<R: Rng>(&mut self, rng: &mut R) -> Duration {
        let base = self.current.as_secs_f64();
        let spread = base * self.jitter;
        let wait = if spread > 0.0 {
            rng.gen_range((base - spread)..=(base + spread))
        } else {
            base
        };
        let grown = (base * self.factor).min(self.max.as_secs_f64());
        self.current = Duration::from_secs_f64(grown);
        Duration::from_secs_f64(wait.max(0.0))
    }

    /// The next wait with thread-local randomness.
    pub fn next_wait(&mut self) -> Duration {
        self.next_with(&mut rand::thread_rng())
    }

    /// Back to the initial interval (after a connection was up).
    pub fn reset(&mut self) {
        self.current = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn grows_caps_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(1), 2.0, Duration::from_secs(5), 0.0);
        let waits: Vec<_> = (0..5).map(|_| b.next_wait().as_secs()).collect();
        assert_eq!(waits, vec![1, 2, 4, 5, 5]);
        b.reset();
        assert_eq!(b.next_wait().as_secs(), 1);
    }

    #[test]
    fn jitter_stays_within_bounds() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut b = Backoff::stream();
        let mut seen_below = false;
        for _ in 0..50 {
            let w = b.next_with(&mut rng);
            assert!(w <= Duration::from_secs(20), "{w:?}");
            seen_below |= w < Duration::from_secs(10);
        }
        assert!(seen_below);
    }
}
