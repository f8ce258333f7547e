//! Retry delays: exponential with full jitter, so retries of many jobs that failed together spread out.

use std::time::Duration;

/// Delay before retry number `attempt` (1 for the first retry): a random time between half and all
/// of `base × 2^(attempt-1)`, capped at `max`. `unit` is a random number in `[0, 1)`.
pub fn retry_delay(attempt: u32, base: Duration, max: Duration, unit: f64) -> Duration {
    let exponent = attempt.saturating_sub(1).min(31);
    let ceiling = base.saturating_mul(1 << exponent).min(max);
    ceiling.mul_f64(0.5 + 0.5 * unit.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_within_jitter_and_caps() {
        let base = Duration::from_secs(2);
        let max = Duration::from_secs(60);
        let table = [
            (1, 0.0, 1_000),
            (1, 1.0, 2_000),
            (2, 0.0, 2_000),
            (3, 0.5, 6_000),
            (6, 1.0, 60_000),
            (40, 1.0, 60_000),
        ];
        for (attempt, unit, expect_ms) in table {
            let got = retry_delay(attempt, base, max, unit).as_millis();
            assert_eq!(got, expect_ms, "attempt {attempt}, unit {unit}");
        }
    }
}
