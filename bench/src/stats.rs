//! Percentiles over latency samples (nanoseconds).

pub struct Summary {
    pub count: usize,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub max: u64,
}

/// Nearest-rank percentile of sorted samples.
fn rank(sorted: &[u64], p: f64) -> u64 {
    let n = sorted.len();
    let idx = ((p / 100.0) * n as f64).ceil() as usize;
    sorted[idx.clamp(1, n) - 1]
}

pub fn summarize(mut samples: Vec<u64>) -> Option<Summary> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_unstable();
    Some(Summary {
        count: samples.len(),
        p50: rank(&samples, 50.0),
        p90: rank(&samples, 90.0),
        p99: rank(&samples, 99.0),
        max: *samples.last().unwrap(),
    })
}

pub fn ms(nanos: u64) -> String {
    format!("{:.3} ms", nanos as f64 / 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let s = summarize((1..=100).collect()).unwrap();
        assert_eq!((s.p50, s.p90, s.p99, s.max), (50, 90, 99, 100));
        let s = summarize(vec![5]).unwrap();
        assert_eq!((s.p50, s.p99), (5, 5));
    }
}
