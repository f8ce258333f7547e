//! Running a command with its stderr on a pseudo-terminal, as a person's shell runs it, for the
//! output that depends on one: progress bars redrawn in place, colour.

use std::io::Read;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

/// What a command showed, once it ended.
pub struct OnTerminal {
    pub status: ExitStatus,
    /// Its stdout, through a pipe.
    pub stdout: String,
    /// Everything it wrote to the terminal (its stderr), control characters included.
    pub terminal: String,
}

/// Runs `command` with stdout piped and stderr on a new pseudo-terminal until it ends; panics
/// after `limit`.
pub async fn stderr_on_terminal(
    mut command: tokio::process::Command,
    limit: Duration,
) -> OnTerminal {
    let pty = nix::pty::openpty(None, None).expect("a pseudo-terminal");
    let mut child = {
        command
            .stdout(Stdio::piped())
            .stderr(Stdio::from(std::fs::File::from(pty.slave)))
            .kill_on_drop(true);
        // The command (and its copy of the terminal's slave side) goes now, so the master side
        // reads to its end when the child exits.
        command.spawn().expect("the command starts")
    };
    drop(command);
    let mut master = std::fs::File::from(pty.master);
    let (seen_tx, seen) = tokio::sync::oneshot::channel();
    // A thread of its own, not the runtime's blocking pool: should the read never end, the
    // caller still fails at its deadline instead of hanging the runtime's shutdown.
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buffer = [0u8; 4096];
        // Linux answers EIO once no process holds the slave side open any more.
        while let Ok(n @ 1..) = master.read(&mut buffer) {
            seen.extend_from_slice(&buffer[..n]);
        }
        let _ = seen_tx.send(String::from_utf8_lossy(&seen).into_owned());
    });
    let mut stdout = String::new();
    let finished = async {
        let pipe = child.stdout.as_mut().expect("piped");
        tokio::io::AsyncReadExt::read_to_string(pipe, &mut stdout)
            .await
            .expect("stdout reads");
        child.wait().await.expect("the command ends")
    };
    let status = tokio::time::timeout(limit, finished)
        .await
        .unwrap_or_else(|_| panic!("the command did not end within {limit:?}"));
    let terminal = tokio::time::timeout(limit, seen)
        .await
        .expect("the terminal's output ends")
        .expect("the reader thread sends it");
    OnTerminal {
        status,
        stdout,
        terminal,
    }
}
