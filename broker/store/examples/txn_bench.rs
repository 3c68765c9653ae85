//! Store-level baseline: compare-and-swap transactions per second, one client vs many, on etcd and the embedded store.
//!
//! ```sh
//! cargo run --release -p allot-store --features testing --example txn_bench -- [--seconds 3] [--clients 32]
//! ```
//!
//! Starts a real etcd with the test harness (data in `$TMPDIR`) and an embedded
//! store in a temporary directory on the same disk. For each backend it runs,
//! for `--seconds` each:
//! - **sequential**: one client, compare-and-swap on one key, each transaction
//!   waiting for the previous one (every one costs a durable commit);
//! - **concurrent**: `--clients` tasks, each doing the same on its own key
//!   (what group commit, in etcd's raft log or the embedded writer, can batch);
//! - **contended**: `--clients` tasks incrementing one shared counter by
//!   read + compare-and-swap, counting the increments that won.
//!
//! It prints transactions per second and the ratios between the modes and the
//! backends. Every durable write costs an fsync, so the numbers depend on the
//! disk; compare runs on the same machine only.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use allot_store::testing::EtcdHarness;
use allot_store::{Compare, EmbeddedStore, Op, Revision, Store, StoreError, Txn};

struct Options {
    seconds: u64,
    clients: usize,
}

fn options() -> Result<Options, String> {
    let mut options = Options { seconds: 3, clients: 32 };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next().and_then(|value| value.parse::<u64>().ok()).ok_or(format!("{name} needs a number"))
        };
        match arg.as_str() {
            "--seconds" => options.seconds = value("--seconds")?,
            "--clients" => options.clients = usize::try_from(value("--clients")?).map_err(|e| e.to_string())?,
            other => return Err(format!("unknown argument {other}; use --seconds N --clients N")),
        }
    }
    Ok(options)
}

/// Transactions per second of each mode, for one backend.
struct Rates {
    sequential: f64,
    concurrent: f64,
    contended: f64,
    contended_attempts: f64,
}

/// One client: compare-and-swap on `key` until the time is up. Returns the
/// number of transactions.
async fn cas_loop(store: Arc<dyn Store>, key: String, until: Instant) -> Result<u64, StoreError> {
    let mut last = Revision::ZERO;
    let mut done = 0;
    while Instant::now() < until {
        let txn = Txn::new()
            .when([Compare::mod_revision(key.as_str(), allot_store::CompareOp::Equal, last)])
            .then([Op::put(key.as_str(), done.to_string())]);
        let result = store.txn(txn).await?;
        if !result.succeeded {
            return Err(StoreError::InvalidTxn { reason: format!("{key} changed under its only writer") });
        }
        last = result.revision;
        done += 1;
    }
    Ok(done)
}

/// One of many clients incrementing a shared counter. Counts wins and attempts.
async fn increment_loop(
    store: Arc<dyn Store>,
    until: Instant,
    wins: Arc<AtomicU64>,
    attempts: Arc<AtomicU64>,
) -> Result<(), StoreError> {
    let key = "/bench/counter";
    while Instant::now() < until {
        let current = store.get(key).await?;
        let (compare, value) = match &current {
            Some(kv) => (Compare::unchanged(kv), String::from_utf8_lossy(&kv.value).parse::<u64>().unwrap_or(0)),
            None => (Compare::absent(key), 0),
        };
        let result = store.txn(Txn::new().when([compare]).then([Op::put(key, (value + 1).to_string())])).await?;
        attempts.fetch_add(1, Ordering::Relaxed);
        if result.succeeded {
            wins.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(())
}

async fn measure(store: Arc<dyn Store>, name: &str, options: &Options) -> Result<Rates, StoreError> {
    let period = Duration::from_secs(options.seconds);
    let per_second = |count: u64, elapsed: Duration| count as f64 / elapsed.as_secs_f64();

    let started = Instant::now();
    let sequential = cas_loop(Arc::clone(&store), format!("/bench/{name}/sequential"), started + period).await?;
    let sequential = per_second(sequential, started.elapsed());

    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for client in 0..options.clients {
        tasks.spawn(cas_loop(Arc::clone(&store), format!("/bench/{name}/client-{client:02}"), started + period));
    }
    let mut concurrent = 0;
    while let Some(done) = tasks.join_next().await {
        concurrent += done.map_err(|error| StoreError::InvalidTxn { reason: error.to_string() })??;
    }
    let concurrent = per_second(concurrent, started.elapsed());

    let (wins, attempts) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..options.clients {
        tasks.spawn(increment_loop(Arc::clone(&store), started + period, Arc::clone(&wins), Arc::clone(&attempts)));
    }
    while let Some(done) = tasks.join_next().await {
        done.map_err(|error| StoreError::InvalidTxn { reason: error.to_string() })??;
    }
    let elapsed = started.elapsed();
    Ok(Rates {
        sequential,
        concurrent,
        contended: per_second(wins.load(Ordering::Relaxed), elapsed),
        contended_attempts: per_second(attempts.load(Ordering::Relaxed), elapsed),
    })
}

fn print(name: &str, rates: &Rates, clients: usize) {
    println!("{name:<9} sequential, 1 client            {:>9.0} txn/s", rates.sequential);
    println!(
        "{name:<9} concurrent, {clients} clients, own keys {:>9.0} txn/s   x{:.1} sequential",
        rates.concurrent,
        rates.concurrent / rates.sequential
    );
    println!(
        "{name:<9} contended, {clients} clients, one key   {:>9.0} increments/s ({:.0} CAS attempts/s)",
        rates.contended, rates.contended_attempts
    );
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let options = options()?;
    println!("{} s per mode, {} clients; data in {}", options.seconds, options.clients, std::env::temp_dir().display());

    let etcd = EtcdHarness::start().await;
    let etcd_rates = measure(Arc::new(etcd.store().await), "etcd", &options).await?;
    drop(etcd);

    let dir = tempfile::tempdir()?;
    let embedded = EmbeddedStore::open(dir.path()).await?;
    let embedded_rates = measure(Arc::new(embedded.clone()), "embedded", &options).await?;
    let stats = embedded.write_stats();

    println!();
    print("etcd", &etcd_rates, options.clients);
    print("embedded", &embedded_rates, options.clients);
    println!(
        "embedded group commit: {} requests in {} commits (average batch {:.1}, largest {})",
        stats.requests,
        stats.commits,
        stats.requests as f64 / stats.commits.max(1) as f64,
        stats.largest_batch
    );
    println!(
        "embedded / etcd: sequential x{:.1}, concurrent x{:.1}, contended x{:.1}",
        embedded_rates.sequential / etcd_rates.sequential,
        embedded_rates.concurrent / etcd_rates.concurrent,
        embedded_rates.contended / etcd_rates.contended
    );
    Ok(())
}
