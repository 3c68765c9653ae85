//! Allot's API crate: the protobuf wire contract (package `allot.v1`) and the shared
//! domain types that clients, the broker and the node daemon all speak.
//!
//! Domain types are plain Rust ([`topology`], [`units`]); protobuf appears only in
//! [`wire`], which converts between the two at the edge and validates what arrives.

pub mod allocation;
pub mod bearer;
pub mod shutdown;
pub mod tls;
pub mod topology;
pub mod units;
pub mod wire;

/// Generated protobuf types of package `allot.v1`. Prefer the domain types in
/// [`topology`]; these exist for the wire and are converted in [`wire`].
pub mod proto {
    #![allow(missing_docs, missing_debug_implementations, clippy::all)]
    include!(concat!(env!("OUT_DIR"), "/allot.v1.rs"));
}
