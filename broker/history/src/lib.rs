//! Allot's usage history: who used which GPUs against their quota, how long
//! requests waited, what was preempted, and each GPU's utilisation, memory,
//! temperature, power and throttling, kept in buckets that grow coarser with age
//! (five minutes, an hour, a day) so the whole history stays small.
//!
//! Pure, no IO and no clock: the broker feeds [`Recorder`] the changes its
//! writer applies and stores the buckets it hands back; reports read an
//! [`Export`] and compute [`figures::Figures`] from it. See docs/reports.md.

pub mod bucket;
pub mod capacity;
pub mod demand;
pub mod figures;
pub mod recorder;

use serde::{Deserialize, Serialize};

pub use bucket::{Bucket, GpuMs};
pub use capacity::{GpuSample, NodeSample};
pub use recorder::{Changes, Contribution, Event, Recorder};

/// The version of the export's JSON shape (and of the stored buckets).
pub const FORMAT: u32 = 1;

/// A usage history as the broker hands it out (`GetUsageHistory`) and as
/// `allotctl report capacity` writes it (`history.json`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Export {
    /// [`FORMAT`].
    pub format: u32,
    /// When the broker made it.
    pub as_of_ms: u64,
    /// The buckets are those that end after this.
    pub since_ms: u64,
    /// In time order, not overlapping.
    pub buckets: Vec<Bucket>,
}

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("not a usage history: {0}")]
    Json(#[from] serde_json::Error),
    #[error("usage history format {found} is not one this version reads ({FORMAT})")]
    Format { found: u32 },
    #[error("bucket {index}: {problem}")]
    Bucket { index: usize, problem: String },
}

impl Export {
    /// Reads an export and checks that its buckets are in order and do not overlap.
    pub fn parse(text: &str) -> Result<Export, HistoryError> {
        let export: Export = serde_json::from_str(text)?;
        if export.format != FORMAT {
            return Err(HistoryError::Format { found: export.format });
        }
        let mut previous_end = 0;
        for (index, bucket) in export.buckets.iter().enumerate() {
            let problem = |problem: String| HistoryError::Bucket { index, problem };
            if bucket.length_ms == 0 {
                return Err(problem("length_ms is 0".into()));
            }
            if bucket.start_ms < previous_end {
                return Err(problem(format!(
                    "starts at {} before the previous one ends ({previous_end})",
                    bucket.start_ms
                )));
            }
            if bucket.until_ms < bucket.start_ms || bucket.until_ms > bucket.end_ms() {
                return Err(problem(format!("until_ms {} is outside the bucket", bucket.until_ms)));
            }
            previous_end = bucket.end_ms();
        }
        Ok(export)
    }

    /// The team names the export has figures for.
    pub fn teams(&self) -> std::collections::BTreeSet<&str> {
        self.buckets.iter().flat_map(|bucket| bucket.teams.keys().map(String::as_str)).collect()
    }
}

/// Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// A time as a UTC date: `2026-03-01`.
pub fn date(ms: u64) -> String {
    let (year, month, day) = civil((ms / 86_400_000) as i64);
    format!("{year:04}-{month:02}-{day:02}")
}

/// A time as UTC date and minute: `2026-03-01 14:05`.
pub fn date_time(ms: u64) -> String {
    let minutes = (ms / 60_000) % (24 * 60);
    format!("{} {:02}:{:02}", date(ms), minutes / 60, minutes % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_utc_calendar_days() {
        assert_eq!(date(0), "1970-01-01");
        assert_eq!(date(951_782_400_000), "2000-02-29");
        assert_eq!(date_time(1_767_225_600_000 + 14 * 3_600_000 + 5 * 60_000), "2026-01-01 14:05");
    }

    #[test]
    fn an_export_in_disorder_or_of_another_format_is_refused_with_its_place() {
        let bucket = |start: u64| Bucket { start_ms: start, length_ms: 10, until_ms: start, ..Default::default() };
        let good = Export { format: FORMAT, as_of_ms: 0, since_ms: 0, buckets: vec![bucket(0), bucket(10)] };
        let text = serde_json::to_string(&good).expect("json");
        assert_eq!(Export::parse(&text).expect("valid"), good);
        let overlapping = Export { buckets: vec![bucket(0), bucket(5)], ..good.clone() };
        let error = Export::parse(&serde_json::to_string(&overlapping).expect("json")).expect_err("overlap");
        assert!(error.to_string().starts_with("bucket 1: starts at 5"), "{error}");
        let other = Export { format: 9, ..good };
        assert!(Export::parse(&serde_json::to_string(&other).expect("json")).is_err());
        assert!(Export::parse("name,team\n").expect_err("csv").to_string().starts_with("not a usage history"));
    }
}
