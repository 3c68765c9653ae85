//! The fuzzing loop: replays a target's corpus, then mutates inputs from a pool
//! (the corpus plus every input that produced an outcome not seen before) for a
//! number of iterations or a time, seeded so a run replays. Each input runs under
//! `catch_unwind` on a worker thread while the calling thread watches the clock:
//! a panic, an input that runs past the target's time limit, or a rejection with
//! an empty message is a crash, saved under `artifacts/<target>/`. What kills the
//! process outright (a segmentation fault in C code, a stack overflow) cannot be
//! caught: each input is written to `in-progress-<pid>` there first, so the input
//! survives the process, and a parent ([`keep_in_progress`]) can name it.

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::fmt;
use std::fs::File;
use std::io::{Seek, Write};
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Once, PoisonError, mpsc};
use std::time::{Duration, Instant};

use crate::isolate::{self, Forked};
use crate::mutate;
use crate::rng::Rng;

/// What one input did: accepted, with a short description of what it was (inputs
/// with a description not seen before join the pool), or rejected with the
/// error's message.
pub type Outcome = Result<String, String>;

/// A mutator that knows an input's structure: the input and the dictionary in,
/// a mutated input out (None when the input does not have that structure).
pub type StructuredMutator = fn(&mut Rng, &[u8], &[&str]) -> Option<Vec<u8>>;

/// One kind of input and the production code that reads it.
#[derive(Debug)]
pub struct Target {
    pub name: &'static str,
    pub summary: &'static str,
    /// Runs one input through the production code. A panic is a crash; so is an
    /// `Err` with an empty message.
    pub run: fn(&[u8]) -> Outcome,
    /// A mutator that knows the input's structure, used for half of the
    /// mutations; None when byte and text mutations are all there is.
    pub structured: Option<StructuredMutator>,
    /// Tokens the parser cares about, inserted by the mutations.
    pub dictionary: &'static [&'static str],
    /// Mutated inputs are cut to this length.
    pub max_len: usize,
    /// Longer than this for one input, in a release build, is a hang (debug
    /// builds get five times as long).
    pub time_limit: Duration,
    /// Turns a corpus file into an input (the wire targets keep readable JSON seeds).
    pub load: fn(&Path, Vec<u8>) -> Result<Vec<u8>, String>,
    /// Run each input in a forked child process (`isolate`): for production code
    /// that calls C, which can end a process without a panic.
    pub isolate: bool,
    /// Text in a killed child's output that marks an abort only debug builds
    /// make: not a finding in a debug build, counted apart.
    pub debug_only_aborts: &'static [&'static str],
    /// A file the target writes in the process that runs an input (named by that
    /// process's id) and removes when the input is done; removed by the parent
    /// when an isolated child is killed before it could.
    pub scratch: Option<fn(u32) -> PathBuf>,
}

/// How long a run goes on, not counting the corpus replay.
#[derive(Debug, Clone, Copy)]
pub enum Budget {
    Iterations(u64),
    Time(Duration),
}

