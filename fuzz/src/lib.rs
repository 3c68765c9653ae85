//! allot-fuzz: a small mutational fuzzer on stable Rust for everything Allot
//! reads from outside, run through the production code that reads it.
//!
//! [`engine`] is the loop (corpus replay, seeded mutation, `catch_unwind`, a
//! watchdog for hangs, artifacts; [`isolate`] forks a child per input for targets
//! that call C); [`mutate`], [`protobuf`] and [`json`] make the
//! inputs; [`targets`] holds one target per kind of input. The property is the
//! same everywhere: no panic, no hang, and every rejection is an error with a
//! message.

pub mod engine;
pub mod isolate;
pub mod json;
pub mod mutate;
pub mod protobuf;
pub mod rng;
pub mod targets;

pub use engine::{Budget, Config, Crash, CrashKind, Report, Target, fuzz};
pub use targets::TARGETS;
