//! The `ducks` binary under test: the real one, built by `make test` (`cargo build -p ducks`)
//! beside this test binary (`target/<profile>/ducks`).

use std::path::PathBuf;

/// The path of the `ducks` binary of this build.
///
/// # Panics
/// If it was not built: run `cargo build -p ducks` (`make test` builds it).
pub fn ducks_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary knows its path");
    // target/<profile>/deps/<test binary> → target/<profile>/ducks
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test binaries live in target/<profile>/deps");
    let binary = profile_dir.join("ducks");
    assert!(
        binary.exists(),
        "{} is missing: run `cargo build -p ducks` first (make test does)",
        binary.display()
    );
    binary
}