#[derive(Debug, Clone)]
pub struct Config {
    pub seed: u64,
    pub budget: Budget,
    /// Crashing inputs go to `<artifacts>/<target>/`.
    pub artifacts: PathBuf,
    /// Print progress to stderr every few seconds.
    pub progress: bool,
    /// Overrides the target's time limit (to find what is merely slow).
    pub time_limit: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashKind {
    Panic,
    Hang,
    EmptyMessage,
    /// A signal ended the (isolated) child running the input.
    Killed,
}

impl CrashKind {
    fn prefix(self) -> &'static str {
        match self {
            CrashKind::Panic => "crash",
            CrashKind::Hang => "hang",
            CrashKind::EmptyMessage => "empty-message",
            CrashKind::Killed => "killed",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Crash {
    pub kind: CrashKind,
    pub message: String,
    /// Where the input was saved; None when it could not be (the message says why).
    pub artifact: Option<PathBuf>,
}

impl fmt::Display for Crash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            CrashKind::Panic => "panic",
            CrashKind::Hang => "hang",
            CrashKind::EmptyMessage => "rejection with an empty message",
            CrashKind::Killed => "process killed",
        };
        write!(f, "{what}: {}", self.message)?;
        if let Some(path) = &self.artifact {
            write!(f, "\n  input saved to {}", path.display())?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Default)]
pub struct Report {
    pub target: &'static str,
    pub executions: u64,
    pub accepted: u64,
    pub rejected: u64,
    /// Inputs in the pool at the end: the corpus plus those that did something new.
    pub pool: usize,
    pub elapsed: Duration,
    pub slowest: Duration,
    /// One per distinct place (panic location or message); repeats are only counted.
    pub crashes: Vec<Crash>,
    pub repeated_crashes: u64,
    /// Isolated inputs that failed a check only debug builds make.
    pub debug_only_aborts: u64,
}

impl Report {
    /// The counts, on one line.
    pub fn line(&self) -> String {
        let per_second = self.executions as f64 / self.elapsed.as_secs_f64().max(1e-9);
        let mut line = format!(
            "{}: {} runs in {:.1} s ({per_second:.0}/s), {} accepted, {} rejected, pool {}, slowest {:?}, {} crashes",
            self.target,
            self.executions,
            self.elapsed.as_secs_f64(),
            self.accepted,
            self.rejected,
            self.pool,
            self.slowest,
            self.crashes.len()
        );
        if self.debug_only_aborts > 0 {
            line.push_str(&format!(", {} aborts in checks only debug builds make", self.debug_only_aborts));
        }
        line
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.line())?;
        for crash in &self.crashes {
            write!(f, "\n{crash}")?;
        }
        Ok(())
    }
}

/// Accepted and rejected inputs kept for mutation (each), beyond the corpus.
const MAX_POOL: usize = 256;
/// A run stops after this many distinct crashes.
const MAX_CRASHES: usize = 20;
/// The main thread's stack: the depth the production code gets in allotctl and
/// allot-node (tokio's workers have less, but run release builds).
const WORKER_STACK: usize = 8 << 20;

/// The repository's corpus for a target.
pub fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus").join(target)
}

/// Where crashing inputs go by default.
pub fn artifacts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("artifacts")
}

/// Where a process fuzzing `target` writes the input it is running.
pub fn in_progress_path(artifacts: &Path, target: &str, pid: u32) -> PathBuf {
    artifacts.join(target).join(format!("in-progress-{pid}"))
}

/// After process `pid` died fuzzing `target`: its last input, renamed to
/// `died-<hash>` so that it is kept, or None when it left none.
pub fn keep_in_progress(artifacts: &Path, target: &str, pid: u32) -> Option<PathBuf> {
    let path = in_progress_path(artifacts, target, pid);
    let input = std::fs::read(&path).ok()?;
    let kept = artifacts.join(target).join(format!("died-{:016x}", fnv1a(&input)));
    std::fs::rename(&path, &kept).ok()?;
    Some(kept)
}

/// The corpus files of a target, in name order, as inputs.
pub fn load_corpus(target: &Target) -> Result<Vec<(PathBuf, Vec<u8>)>, String> {
    let directory = corpus_dir(target.name);
    let entries =
        std::fs::read_dir(&directory).map_err(|error| format!("cannot read {}: {error}", directory.display()))?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.is_file() && !path.file_name().is_some_and(|name| name.to_string_lossy().starts_with('.')))
        .collect();
    paths.sort();
    let mut corpus = Vec::new();
    for path in paths {
        let bytes = std::fs::read(&path).map_err(|error| format!("cannot read {}: {error}", path.display()))?;
        let input = (target.load)(&path, bytes).map_err(|error| format!("{}: {error}", path.display()))?;
        corpus.push((path, input));
    }
    if corpus.is_empty() {
        return Err(format!("{} holds no seed inputs", directory.display()));
    }
    Ok(corpus)
}

/// The time one input may take in this build.
pub fn time_limit(target: &Target) -> Duration {
    if cfg!(debug_assertions) { target.time_limit * 5 } else { target.time_limit }
}

