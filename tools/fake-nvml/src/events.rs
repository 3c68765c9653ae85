//! The events file: JSON lines of injected Xid and ECC events, read from a byte offset.
//!
//! A line is `{"gpu": 0, "kind": "xid", "value": 79}`, `{"gpu": 0, "kind": "ecc_single_bit"}`
//! or `{"gpu": 0, "kind": "ecc_double_bit"}`, optionally with `gpu_instance_id` and
//! `compute_instance_id` for an event inside a MIG device. Only complete lines (ending in a
//! newline) count, so a writer appending a line is never seen half-written.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

use nvml_wrapper_sys::bindings::{
    nvmlEventTypeDoubleBitEccError, nvmlEventTypeSingleBitEccError, nvmlEventTypeXidCriticalError,
};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEvent {
    gpu: u32,
    kind: String,
    value: Option<u64>,
    gpu_instance_id: Option<u32>,
    compute_instance_id: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventKind {
    Xid(u64),
    EccSingleBit,
    EccDoubleBit,
    /// The GPU fell off the bus: from this line on its calls answer `NVML_ERROR_GPU_IS_LOST`,
    /// and event sets listening for Xids get Xid 79, as the driver reports it.
    FallenOffBus,
    /// The GPU answers again (as after a reset or a reboot); no event is delivered.
    BackOnBus,
}

impl EventKind {
    /// The `nvmlEventType*` bit.
    pub(crate) fn nvml_type(self) -> u64 {
        u64::from(match self {
            EventKind::Xid(_) | EventKind::FallenOffBus => nvmlEventTypeXidCriticalError,
            EventKind::EccSingleBit => nvmlEventTypeSingleBitEccError,
            EventKind::EccDoubleBit => nvmlEventTypeDoubleBitEccError,
            // No event set listens for it, so it is never delivered.
            EventKind::BackOnBus => 0,
        })
    }

    /// `nvmlEventData_t.eventData`: the Xid for Xid events, 0 otherwise.
    pub(crate) fn data(self) -> u64 {
        match self {
            EventKind::Xid(xid) => xid,
            EventKind::FallenOffBus => XID_FALLEN_OFF_BUS,
            EventKind::EccSingleBit | EventKind::EccDoubleBit | EventKind::BackOnBus => 0,
        }
    }
}

/// "GPU has fallen off the bus", in NVIDIA's Xid catalogue.
const XID_FALLEN_OFF_BUS: u64 = 79;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Event {
    /// NVML index of the GPU.
    pub(crate) gpu: u32,
    pub(crate) kind: EventKind,
    pub(crate) gpu_instance_id: Option<u32>,
    pub(crate) compute_instance_id: Option<u32>,
}

pub(crate) fn parse_line(line: &str) -> Result<Event, String> {
    let raw: RawEvent = serde_json::from_str(line).map_err(|err| err.to_string())?;
    let kind = match (raw.kind.as_str(), raw.value) {
        ("xid", Some(xid)) => EventKind::Xid(xid),
        ("xid", None) => return Err("an xid event needs a \"value\"".to_owned()),
        ("ecc_single_bit", _) => EventKind::EccSingleBit,
        ("ecc_double_bit", _) => EventKind::EccDoubleBit,
        ("fallen_off_bus", _) => EventKind::FallenOffBus,
        ("back_on_bus", _) => EventKind::BackOnBus,
        (other, _) => {
            return Err(format!(
                "unknown kind {other:?} (expected xid, ecc_single_bit, ecc_double_bit, fallen_off_bus or back_on_bus)"
            ));
        }
    };
    Ok(Event { gpu: raw.gpu, kind, gpu_instance_id: raw.gpu_instance_id, compute_instance_id: raw.compute_instance_id })
}

/// The offset new readers start at: the end of the file, or 0 if there is none yet.
pub(crate) fn end_offset(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |metadata| metadata.len())
}

