//! Harness of the fault-injection test (`tests/faults.rs`, issue 17 item 5):
//! a three-member etcd cluster, two brokers, node daemons and concurrent
//! clients on loopback, the faults injected into them, and the checks made
//! afterwards against etcd's history and every client's log.
//!
//! - [`proxy`]: a TCP proxy that can stall or reset what passes (a broker cut
//!   off from etcd; the front door node daemons dial).
//! - [`system`]: the processes, who leads, and each kind of fault.
//! - [`clients`]: the workload: creates with request ids and releases, every
//!   answer logged.
//! - [`history`]: the invariants, checked over etcd's history from revision 1
//!   and the clients' logs.

pub mod clients;
pub mod history;
pub mod proxy;
pub mod system;

use std::fmt;
use std::net::SocketAddr;

/// A seeded generator (placement's SplitMix64) with the draws the fault test
/// makes: the schedule and the workload take their seed as an argument, so a
/// run's choices can be repeated.
#[derive(Debug, Clone)]
pub struct Rng(allot_placement::packing::SplitMix64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(allot_placement::packing::SplitMix64::new(seed))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// A number in `low..=high`.
    pub fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next_u64() % (high - low + 1)
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }

    /// One of `items` (which must not be empty).
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.next_u64() as usize % items.len()]
    }
}

/// The broker that holds the leader key now, as the harness sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderInfo {
    /// The leader key's value (`host:pid:started-ms`).
    pub identity: String,
    pub pid: u32,
    /// The harness's name for the process, like `broker-b-3`.
    pub name: String,
    /// Its gRPC address, once it has written its ready file.
    pub grpc: Option<SocketAddr>,
    /// What clients dial (`http://` or `https://` and the address), from the same file.
    pub url: Option<String>,
}

/// The process id in a broker's leader identity (`host:pid:started-ms`).
pub fn identity_pid(identity: &str) -> Option<u32> {
    let mut parts = identity.rsplitn(3, ':');
    let _started = parts.next()?;
    let pid = parts.next()?;
    let _host = parts.next()?;
    pid.parse().ok()
}

/// What an allocation holds, in a form both the wire and the store reduce to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub node: String,
    /// Sorted.
    pub gpus: Vec<GpuHold>,
    /// Sorted core indices.
    pub cores: Vec<u32>,
}

/// One GPU of a grant: whole, a MIG slot range (start, size) or a share (milli-GPU, MiB).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GpuHold {
    pub index: u32,
    pub mig: Option<(u32, u32)>,
    pub share: Option<(u32, u64)>,
}

impl Grant {
    pub fn from_binding(binding: &allot_api::allocation::Binding) -> Grant {
        let mut gpus: Vec<GpuHold> = binding
            .gpus
            .iter()
            .map(|gpu| GpuHold {
                index: gpu.index,
                mig: gpu.mig.as_ref().map(|mig| (mig.start, mig.size)),
                share: gpu.share.as_ref().map(|share| (share.compute.0, share.memory.0)),
            })
            .collect();
        gpus.sort();
        let mut cores = binding.cores.clone();
        cores.sort_unstable();
        Grant { node: binding.node.to_string(), gpus, cores }
    }
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} gpus [", self.node)?;
        for (position, gpu) in self.gpus.iter().enumerate() {
            if position > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{}", gpu.index)?;
            if let Some((start, size)) = gpu.mig {
                write!(f, "/mig {start}+{size}")?;
            }
            if let Some((milli, memory)) = gpu.share {
                write!(f, "/share {milli}m {memory}MiB")?;
            }
        }
        write!(f, "] {} cores", self.cores.len())
    }
}

/// The invariants the test checks; each violation names one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Invariant {
    /// No GPU, MIG slot, share capacity or core granted twice at any revision.
    CapacityGrantedTwice,
    /// Every acknowledged allocation is stored, as acknowledged, and live
    /// unless its client released it.
    AcknowledgedAllocationKept,
    /// No allocation is live that no client holds: none a client never heard
    /// of, none whose create was refused, none whose release was acknowledged.
    NoUnknownAllocationLive,
    /// A request id makes at most one allocation; an allocation keeps its
    /// request and its place.
    OneAllocationPerRequest,
    /// Only the broker holding the leader key writes, and a broker that lost
    /// it stops.
    StaleLeaderNeverWrote,
    /// Every request got a definitive answer once the faults stopped.
    EveryRequestAnswered,
}

impl fmt::Display for Invariant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Invariant::CapacityGrantedTwice => "capacity granted twice",
            Invariant::AcknowledgedAllocationKept => "acknowledged allocation lost or changed",
            Invariant::NoUnknownAllocationLive => "allocation live that no client holds",
            Invariant::OneAllocationPerRequest => "request id or allocation id reused",
            Invariant::StaleLeaderNeverWrote => "stale leader wrote",
            Invariant::EveryRequestAnswered => "request never answered",
        })
    }
}

/// One broken invariant, with the evidence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub invariant: Invariant,
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.invariant, self.detail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_name_their_process() {
        assert_eq!(identity_pid("host:4242:1700000000000"), Some(4242));
        assert_eq!(identity_pid("4242:1700000000000"), None);
        assert_eq!(identity_pid("host:x:1"), None);
    }

    #[test]
    fn the_generator_repeats_for_a_seed_and_stays_in_range() {
        let (mut one, mut two) = (Rng::new(7), Rng::new(7));
        for _ in 0..100 {
            let value = one.between(3, 5);
            assert_eq!(value, two.between(3, 5));
            assert!((3..=5).contains(&value));
        }
    }
}
