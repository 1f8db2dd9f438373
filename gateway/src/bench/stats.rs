//! Latency percentiles. Pure: microseconds in, a summary out.

use serde::Serialize;

/// The spread of a set of latencies, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Latency {
    /// How many latencies were measured.
    pub count: usize,
    pub min_us: u64,
    pub mean_us: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

impl Latency {
    /// Sorts `samples` in place and summarises them; all zero when empty.
    pub fn of(samples: &mut [u64]) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        samples.sort_unstable();
        let sum: u128 = samples.iter().map(|&s| u128::from(s)).sum();
        Self {
            count: samples.len(),
            min_us: samples[0],
            mean_us: (sum / samples.len() as u128) as u64,
            p50_us: percentile(samples, 50.0),
            p90_us: percentile(samples, 90.0),
            p99_us: percentile(samples, 99.0),
            max_us: samples[samples.len() - 1],
        }
    }
}

/// The nearest-rank percentile `p` (0-100] of `sorted` (ascending, not
/// empty): the smallest sample that at least `p` % of the samples do not
/// exceed. No interpolation, so every answer is a latency that happened.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    debug_assert!(!sorted.is_empty() && p > 0.0 && p <= 100.0);
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank_samples() {
        let sorted: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&sorted, 50.0), 50);
        assert_eq!(percentile(&sorted, 90.0), 90);
        assert_eq!(percentile(&sorted, 99.0), 99);
        assert_eq!(percentile(&sorted, 100.0), 100);
        assert_eq!(percentile(&sorted, 0.5), 1);
        assert_eq!(percentile(&[7], 99.0), 7);
        // With 10 samples, p99 is the largest: one slow message in ten shows.
        let ten = [1, 1, 1, 1, 1, 1, 1, 1, 1, 500];
        assert_eq!(percentile(&ten, 99.0), 500);
        assert_eq!(percentile(&ten, 90.0), 1);
    }

    #[test]
    fn a_summary_sorts_its_samples_and_reports_the_extremes() {
        let mut samples = vec![300, 100, 200, 10_000, 150];
        let latency = Latency::of(&mut samples);
        assert_eq!(
            latency,
            Latency {
                count: 5,
                min_us: 100,
                mean_us: 2150,
                p50_us: 200,
                p90_us: 10_000,
                p99_us: 10_000,
                max_us: 10_000,
            }
        );
    }

    #[test]
    fn no_samples_summarise_to_zeros() {
        assert_eq!(Latency::of(&mut []), Latency::default());
    }
}