/// What the worker is running now, for the watchdog.
#[derive(Debug)]
struct Running {
    since: Instant,
    input: Vec<u8>,
    /// The child process running it, for an isolated target.
    child: Option<i32>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Fuzzes one target: its corpus unchanged, then mutations within the budget.
/// Crashes are in the report (and saved); the error is for a corpus that cannot
/// be read or a worker that could not start.
pub fn fuzz(target: &'static Target, config: &Config) -> Result<Report, String> {
    install_panic_hook();
    let corpus = load_corpus(target)?;
    let running: Arc<Mutex<Option<Running>>> = Arc::default();
    let executions = Arc::new(AtomicU64::new(0));
    let (sender, receiver) = mpsc::channel();
    let worker = {
        let (config, running, executions) = (config.clone(), running.clone(), executions.clone());
        move || {
            let report = Session::new(target, &config, &running, &executions).run(corpus);
            // After a hang the watchdog has stopped listening; nobody wants this report.
            sender.send(report).ok();
        }
    };
    std::thread::Builder::new()
        .name(format!("fuzz-{}", target.name))
        .stack_size(WORKER_STACK)
        .spawn(worker)
        .map_err(|error| format!("cannot start the fuzzing thread: {error}"))?;
    let limit = config.time_limit.unwrap_or_else(|| time_limit(target));
    let started = Instant::now();
    loop {
        match receiver.recv_timeout(Duration::from_millis(50)) {
            Ok(report) => return Ok(report),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(format!("{}: the fuzzing thread ended without a report", target.name));
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                // An isolated input's child is killed under the lock, before the
                // worker can wait for it (so its pid is still its own); an input
                // running here cannot be stopped, and is left behind (the binary exits).
                let hung = lock(&running).as_ref().filter(|now| now.since.elapsed() > limit).map(|now| {
                    if let Some(pid) = now.child {
                        isolate::kill(pid);
                    }
                    now.input.clone()
                });
                if let Some(input) = hung {
                    let crash =
                        save(config, target, CrashKind::Hang, format!("one input ran for more than {limit:?}"), &input);
                    std::fs::remove_file(in_progress_path(&config.artifacts, target.name, std::process::id())).ok();
                    return Ok(Report {
                        target: target.name,
                        executions: executions.load(Ordering::Relaxed),
                        elapsed: started.elapsed(),
                        slowest: limit,
                        crashes: vec![crash],
                        ..Report::default()
                    });
                }
            }
        }
    }
}

/// Runs inputs one at a time and keeps the pool; lives on the worker thread.
struct Session<'a> {
    target: &'static Target,
    config: &'a Config,
    running: &'a Mutex<Option<Running>>,
    executions: &'a AtomicU64,
    /// The corpus, then inputs that were accepted in a way not seen before, then
    /// inputs rejected in a way not seen before (see [`Session::parent`]).
    corpus: Vec<Vec<u8>>,
    accepted: Vec<Vec<u8>>,
    rejected: Vec<Vec<u8>>,
    outcomes: HashSet<String>,
    crash_places: HashSet<String>,
    report: Report,
    /// The input being run, on disk (see [`in_progress_path`]).
    in_progress: Option<(PathBuf, File)>,
}

enum Ran {
    Finished(Outcome),
    Panicked { message: String, place: String },
    Killed { signal: i32, output: String },
}

impl<'a> Session<'a> {
    fn new(
        target: &'static Target,
        config: &'a Config,
        running: &'a Mutex<Option<Running>>,
        executions: &'a AtomicU64,
    ) -> Self {
        Session {
            target,
            config,
            running,
            executions,
            corpus: Vec::new(),
            accepted: Vec::new(),
            rejected: Vec::new(),
            outcomes: HashSet::new(),
            crash_places: HashSet::new(),
            report: Report { target: target.name, ..Report::default() },
            in_progress: None,
        }
    }

    fn open_in_progress(&mut self) {
        let path = in_progress_path(&self.config.artifacts, self.target.name, std::process::id());
        let opened = path.parent().map_or(Ok(()), std::fs::create_dir_all).and_then(|()| File::create(&path));
        match opened {
            Ok(file) => self.in_progress = Some((path, file)),
            Err(error) => eprintln!(
                "{}: cannot write {} ({error}); an input that kills the process will not be saved",
                self.target.name,
                path.display()
            ),
        }
    }

