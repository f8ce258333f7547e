//! `ducks runner`: the program of each GPU pod (docs/runner-contract.md). Everything comes from
//! the environment; the exit code is the runner's.

use crate::settings::Settings;

pub async fn run(settings: &Settings) -> u8 {
    let mut stdout = std::io::stdout();
    ducks_runner::run::run(&settings.runner, &settings.s3, &mut stdout).await
}
