//! `ducks worker`: take jobs and launch one runner per job until SIGTERM or SIGINT.

use ducks_worker::RunningWorker;
use tracing::info;

use crate::settings::Settings;

pub async fn run(settings: &Settings) -> Result<(), crate::Error> {
    let queue = settings.connect_queue().await?;
    let worker = RunningWorker::start(
        queue,
        &settings.s3,
        settings.worker.clone(),
        &settings.links,
        &settings.runner.output_prefix,
    )
    .await?;
    crate::signals::terminated().await;
    info!(message = "Shutting down: SIGTERM or SIGINT received.");
    worker.stop().await?;
    Ok(())
}
