//! allot-sim: replays task traces against a cluster with the placement policies of
//! `allot-placement` (the same scoring functions the broker runs), following the
//! published protocol of the FGD paper on Alibaba's GPU-sharing trace, and writes
//! the allocation and fragmentation curves, a summary and a plot.
//!
//! Layout: [`trace`] reads node and task lists; [`protocol`] replays one list with
//! one policy and seed; [`batch`] runs many (policy, seed) pairs on threads;
//! [`report`] aggregates over seeds and writes JSON, CSV and SVG; [`generate`]
//! makes task lists of the same family with other mixes, seeded. [`capacity`]
//! writes the capacity report from a broker's usage history, and [`size`] is the
//! procurement sizing tool.

pub mod batch;
pub mod capacity;
pub mod cli;
pub mod generate;
pub mod output;
pub mod protocol;
pub mod report;
pub mod size;
pub mod trace;

use std::path::{Path, PathBuf};

/// What went wrong, with the file, line and field where it applies.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("{}:{line}: {message}", path.display())]
    Input { path: PathBuf, line: usize, message: String },
    #[error("cannot read {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("cannot write {}: {source}", path.display())]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Usage(String),
}

impl SimError {
    pub(crate) fn at(path: &Path, line: usize, message: impl Into<String>) -> SimError {
        SimError::Input { path: path.to_owned(), line, message: message.into() }
    }
}
