//! GPU health from events: critical Xids, uncorrectable ECC errors and NVML losing
//! the GPU make it unhealthy; it is healthy again once a quiet period passes without
//! another.
//!
//! Pure: time is an argument (milliseconds on any monotonic clock), so the rules
//! are tested without sleeping.

use std::collections::BTreeMap;
use std::time::Duration;

use allot_api::topology::GpuHealth;

/// Xids caused by the application, not the GPU (NVIDIA's device plugin skips
/// the same ones): 13 graphics engine exception, 31 GPU memory page fault,
/// 43 GPU stopped processing, 45 preemptive cleanup, 68 video processor
/// exception, 109 context switch timeout.
pub const APPLICATION_XIDS: [u64; 6] = [13, 31, 43, 45, 68, 109];

/// Whether an Xid says something about the GPU itself.
pub fn is_critical_xid(xid: u64) -> bool {
    !APPLICATION_XIDS.contains(&xid)
}

#[derive(Debug, Clone, Default)]
struct GpuRecord {
    /// The last critical event and when it happened.
    last: Option<(u64, String)>,
    /// Uncorrectable ECC errors counted so far (to notice growth).
    ecc_seen: Option<u64>,
}

/// Per-GPU health from events.
#[derive(Debug, Clone)]
pub struct HealthTracker {
    quiet_ms: u64,
    gpus: BTreeMap<u32, GpuRecord>,
}

impl HealthTracker {
    pub fn new(quiet: Duration) -> Self {
        HealthTracker { quiet_ms: quiet.as_millis().min(u128::from(u64::MAX)) as u64, gpus: BTreeMap::new() }
    }

    fn mark(&mut self, gpu: u32, now_ms: u64, reason: String) {
        self.gpus.entry(gpu).or_default().last = Some((now_ms, reason));
    }

    /// An Xid event; answers whether it changed the GPU's health.
    pub fn xid(&mut self, gpu: u32, xid: u64, now_ms: u64) -> bool {
        if !is_critical_xid(xid) {
            return false;
        }
        let was_healthy = self.is_healthy(gpu, now_ms);
        self.mark(gpu, now_ms, format!("critical Xid {xid}"));
        was_healthy
    }

    /// A double-bit (uncorrectable) ECC event.
    pub fn ecc_uncorrectable(&mut self, gpu: u32, now_ms: u64) -> bool {
        let was_healthy = self.is_healthy(gpu, now_ms);
        self.mark(gpu, now_ms, "uncorrectable ECC error".to_owned());
        was_healthy
    }

    /// The volatile uncorrectable ECC count read with the telemetry: growth (or
    /// errors already there when first seen) counts as an event now.
    pub fn ecc_count(&mut self, gpu: u32, count: u64, now_ms: u64) -> bool {
        let record = self.gpus.entry(gpu).or_default();
        let previous = record.ecc_seen.replace(count);
        let grew = match previous {
            Some(previous) => count > previous,
            None => count > 0,
        };
        if !grew {
            return false;
        }
        let was_healthy = self.is_healthy(gpu, now_ms);
        self.mark(gpu, now_ms, format!("{count} uncorrectable ECC errors since the driver loaded"));
        was_healthy
    }

    /// NVML cannot reach the GPU now (it is lost, or fails the queries every GPU
    /// answers). Reported at every discovery while it lasts, so the GPU stays unhealthy
    /// until NVML answers again and the quiet period has passed since.
    pub fn unreachable(&mut self, gpu: u32, reason: &str, now_ms: u64) -> bool {
        let was_healthy = self.is_healthy(gpu, now_ms);
        self.mark(gpu, now_ms, reason.to_owned());
        was_healthy
    }

    fn is_healthy(&self, gpu: u32, now_ms: u64) -> bool {
        matches!(self.health(gpu, now_ms), GpuHealth::Healthy)
    }

    /// Unhealthy while the last critical event is younger than the quiet period.
    pub fn health(&self, gpu: u32, now_ms: u64) -> GpuHealth {
        match self.gpus.get(&gpu).and_then(|record| record.last.as_ref()) {
            Some((at, reason)) if now_ms.saturating_sub(*at) < self.quiet_ms => {
                let clears_in_s = (self.quiet_ms - now_ms.saturating_sub(*at)).div_ceil(1000);
                GpuHealth::Unhealthy { reasons: vec![format!("{reason}; clears after {clears_in_s}s without another")] }
            }
            _ => GpuHealth::Healthy,
        }
    }

