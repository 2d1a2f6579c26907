//! Progress of long start-up work (replaying a big journal, restoring many
//! alias files), logged at most every few seconds so that a start-up that
//! takes minutes does not look hung.

use std::time::{Duration, Instant};

/// How often a long job says how far it is.
pub const INTERVAL: Duration = Duration::from_secs(2);

/// Counts the steps of one job and logs `what: done of total` every
/// [`INTERVAL`], and how long it took at the end if it took that long.
#[derive(Debug)]
pub struct Progress {
    what: &'static str,
    total: usize,
    done: usize,
    started: Instant,
    last_said: Instant,
}

impl Progress {
    /// A job of `total` steps, described by `what` (e.g. "replaying the journal").
    pub fn new(what: &'static str, total: usize) -> Progress {
        let now = Instant::now();
        Progress {
            what,
            total,
            done: 0,
            started: now,
            last_said: now,
        }
    }

    /// Records that `done` steps are finished in all (not `done` more).
    pub fn reached(&mut self, done: usize) {
        self.done = done;
        let now = Instant::now();
        if now.duration_since(self.last_said) >= INTERVAL {
            self.last_said = now;
            tracing::info!(
                "{}: {} of {} ({:.0}%)",
                self.what,
                self.done,
                self.total,
                percent(self.done, self.total)
            );
        }
    }

    /// Records `steps` more finished steps.
    pub fn advance(&mut self, steps: usize) {
        self.reached(self.done + steps);
    }

    /// Ends the job: says how long it took, if that was long enough for
    /// progress to be worth reporting.
    pub fn finish(self) {
        let took = self.started.elapsed();
        if took >= INTERVAL {
            tracing::info!(
                "{}: {} done in {:.1} s",
                self.what,
                self.done,
                took.as_secs_f64()
            );
        }
    }
}

fn percent(done: usize, total: usize) -> f64 {
    if total == 0 {
        100.0
    } else {
        100.0 * done as f64 / total as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_steps_and_percent() {
        let mut progress = Progress::new("test", 10);
        progress.advance(3);
        progress.advance(2);
        assert_eq!(progress.done, 5);
        progress.reached(9);
        assert_eq!(progress.done, 9);
        assert!((percent(5, 10) - 50.0).abs() < f64::EPSILON);
        assert!((percent(0, 0) - 100.0).abs() < f64::EPSILON);
        progress.finish();
    }
}
