//! Runs one input in a forked child process, for targets whose production code
//! calls into C (hwloc) that can end a process outright: a segmentation fault or
//! a failed assertion then ends the child, and the parent reports the input and
//! goes on fuzzing.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;

/// What the child did.
#[derive(Debug)]
pub enum Forked {
    /// It ran to the end and returned `record`; `output` is what it printed.
    Finished { record: Vec<u8>, output: String },
    /// A signal ended it; `output` is what it printed first (an assertion's message).
    Killed { signal: i32, output: String },
    /// No child ran, or it exited without a record.
    Failed(String),
}

/// Separates what the child printed from the record it returns.
const MARK: &[u8] = b"\n\x01allot-fuzz record\x01\n";

/// Runs `work` in a child process. The child's stdout and stderr, then the
/// record `work` returns, come back through one pipe, read to its end before the
/// child is waited for (so a child that prints a lot never blocks). `started` is
/// told the child's pid, for the watchdog to kill it on a hang; `ending` is
/// called before the child is waited for, after which its pid may be reused.
pub fn run(work: impl FnOnce() -> Vec<u8>, started: impl FnOnce(i32), ending: impl FnOnce()) -> Forked {
    let (mut reader, writer) = match std::io::pipe() {
        Ok(pipe) => pipe,
        Err(error) => return Forked::Failed(format!("cannot make a pipe: {error}")),
    };
    // SAFETY: fork has no memory-safety preconditions of its own. The child only
    // runs `work` on its copy of this process's memory and leaves through _exit;
    // glibc's malloc works in the child of a multi-threaded parent, and the one
    // other thread (the watchdog) holds no lock that `work` takes.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Forked::Failed(format!("cannot fork: {}", std::io::Error::last_os_error()));
    }
    if pid == 0 {
        drop(reader);
        let fd = writer.as_raw_fd();
        // SAFETY: `fd` is the open write end of the pipe; stdout and stderr become copies of it.
        unsafe {
            libc::dup2(fd, 1);
            libc::dup2(fd, 2);
        }
        let record = work();
        let mut writer = writer;
        writer.write_all(MARK).ok();
        writer.write_all(&record).ok();
        drop(writer);
        // SAFETY: _exit ends the child at once, so no destructor or exit handler
        // of the parent's state runs a second time.
        unsafe { libc::_exit(0) }
    }
    drop(writer);
    started(pid);
    let mut bytes = Vec::new();
    reader.read_to_end(&mut bytes).ok();
    ending();
    let mut status = 0;
    // SAFETY: `pid` is this process's own child, waited for once, into a local.
    let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
    let marked = bytes.windows(MARK.len()).rposition(|window| window == MARK);
    let (output, record) = match marked {
        Some(at) => (&bytes[..at], Some(&bytes[at + MARK.len()..])),
        None => (&bytes[..], None),
    };
    let output = String::from_utf8_lossy(output).into_owned();
    if waited == pid && libc::WIFSIGNALED(status) {
        return Forked::Killed { signal: libc::WTERMSIG(status), output };
    }
    match record {
        Some(record) => Forked::Finished { record: record.to_vec(), output },
        None => Forked::Failed(format!("the child ended (wait status {status}) without a result: {output}")),
    }
}

/// Ends a child that ran too long. Call it only between `started` and `ending`
/// of [`run`] (the engine holds a lock across both), while the pid is the child's.
pub fn kill(pid: i32) {
    // SAFETY: kill has no memory-safety preconditions. `pid` is a child this
    // process forked and has not waited for yet, so it cannot name another process.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes to file descriptor 2 as C code does: the test harness captures
    /// `eprintln!`, and a lock another test thread held at the fork would stay held.
    fn say(text: &str) {
        // SAFETY: writes `text.len()` bytes from a live buffer to a descriptor; a
        // failed write only loses the text.
        unsafe {
            libc::write(2, text.as_ptr().cast(), text.len());
        }
    }

    #[test]
    fn a_child_returns_its_record_and_its_output() {
        let forked = run(
            || {
                say("from the child");
                b"record".to_vec()
            },
            |pid| assert!(pid > 0),
            || {},
        );
        match forked {
            Forked::Finished { record, output } => {
                assert_eq!(record, b"record");
                assert!(output.contains("from the child"), "{output:?}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_child_that_aborts_is_reported_with_its_signal() {
        let forked = run(
            || {
                say("about to abort");
                std::process::abort()
            },
            |_| {},
            || {},
        );
        match forked {
            Forked::Killed { signal, output } => {
                assert_eq!(signal, libc::SIGABRT);
                assert!(output.contains("about to abort"), "{output:?}");
            }
            other => panic!("{other:?}"),
        }
    }
}
