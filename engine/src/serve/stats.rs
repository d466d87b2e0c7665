//! What the engine counts per request type: for each [`OpKind`], how many
//! completed, how many failed, and an hdrhistogram of their latency from
//! submit to completion (queueing on the reactor included), in
//! microseconds. Kept on the reactor thread by the dispatcher, which
//! records each request as it delivers it; `Op::Stats` reads them with
//! the volume's counters (`scoutfs counters`).

use std::time::Duration;

use hdrhistogram::Histogram;

use super::op::OpKind;
use super::Mounted;

/// The longest latency told apart (60 s); longer ones count as this.
const MAX_LATENCY_US: u64 = 60_000_000;
/// Significant digits of the histograms (1% resolution).
const SIGFIGS: u8 = 2;

/// One kind's figures.
#[derive(Debug, Default)]
struct KindStats {
    count: u64,
    errors: u64,
    /// Made on the kind's first request (a few KiB each).
    latency_us: Option<Histogram<u64>>,
}

/// Per-kind counts and latency histograms.
#[derive(Debug)]
pub struct OpStats {
    kinds: Vec<KindStats>,
}

impl Default for OpStats {
    fn default() -> Self {
        OpStats {
            kinds: OpKind::ALL.iter().map(|_| KindStats::default()).collect(),
        }
    }
}

impl OpStats {
    /// A request of `kind` completed after `latency`, failed or not.
    pub fn record(&mut self, kind: OpKind, latency: Duration, failed: bool) {
        let k = &mut self.kinds[kind as usize];
        k.count += 1;
        if failed {
            k.errors += 1;
        }
        let h = k.latency_us.get_or_insert_with(|| {
            Histogram::new_with_bounds(1, MAX_LATENCY_US, SIGFIGS)
                .expect("constant histogram bounds are valid")
        });
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        h.saturating_record(us.clamp(1, MAX_LATENCY_US));
    }

    /// Requests of `kind` completed so far.
    pub fn count(&self, kind: OpKind) -> u64 {
        self.kinds[kind as usize].count
    }

    /// Start again from nothing.
    pub fn reset(&mut self) {
        *self = OpStats::default();
    }

    /// For each kind that has completed a request, in `OpKind::ALL`'s
    /// order: `op_<kind>_count`, `op_<kind>_errors`, and the latency's
    /// `op_<kind>_p50_us`, `_p99_us` and `_max_us`.
    pub fn lines(&self) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        for (kind, k) in OpKind::ALL.iter().zip(&self.kinds) {
            let Some(h) = k.latency_us.as_ref().filter(|_| k.count > 0) else {
                continue;
            };
            let n = kind.name();
            out.push((format!("op_{n}_count"), k.count));
            out.push((format!("op_{n}_errors"), k.errors));
            out.push((format!("op_{n}_p50_us"), h.value_at_quantile(0.5)));
            out.push((format!("op_{n}_p99_us"), h.value_at_quantile(0.99)));
            out.push((format!("op_{n}_max_us"), h.max()));
        }
        out
    }
}

/// The volume's counters: commits, the committed seq, the metadata
/// cache's hits, misses and evictions, metadata device reads, blocks
/// served from the data read-ahead, and corrupt metadata blocks met and
/// logged (block/corrupt.rs).
pub fn volume_lines(fs: &mut Mounted) -> Vec<(String, u64)> {
    let v = fs.store_mut();
    let c = v.cache_stats();
    [
        ("commits", v.commits()),
        ("committed_seq", v.committed_seq()),
        ("cache_hits", c.hits),
        ("cache_misses", c.misses),
        ("cache_evictions", c.evictions),
        ("meta_device_reads", v.device_reads()),
        (
            "data_readahead_hit_blocks",
            v.data_io().map_or(0, |d| d.ra_hits),
        ),
        ("corrupt_block_reads", v.store_mut().corruption.met()),
        (
            "corrupt_blocks_logged",
            v.store_mut().corruption.logged() as u64,
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_are_kept_per_kind_in_microseconds() {
        let mut s = OpStats::default();
        for us in 1..=100u64 {
            s.record(OpKind::Lookup, Duration::from_micros(us), us == 100);
        }
        s.record(OpKind::Write, Duration::from_secs(3600), false);
        let lines: std::collections::HashMap<_, _> = s.lines().into_iter().collect();
        assert_eq!(lines["op_lookup_count"], 100);
        assert_eq!(lines["op_lookup_errors"], 1);
        assert!((49..=51).contains(&lines["op_lookup_p50_us"]), "{lines:?}");
        assert!((98..=100).contains(&lines["op_lookup_p99_us"]), "{lines:?}");
        assert_eq!(lines["op_lookup_max_us"], 100);
        // Beyond the histogram's range: counted at its top.
        assert!(lines["op_write_max_us"] >= MAX_LATENCY_US * 99 / 100);
        // Kinds never asked are not listed.
        assert!(!lines.contains_key("op_read_count"));
        assert_eq!(s.count(OpKind::Lookup), 100);
        s.reset();
        assert!(s.lines().is_empty());
    }
}
