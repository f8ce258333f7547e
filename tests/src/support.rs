//! Small helpers shared by the server and cluster harnesses: locating the
//! Redis binaries, handing out free ports, deadlines and log tails.

use std::collections::HashSet;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often readiness conditions are polled. Short, because a local
/// `redis-server` is usually ready within a few milliseconds and the suite
/// starts many of them.
pub(crate) const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// How many lines of a log file a panic message shows.
const LOG_TAIL_LINES: usize = 40;

/// Finds `name` on `PATH`, or panics with an install hint.
///
/// Looked up by hand rather than left to `Command::spawn` so that a missing
/// binary produces an actionable message instead of a bare "No such file".
pub(crate) fn find_binary(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!("{name} not found: install the redis-server package (make test does this)")
        })
}

/// Ports this process has already handed out. Never released: a server that
/// was killed still "owns" its port because the test may restart it there, so
/// another test in the same binary must not be given it in the meantime.
static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// Returns a loopback port that was free a moment ago.
///
/// The port is found by binding `127.0.0.1:0` and releasing it, so another
/// process may grab it before `redis-server` binds; callers detect that and
/// retry with a new port.
pub(crate) fn free_port() -> u16 {
    loop {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .expect("bind 127.0.0.1:0 to find a free port for redis-server");
        let port = listener
            .local_addr()
            .expect("read the local address of a freshly bound listener")
            .port();
        drop(listener);
        let mut guard = HANDED_OUT
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if guard.get_or_insert_with(HashSet::new).insert(port) {
            return port;
        }
    }
}

/// Marks `port`, bound by a server of the harness (the S3 server, the Kubernetes API), as handed
/// out, so [`free_port`] never offers it to a Redis server while that server is stopped or
/// restarting: a test that checks a stopped server refuses connections would meet a stranger.
pub(crate) fn reserve_port(port: u16) {
    HANDED_OUT
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .get_or_insert_with(HashSet::new)
        .insert(port);
}

/// A point in time after which a wait gives up.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Deadline(Instant);

impl Deadline {
    pub(crate) fn after(limit: Duration) -> Self {
        Deadline(Instant::now() + limit)
    }

    pub(crate) fn passed(self) -> bool {
        Instant::now() >= self.0
    }
}

/// The last lines of a text file from byte `offset` on (to skip output from
/// an earlier run of the same server), or a note saying why it could not be
/// read.
pub(crate) fn tail_from(path: &Path, offset: u64) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let start = usize::try_from(offset)
                .unwrap_or(usize::MAX)
                .min(bytes.len());
            let text = String::from_utf8_lossy(&bytes[start..]);
            let lines: Vec<&str> = text.lines().collect();
            let first = lines.len().saturating_sub(LOG_TAIL_LINES);
            if lines.is_empty() {
                format!("({} is empty)", path.display())
            } else {
                lines[first..].join("\n")
            }
        }
        Err(err) => format!("(could not read {}: {err})", path.display()),
    }
}

/// The current length of a file, 0 when it does not exist yet.
pub(crate) fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|meta| meta.len()).unwrap_or(0)
}

/// `%XX` escapes decoded (invalid escapes are kept as they are), for request paths and queries.
pub(crate) fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = text.get(i + 1..i + 3)
            && let Ok(byte) = u8::from_str_radix(hex, 16)
        {
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