    fn write_in_progress(&mut self, input: &[u8]) {
        if let Some((_, file)) = &mut self.in_progress {
            let written = file.set_len(0).and_then(|()| file.rewind()).and_then(|()| file.write_all(input));
            if written.is_err() {
                self.in_progress = None;
            }
        }
    }

    fn run(mut self, corpus: Vec<(PathBuf, Vec<u8>)>) -> Report {
        let started = Instant::now();
        self.open_in_progress();
        let mut rng = Rng::new(self.config.seed ^ fnv1a(self.target.name.as_bytes()));
        // The corpus first, unchanged: inputs that crashed before are regression tests.
        for (_, input) in &corpus {
            self.step(input);
        }
        self.corpus = corpus.into_iter().map(|(_, input)| input).collect();
        let mut done = 0u64;
        let mut last_progress = Instant::now();
        while self.report.crashes.len() < MAX_CRASHES {
            let more = match self.config.budget {
                Budget::Iterations(count) => done < count,
                Budget::Time(duration) => started.elapsed() < duration,
            };
            if !more {
                break;
            }
            let parent = self.parent(&mut rng);
            let child = self.mutate(&mut rng, parent);
            self.step(&child);
            done += 1;
            if self.config.progress && last_progress.elapsed() > Duration::from_secs(5) {
                last_progress = Instant::now();
                self.report.elapsed = started.elapsed();
                self.report.pool = self.pool_size();
                eprintln!("{}", self.report.line());
            }
        }
        self.report.elapsed = started.elapsed();
        self.report.pool = self.pool_size();
        if let Some((path, file)) = self.in_progress.take() {
            drop(file);
            std::fs::remove_file(path).ok();
        }
        self.report
    }

    fn pool_size(&self) -> usize {
        self.corpus.len() + self.accepted.len() + self.rejected.len()
    }

    /// The input to mutate next. Inputs rejected in new ways soon outnumber the
    /// rest (every new parse error is one), yet the seeds and the accepted inputs
    /// lead deeper: they are chosen most of the time.
    fn parent(&self, rng: &mut Rng) -> &[u8] {
        let roll = rng.below(10);
        if roll < 2 && !self.rejected.is_empty() {
            rng.pick(&self.rejected).as_slice()
        } else if roll < 6 && !self.accepted.is_empty() {
            rng.pick(&self.accepted).as_slice()
        } else {
            rng.pick(&self.corpus).as_slice()
        }
    }

    fn mutate(&self, rng: &mut Rng, parent: &[u8]) -> Vec<u8> {
        if let Some(structured) = self.target.structured
            && rng.chance(1, 2)
            && let Some(child) = structured(rng, parent, self.target.dictionary)
            && child.len() <= self.target.max_len
        {
            return child;
        }
        let others = if rng.chance(1, 2) { &self.corpus } else { &self.accepted };
        mutate::havoc(rng, parent, others, self.target.dictionary, self.target.max_len)
    }

    fn step(&mut self, input: &[u8]) {
        self.write_in_progress(input);
        let began = Instant::now();
        *lock(self.running) = Some(Running { since: began, input: input.to_vec(), child: None });
        let ran = if self.target.isolate { self.run_isolated(input) } else { run_one(self.target, input) };
        *lock(self.running) = None;
        self.executions.fetch_add(1, Ordering::Relaxed);
        self.report.executions += 1;
        self.report.slowest = self.report.slowest.max(began.elapsed());
        match ran {
            Ran::Finished(Ok(description)) => {
                self.report.accepted += 1;
                self.learn(format!("accepted {description}"), input, true);
            }
            Ran::Finished(Err(message)) if message.trim().is_empty() => {
                self.crash(CrashKind::EmptyMessage, "the input was rejected with an empty message".into(), None, input);
            }
            Ran::Finished(Err(message)) => {
                self.report.rejected += 1;
                self.learn(format!("rejected {}", shape_of(&message)), input, false);
            }
            Ran::Panicked { message, place } => self.crash(CrashKind::Panic, message, Some(place), input),
            Ran::Killed { signal, output } => {
                let debug_only = cfg!(debug_assertions)
                    && signal == libc::SIGABRT
                    && self.target.debug_only_aborts.iter().any(|mark| output.contains(mark));
                if debug_only {
                    self.report.debug_only_aborts += 1;
                    return;
                }
                // The last lines say why (an assertion, hwloc's own message).
                let lines: Vec<&str> = output.lines().filter(|line| !line.trim().is_empty()).collect();
                let why = lines[lines.len().saturating_sub(3)..].join("\n  ");
                let place = format!("signal {signal}: {}", lines.last().map_or(String::new(), |line| shape_of(line)));
                self.crash(CrashKind::Killed, format!("killed by signal {signal}\n  {why}"), Some(place), input);
            }
        }
    }

