//! `ducks dev`: the whole stack on this machine until Ctrl-C.

use ducks_contract::JobId;
use ducks_worker::JobEnd;

use crate::dev::Stack;
use crate::settings::Settings;

pub async fn run(settings: Settings) -> Result<(), crate::Error> {
    let stack = Stack::start(settings).await?;
    println!("DUCKS is running on this machine.\n\n{}", stack.describe());
    println!(
        "Ctrl-C stops the stack. Jobs still running after a few seconds are stopped and handed \
         back to the queue; the next `ducks dev` runs them."
    );
    crate::signals::terminated().await;
    eprintln!("Stopping…");
    let jobs = stack.stop().await?;
    for (id, end) in &jobs {
        eprintln!("{}", job_line(id, *end));
    }
    eprintln!("Stopped.");
    Ok(())
}

/// What became of a job that was running when the stack stopped, in one line.
pub(crate) fn job_line(id: &JobId, end: JobEnd) -> String {
    let what = match end {
        JobEnd::Ended(outcome) => format!("finished ({outcome})"),
        JobEnd::Retrying => "failed; its retry is queued for the next `ducks dev`".into(),
        JobEnd::HandedBack {
            runner_stopped: true,
        } => "stopped and handed back to the queue; the next `ducks dev` runs it".into(),
        JobEnd::HandedBack {
            runner_stopped: false,
        } => {
            "handed back to the queue, its runner still running; the next `ducks dev` takes it over"
                .into()
        }
        JobEnd::TakenOver => "taken over by another worker".into(),
        JobEnd::ReturnsAfterLease => {
            "not handed back in time; it returns to the queue when its lease runs out".into()
        }
    };
    format!("Job {id}: {what}.")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_end_of_a_running_job_reads_as_one_line() {
        let id: JobId = "my-first-duck".parse().unwrap();
        let cases = [
            (JobEnd::Ended("succeeded"), "finished (succeeded)."),
            (
                JobEnd::HandedBack {
                    runner_stopped: true,
                },
                "stopped and handed back to the queue; the next `ducks dev` runs it.",
            ),
            (
                JobEnd::HandedBack {
                    runner_stopped: false,
                },
                "handed back to the queue, its runner still running; the next `ducks dev` takes it over.",
            ),
            (
                JobEnd::Retrying,
                "failed; its retry is queued for the next `ducks dev`.",
            ),
            (JobEnd::TakenOver, "taken over by another worker."),
            (
                JobEnd::ReturnsAfterLease,
                "not handed back in time; it returns to the queue when its lease runs out.",
            ),
        ];
        for (end, expected) in cases {
            assert_eq!(job_line(&id, end), format!("Job my-first-duck: {expected}"));
        }
    }
}