    /// When the next health change by time alone is due (a GPU's quiet period ends).
    pub fn next_change_ms(&self, now_ms: u64) -> Option<u64> {
        self.gpus
            .values()
            .filter_map(|record| record.last.as_ref().map(|(at, _)| at + self.quiet_ms))
            .filter(|due| *due > now_ms)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhealthy(health: &GpuHealth) -> Option<&str> {
        match health {
            GpuHealth::Unhealthy { reasons } => reasons.first().map(String::as_str),
            _ => None,
        }
    }

    #[test]
    fn application_xids_are_ignored() {
        let mut tracker = HealthTracker::new(Duration::from_secs(60));
        for xid in APPLICATION_XIDS {
            assert!(!tracker.xid(0, xid, 1_000), "Xid {xid}");
        }
        assert_eq!(tracker.health(0, 1_000), GpuHealth::Healthy);
    }

    #[test]
    fn a_critical_xid_makes_the_gpu_unhealthy_until_a_quiet_period_passes() {
        let mut tracker = HealthTracker::new(Duration::from_secs(60));
        assert!(tracker.xid(2, 79, 1_000), "healthy to unhealthy is a change");
        assert!(unhealthy(&tracker.health(2, 1_000)).is_some_and(|reason| reason.contains("Xid 79")));
        assert_eq!(tracker.health(1, 1_000), GpuHealth::Healthy, "other GPUs are untouched");
        // Another Xid restarts the quiet period, and is not a change.
        assert!(!tracker.xid(2, 48, 50_000));
        assert!(unhealthy(&tracker.health(2, 100_000)).is_some());
        assert_eq!(tracker.next_change_ms(100_000), Some(110_000));
        assert_eq!(tracker.health(2, 110_000), GpuHealth::Healthy);
    }

    #[test]
    fn ecc_counts_matter_when_they_grow() {
        let mut tracker = HealthTracker::new(Duration::from_secs(10));
        assert!(!tracker.ecc_count(0, 0, 0));
        assert!(!tracker.ecc_count(0, 0, 1_000));
        assert!(tracker.ecc_count(0, 2, 2_000));
        assert!(unhealthy(&tracker.health(0, 2_000)).is_some_and(|reason| reason.contains("ECC")));
        assert!(!tracker.ecc_count(0, 2, 3_000), "the same count is not new");
        assert_eq!(tracker.health(0, 12_000), GpuHealth::Healthy);
        // Errors already counted when the daemon starts count once.
        let mut fresh = HealthTracker::new(Duration::from_secs(10));
        assert!(fresh.ecc_count(1, 5, 0));
        assert!(!fresh.ecc_count(1, 5, 11_000));
        assert_eq!(fresh.health(1, 11_000), GpuHealth::Healthy);
    }

    #[test]
    fn a_lost_gpu_heals_only_a_quiet_period_after_nvml_answers_again() {
        let mut tracker = HealthTracker::new(Duration::from_secs(10));
        let lost = "NVML reports the GPU lost (fallen off the bus) when reading its handle";
        assert!(tracker.unreachable(4, lost, 1_000), "healthy to unhealthy is a change");
        // Still lost at every beat: each sighting restarts the quiet period.
        for now in (1..=8).map(|beat| 1_000 + beat * 5_000) {
            assert!(!tracker.unreachable(4, lost, now));
            assert!(unhealthy(&tracker.health(4, now)).is_some_and(|reason| reason.contains("lost")));
        }
        // NVML answers again after 41 s: unhealthy until 10 s after the last sighting.
        assert!(unhealthy(&tracker.health(4, 50_999)).is_some());
        assert_eq!(tracker.health(4, 51_000), GpuHealth::Healthy);
        assert_eq!(tracker.health(3, 1_000), GpuHealth::Healthy, "other GPUs are untouched");
    }

    #[test]
    fn ecc_events_count_like_critical_xids() {
        let mut tracker = HealthTracker::new(Duration::from_secs(10));
        assert!(tracker.ecc_uncorrectable(3, 0));
        assert!(unhealthy(&tracker.health(3, 9_999)).is_some());
        assert_eq!(tracker.health(3, 10_000), GpuHealth::Healthy);
    }
}