    /// Runs one input in a forked child: what kills it is reported, not fatal.
    fn run_isolated(&self, input: &[u8]) -> Ran {
        let target = self.target;
        let set_child = |child| {
            if let Some(now) = lock(self.running).as_mut() {
                now.child = child;
            }
        };
        let forked_pid = std::cell::Cell::new(None);
        let started = |pid| {
            forked_pid.set(Some(pid));
            set_child(Some(pid));
        };
        let forked = isolate::run(|| encode_ran(run_one(target, input)), started, || set_child(None));
        match forked {
            Forked::Finished { record, .. } => decode_ran(&record),
            Forked::Killed { signal, output } => {
                if let (Some(scratch), Some(pid)) =
                    (target.scratch, forked_pid.get().and_then(|pid| u32::try_from(pid).ok()))
                {
                    std::fs::remove_file(scratch(pid)).ok();
                }
                Ran::Killed { signal, output }
            }
            // No child could run it: run it here, as a target without isolation.
            Forked::Failed(problem) => {
                eprintln!("{}: {problem}; running the input in this process", self.target.name);
                run_one(target, input)
            }
        }
    }

    /// An input that did something not seen before is worth mutating further
    /// (the corpus, replayed first, only records its outcomes).
    fn learn(&mut self, outcome: String, input: &[u8], accepted: bool) {
        let pool = if accepted { &mut self.accepted } else { &mut self.rejected };
        if self.outcomes.insert(outcome) && !self.corpus.is_empty() && pool.len() < MAX_POOL {
            pool.push(input.to_vec());
        }
    }

    fn crash(&mut self, kind: CrashKind, message: String, place: Option<String>, input: &[u8]) {
        let place = place.unwrap_or_else(|| shape_of(&message));
        if !self.crash_places.insert(place) {
            self.report.repeated_crashes += 1;
            return;
        }
        let crash = save(self.config, self.target, kind, message, input);
        eprintln!("{}: {crash}", self.target.name);
        self.report.crashes.push(crash);
    }
}

/// Writes a crashing input to `<artifacts>/<target>/<kind>-<hash>`.
fn save(config: &Config, target: &Target, kind: CrashKind, message: String, input: &[u8]) -> Crash {
    let directory = config.artifacts.join(target.name);
    let path = directory.join(format!("{}-{:016x}", kind.prefix(), fnv1a(input)));
    match std::fs::create_dir_all(&directory).and_then(|()| std::fs::write(&path, input)) {
        Ok(()) => Crash { kind, message, artifact: Some(path) },
        Err(error) => Crash {
            kind,
            message: format!("{message} (the input could not be saved to {}: {error})", path.display()),
            artifact: None,
        },
    }
}

thread_local! {
    /// Whether this thread is running an input: its panics are findings, not test failures.
    static CAPTURING: Cell<bool> = const { Cell::new(false) };
    /// The last panic's message and place on this thread.
    static CAPTURED: RefCell<Option<(String, String)>> = const { RefCell::new(None) };
}

/// A panic hook that keeps the message of panics in inputs quiet and for the
/// report, and leaves every other panic (a failing test's) to the previous hook.
fn install_panic_hook() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if !CAPTURING.with(Cell::get) {
                previous(info);
                return;
            }
            let payload = info.payload();
            let message = payload
                .downcast_ref::<&str>()
                .map(|text| (*text).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".to_owned());
            let place = info.location().map(|at| format!("{}:{}", at.file(), at.line())).unwrap_or_default();
            CAPTURED.with(|captured| *captured.borrow_mut() = Some((message, place)));
        }));
    });
}

