//! Where the broker's memory goes with 100,000 allocations on 12,500 DGX H100
//! nodes: the heap the loaded state holds, and the parts of it that can be
//! cloned and measured (a clone allocates what the original holds, except what
//! is shared by reference count). The rest is the state's indexes.
//!
//! Run: `cargo run --release -p allot-tests --example state_heap`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

#[path = "common/seed.rs"]
mod seed;

/// The system allocator, counting the bytes held.
struct Counting;

static HELD: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let held = HELD.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(held, Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        HELD.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(pointer, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn held() -> usize {
    HELD.load(Ordering::Relaxed)
}

/// The heap a clone of `value` allocates.
fn heap_of<T: Clone>(value: &T) -> usize {
    let before = held();
    let copy = value.clone();
    let size = held() - before;
    drop(copy);
    size
}

fn mib(bytes: usize) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    runtime.block_on(async {
        let store = allot_store::EmbeddedStore::open(dir.path()).await.expect("embedded store");
        seed::seed(&store, &seed::inventory(), 100_000, true).await;
        let before = held();
        PEAK.store(before, Ordering::Relaxed);
        let state = allot_broker::writer::load(&store).await.expect("load");
        let total = held() - before;
        let peak = PEAK.load(Ordering::Relaxed) - before;
        let nodes = heap_of(state.nodes());
        let allocations = heap_of(&state.allocations);
        let usage = heap_of(&state.usage);
        let history = heap_of(&state.history);
        let parts = [nodes, allocations, usage, history];
        println!("| part | heap |");
        println!("|---|---:|");
        println!("| the loaded state, 12,500 nodes and 100,000 allocations | {} |", mib(total));
        println!("| peak while loading | {} |", mib(peak));
        println!("| nodes (inventories not shared with their template, usage, status) | {} |", mib(nodes));
        println!("| allocations | {} |", mib(allocations));
        println!("| usage history recorder | {} |", mib(usage));
        println!("| decayed usage per team | {} |", mib(history));
        println!(
            "| the rest: indexes (placement, per node, per team, charges, request ids, finished) | {} |",
            mib(total.saturating_sub(parts.iter().sum()))
        );
        let one = state.allocations.values().next().expect("an allocation");
        println!("| one allocation | {} bytes |", heap_of(one) + std::mem::size_of_val(one));
    });
}