/// Reads complete lines from byte `cursor` on and returns the offset after the lines it
/// consumed together with the first event `wanted` accepts. Lines it skips (unwanted or
/// malformed; malformed ones are reported on stderr) are consumed too. A file shorter than
/// `cursor` has been truncated, and is read again from its start.
pub(crate) fn next_event(
    path: &Path,
    cursor: u64,
    wanted: impl Fn(&Event) -> bool,
) -> io::Result<(u64, Option<Event>)> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok((0, None)),
        Err(err) => return Err(err),
    };
    let length = file.metadata()?.len();
    let start = if length < cursor { 0 } else { cursor };
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;

    let mut consumed = 0usize;
    while let Some(newline) = bytes[consumed..].iter().position(|&byte| byte == b'\n') {
        let line = &bytes[consumed..consumed + newline];
        consumed += newline + 1;
        let offset = start + consumed as u64;
        let text = String::from_utf8_lossy(line);
        if text.trim().is_empty() {
            continue;
        }
        match parse_line(&text) {
            Ok(event) if wanted(&event) => return Ok((offset, Some(event))),
            Ok(_) => {}
            Err(problem) => {
                crate::report(format_args!("{}: skipping event line {:?}: {problem}", path.display(), text.trim()))
            }
        }
    }
    Ok((start + consumed as u64, None))
}

/// Corrected (single-bit) and uncorrected (double-bit) ECC errors of GPU `gpu`: every ECC
/// line of the events file for it, delivered or not.
pub(crate) fn ecc_counts(path: &Path, gpu: u32) -> (u64, u64) {
    let Ok(text) = std::fs::read_to_string(path) else {
        return (0, 0);
    };
    let mut corrected = 0;
    let mut uncorrected = 0;
    // Only complete lines, as for delivery.
    let complete = text.rsplit_once('\n').map_or("", |(complete, _)| complete);
    for event in complete.lines().filter_map(|line| parse_line(line).ok()) {
        if event.gpu != gpu {
            continue;
        }
        match event.kind {
            EventKind::EccSingleBit => corrected += 1,
            EventKind::EccDoubleBit => uncorrected += 1,
            EventKind::Xid(_) | EventKind::FallenOffBus | EventKind::BackOnBus => {}
        }
    }
    (corrected, uncorrected)
}

/// Whether the events file has GPU `gpu` lost: its last `fallen_off_bus` or `back_on_bus`
/// line decides; `None` when it has neither (the description decides).
pub(crate) fn lost_state(path: &Path, gpu: u32) -> Option<bool> {
    let text = std::fs::read_to_string(path).ok()?;
    let complete = text.rsplit_once('\n').map_or("", |(complete, _)| complete);
    complete.lines().filter_map(|line| parse_line(line).ok()).filter(|event| event.gpu == gpu).fold(
        None,
        |state, event| match event.kind {
            EventKind::FallenOffBus => Some(true),
            EventKind::BackOnBus => Some(false),
            _ => state,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_complete_lines_after_the_cursor() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("events.jsonl");
        std::fs::write(
            &path,
            "{\"gpu\": 0, \"kind\": \"xid\", \"value\": 13}\n\
             not json\n\
             {\"gpu\": 1, \"kind\": \"ecc_double_bit\"}\n\
             {\"gpu\": 1, \"kind\": \"xid\", \"value\": 79}\n\
             {\"gpu\": 1, \"kind\": \"xid\"",
        )
        .expect("write");
        let (cursor, first) = next_event(&path, 0, |_| true).expect("reads");
        assert_eq!(first.map(|event| event.kind), Some(EventKind::Xid(13)));
        let (cursor, second) =
            next_event(&path, cursor, |event| event.gpu == 1 && event.kind.data() == 79).expect("reads");
        assert_eq!(second.map(|event| event.kind), Some(EventKind::Xid(79)));
        let (end, none) = next_event(&path, cursor, |_| true).expect("reads");
        assert_eq!((end, none), (cursor, None));
        assert_eq!(ecc_counts(&path, 1), (0, 1));
        assert_eq!(ecc_counts(&path, 0), (0, 0));
    }

    #[test]
    fn the_last_bus_line_decides_whether_a_gpu_is_lost() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("events.jsonl");
        std::fs::write(&path, "{\"gpu\": 3, \"kind\": \"fallen_off_bus\"}\n").expect("write");
        assert_eq!(lost_state(&path, 3), Some(true));
        assert_eq!(lost_state(&path, 2), None);
        let (_, event) = next_event(&path, 0, |_| true).expect("reads");
        assert_eq!(event.map(|event| (event.kind.nvml_type() != 0, event.kind.data())), Some((true, 79)));
        std::fs::write(&path, "{\"gpu\": 3, \"kind\": \"fallen_off_bus\"}\n{\"gpu\": 3, \"kind\": \"back_on_bus\"}\n")
            .expect("write");
        assert_eq!(lost_state(&path, 3), Some(false));
    }
}
