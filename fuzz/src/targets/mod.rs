//! One target per kind of input Allot reads from outside, each run through the
//! production code that reads it.

pub mod extender;
pub mod hwloc;
pub mod sim;
pub mod teams;
pub mod wire;

use std::fmt;
use std::path::Path;

use crate::engine::Target;

/// Every target, in the order `allot-fuzz list` shows them.
pub static TARGETS: &[Target] =
    &[wire::REGISTER, wire::ALLOCATION, teams::TARGET, sim::TARGET, hwloc::TARGET, extender::TARGET];

/// The target of that name.
pub fn find(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|target| target.name == name)
}

/// The message of a rejection. An error without one tells its reader nothing,
/// so it panics, and the fuzzer reports the input.
pub fn message_of(error: impl fmt::Display + fmt::Debug) -> String {
    let message = error.to_string();
    assert!(!message.trim().is_empty(), "a rejection with an empty message: {error:?}");
    message
}

/// Corpus files that are inputs as they are.
fn as_is(_path: &Path, bytes: Vec<u8>) -> Result<Vec<u8>, String> {
    Ok(bytes)
}

/// Text from bytes as a file reader would see it: invalid UTF-8 is replaced,
/// so the mutations keep reaching the parser (`read_to_string` would refuse the
/// file before it, with a message of its own).
fn text(input: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(input)
}