fn run_one(target: &Target, input: &[u8]) -> Ran {
    CAPTURED.with(|captured| captured.borrow_mut().take());
    CAPTURING.with(|capturing| capturing.set(true));
    let result = panic::catch_unwind(AssertUnwindSafe(|| (target.run)(input)));
    CAPTURING.with(|capturing| capturing.set(false));
    match result {
        Ok(outcome) => Ran::Finished(outcome),
        Err(_) => {
            let (message, place) = CAPTURED
                .with(|captured| captured.borrow_mut().take())
                .unwrap_or_else(|| ("a panic the hook did not see".to_owned(), String::new()));
            let message = if place.is_empty() { message } else { format!("{message} (at {place})") };
            let place = if place.is_empty() { shape_of(&message) } else { place };
            Ran::Panicked { message, place }
        }
    }
}

/// What a child returns: a tag byte, then the description, message or panic.
fn encode_ran(ran: Ran) -> Vec<u8> {
    let (tag, text) = match ran {
        Ran::Finished(Ok(description)) => ('A', description),
        Ran::Finished(Err(message)) => ('R', message),
        Ran::Panicked { message, place } => ('P', format!("{place}\u{0}{message}")),
        Ran::Killed { signal, output } => ('K', format!("{signal}\u{0}{output}")),
    };
    let mut record = vec![tag as u8];
    record.extend_from_slice(text.as_bytes());
    record
}

fn decode_ran(record: &[u8]) -> Ran {
    let text = String::from_utf8_lossy(record.get(1..).unwrap_or_default()).into_owned();
    let split = |text: &str| text.split_once('\u{0}').map(|(a, b)| (a.to_owned(), b.to_owned()));
    match record.first() {
        Some(b'A') => Ran::Finished(Ok(text)),
        Some(b'R') => Ran::Finished(Err(text)),
        Some(b'P') => {
            let (place, message) = split(&text).unwrap_or_default();
            Ran::Panicked { message, place }
        }
        Some(b'K') => {
            let (signal, output) = split(&text).unwrap_or_default();
            Ran::Killed { signal: signal.parse().unwrap_or(0), output }
        }
        _ => Ran::Killed { signal: 0, output: format!("the child returned an unreadable record: {text}") },
    }
}

/// A message with its particulars (numbers, quoted input) taken out: two inputs
/// with the same shape took the same path through the parser, roughly.
pub fn shape_of(message: &str) -> String {
    let lines: Vec<&str> = message.lines().map(str::trim).filter(|line| !line.is_empty()).collect();
    let shape = |line: &str| {
        let mut out = String::new();
        let mut quoted = false;
        let mut after_digit = false;
        for c in line.chars() {
            if c == '"' || c == '`' {
                quoted = !quoted;
                out.push(c);
                continue;
            }
            if quoted {
                continue;
            }
            if c.is_ascii_digit() {
                if !after_digit {
                    out.push('#');
                }
                after_digit = true;
                continue;
            }
            after_digit = false;
            out.push(c);
            if out.len() > 100 {
                break;
            }
        }
        out
    };
    match (lines.first(), lines.last()) {
        (Some(first), Some(last)) if lines.len() > 1 => format!("{} / {}", shape(first), shape(last)),
        (Some(first), _) => shape(first),
        _ => String::new(),
    }
}

/// FNV-1a: names artifacts by their content, and mixes the target into the seed.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_leave_out_numbers_and_quoted_input() {
        assert_eq!(
            shape_of("gpus[3].pci_bus_id: invalid PCI bus id \"zz\": expected 0000:1b:00.0"),
            "gpus[#].pci_bus_id: invalid PCI bus id \"\": expected #:#b:#.#"
        );
        assert_eq!(
            shape_of("TOML parse error at line 3\n  |\nexpected `=`"),
            "TOML parse error at line # / expected ``"
        );
        assert_eq!(shape_of(""), "");
    }
}
