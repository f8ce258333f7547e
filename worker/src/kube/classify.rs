//! What a Job and its pod say about a launch: one pure function from the objects the watcher
//! sees to a [`Seen`], with the user's message and the retry decision for every failure. The
//! table in docs/kubernetes.md is this function's test table.

use std::time::Duration;

use ducks_contract::{FailureCode, JobPhase, Line};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ContainerStateTerminated, Pod};

use crate::outcome::{Exit, JobFailure, Outcome, classify as classify_exit};

use super::spec::CONTAINER;

/// How long a launch may wait in each state before it is given up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budgets {
    /// Unschedulable (no free GPU, or no node that fits).
    pub scheduling: Duration,
    /// The runner image cannot be pulled (the Job controller never fails these by itself).
    pub image_pull: Duration,
}

/// A launch as the cluster shows it.
#[derive(Clone, Debug, PartialEq)]
pub enum Seen {
    /// Not running yet; what it waits for, for a Starting event.
    Waiting(JobPhase, String),
    Running,
    Finished(Outcome),
}

/// What the watcher knows of one launch.
#[derive(Clone, Copy, Debug, Default)]
pub struct Observed<'a> {
    /// `None` once the Job is gone.
    pub job: Option<&'a Job>,
    pub pod: Option<&'a Pod>,
    /// The message of a `FailedCreate` event on the Job, when the cluster refused its pod.
    pub refused: Option<&'a str>,
    /// How long the launch has been in its current waiting state.
    pub waiting_for: Duration,
}

pub fn classify(seen: Observed, budgets: &Budgets) -> Seen {
    let Some(job) = seen.job else {
        return failed(
            FailureCode::Interrupted,
            "The image generator's Job was deleted outside DUCKS.",
            true,
            "",
        );
    };
    let terminated = seen.pod.and_then(runner_terminated);
    if condition(job, &["Complete", "SuccessCriteriaMet"]).is_some() {
        return Seen::Finished(from_termination(terminated, Exit::Code(0)));
    }
    if let Some(reason) = condition(job, &["Failed", "FailureTarget"]) {
        return Seen::Finished(failed_job(&reason, seen.pod, terminated));
    }
    if let Some(message) = seen.refused
        && seen.pod.is_none()
    {
        // The cluster's own words are for the operator; the person learns what it means.
        let quota = message.contains("exceeded quota");
        let said = if quota {
            "The cluster's GPU quota is used up right now; try again later."
        } else {
            "The cluster refused to start the image generator; an operator must check its policies."
        };
        return failed(FailureCode::Refused, said, quota, message);
    }
    let Some(pod) = seen.pod else {
        // Created suspended for Kueue, which unsuspends it once quota is free.
        let suspended = job.spec.as_ref().and_then(|s| s.suspend) == Some(true);
        return if suspended {
            waiting(
                JobPhase::QueuedInCluster,
                "Waiting in the cluster's queue for GPU quota.",
            )
        } else {
            waiting(
                JobPhase::Launching,
                "Waiting for the cluster to create the image generator.",
            )
        };
    };
    // The Job's pod failure policy ignores disruptions: the Job controller starts a new pod.
    if has_condition(pod, "DisruptionTarget") {
        return waiting(
            JobPhase::Restarting,
            "The cluster interrupted the image generator (preemption or a node drain); starting it again.",
        );
    }
    let status = pod.status.as_ref();
    if gpu_fault(pod) {
        return Seen::Finished(gpu_fault_outcome());
    }
    if let Some(terminated) = terminated {
        return Seen::Finished(from_termination(Some(terminated), exit_of(terminated)));
    }
    if let Some((reason, message)) = runner_waiting(pod) {
        return match reason {
            "InvalidImageName" | "ErrImageNeverPull" => failed(
                FailureCode::ImagePullFailed,
                "The image generator's container image is misconfigured (an invalid reference); an operator must fix it.",
                false,
                message,
            ),
            "ErrImagePull" | "ImagePullBackOff" if seen.waiting_for >= budgets.image_pull => {
                failed(
                    FailureCode::ImagePullFailed,
                    "The image generator's container image cannot be pulled; an operator must check the registry.",
                    false,
                    message,
                )
            }
            "ErrImagePull" | "ImagePullBackOff" => waiting(
                JobPhase::PullingImage,
                "Pulling the runner image (retrying).",
            ),
            _ => waiting(JobPhase::Launching, "Starting the image generator."),
        };
    }
    if let Some(message) = unschedulable(pod) {
        let no_free_gpu =
            message.contains("Insufficient nvidia.com/") || message.contains("Insufficient gpu");
        if seen.waiting_for < budgets.scheduling {
            let message = if no_free_gpu {
                "Waiting for a free GPU."
            } else {
                "Waiting for a node that fits."
            };
            return waiting(JobPhase::WaitingForGpu, message);
        }
        return if no_free_gpu {
            failed(
                FailureCode::NoGpuCapacity,
                format!(
                    "No GPU became free within {} seconds.",
                    budgets.scheduling.as_secs()
                ),
                true,
                message,
            )
        } else {
            failed(
                FailureCode::NoGpuCapacity,
                "No node in the cluster can run this model; an operator must check its GPU settings.",
                false,
                message,
            )
        };
    }
    match status.and_then(|s| s.phase.as_deref()) {
        Some("Running") => Seen::Running,
        _ => waiting(JobPhase::Launching, "Starting the image generator."),
    }
}

fn waiting(phase: JobPhase, message: &str) -> Seen {
    Seen::Waiting(phase, message.to_owned())
}

/// A failed Job: its reason, and the runner's own exit where there is one.
fn failed_job(
    reason: &str,
    pod: Option<&Pod>,
    terminated: Option<&ContainerStateTerminated>,
) -> Outcome {
    if reason == "DeadlineExceeded" {
        let stuck_unscheduled = pod.is_none_or(|p| unschedulable(p).is_some());
        return if stuck_unscheduled {
            Outcome::Failed(JobFailure::new(
                FailureCode::NoGpuCapacity,
                "No GPU became free before the job's deadline.",
                true,
            ))
        } else {
            Outcome::Failed(JobFailure::new(
                FailureCode::DeadlineExceeded,
                "The image took too long and was stopped.",
                false,
            ))
        };
    }
    if pod.is_some_and(gpu_fault) {
        return gpu_fault_outcome();
    }
    match terminated {
        Some(terminated) => from_termination(Some(terminated), exit_of(terminated)),
        None => Outcome::Failed(
            JobFailure::new(
                FailureCode::RunnerCrashed,
                "The image generator's Job failed.",
                true,
            )
            .with_detail(format!("the Job failed with reason {reason}")),
        ),
    }
}

/// The runner's exit with its termination message (the result or error line it wrote).
fn from_termination(terminated: Option<&ContainerStateTerminated>, exit: Exit) -> Outcome {
    if terminated.and_then(|t| t.reason.as_deref()) == Some("OOMKilled") {
        return Outcome::Failed(JobFailure::new(
            FailureCode::OutOfMemory,
            "The image generator ran out of memory: try a smaller size or fewer images.",
            false,
        ));
    }
    let line = terminated
        .and_then(|t| t.message.as_deref())
        .and_then(|message| message.lines().rev().find_map(Line::parse));
    classify_exit(exit, line.as_ref())
}

/// The node admitted the pod but could not hand out its GPU (a device plugin fault).
fn gpu_fault(pod: &Pod) -> bool {
    pod.status.as_ref().and_then(|s| s.reason.as_deref()) == Some("UnexpectedAdmissionError")
}

fn gpu_fault_outcome() -> Outcome {
    Outcome::Failed(JobFailure::new(
        FailureCode::Interrupted,
        "The GPU node could not hand out its GPU; trying again.",
        true,
    ))
}

fn exit_of(terminated: &ContainerStateTerminated) -> Exit {
    match terminated.signal {
        Some(signal) if signal != 0 => Exit::Signal(signal),
        _ => Exit::Code(terminated.exit_code),
    }
}

fn failed(
    code: FailureCode,
    message: impl Into<String>,
    retryable: bool,
    detail: impl Into<String>,
) -> Seen {
    let failure = JobFailure::new(code, message, retryable).with_detail(detail);
    Seen::Finished(Outcome::Failed(failure))
}

/// The reason of the Job's first true condition among `types`.
fn condition(job: &Job, types: &[&str]) -> Option<String> {
    let conditions = job.status.as_ref()?.conditions.as_ref()?;
    conditions
        .iter()
        .find(|c| c.status == "True" && types.contains(&c.type_.as_str()))
        .map(|c| c.reason.clone().unwrap_or_default())
}

fn has_condition(pod: &Pod, type_: &str) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == type_ && c.status == "True"))
}

/// The scheduler's message when the pod cannot be placed.
fn unschedulable(pod: &Pod) -> Option<&str> {
    let conditions = pod.status.as_ref()?.conditions.as_ref()?;
    let scheduled = conditions.iter().find(|c| c.type_ == "PodScheduled")?;
    (scheduled.status == "False" && scheduled.reason.as_deref() == Some("Unschedulable"))
        .then(|| scheduled.message.as_deref().unwrap_or("unschedulable"))
}

fn runner_terminated(pod: &Pod) -> Option<&ContainerStateTerminated> {
    runner_status(pod)?.state.as_ref()?.terminated.as_ref()
}

/// The runner container's waiting reason and message.
fn runner_waiting(pod: &Pod) -> Option<(&str, &str)> {
    let waiting = runner_status(pod)?.state.as_ref()?.waiting.as_ref()?;
    Some((
        waiting.reason.as_deref().unwrap_or_default(),
        waiting.message.as_deref().unwrap_or_default(),
    ))
}

fn runner_status(pod: &Pod) -> Option<&k8s_openapi::api::core::v1::ContainerStatus> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|s| s.name == CONTAINER)
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn job(condition: Option<(&str, &str)>) -> Job {
        let conditions: Vec<Value> = condition
            .map(|(type_, reason)| json!({"type": type_, "status": "True", "reason": reason}))
            .into_iter()
            .collect();
        serde_json::from_value(json!({
            "metadata": {"name": "ducks-j"},
            "status": {"conditions": conditions}
        }))
        .unwrap()
    }

    fn pod(status: Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "ducks-j-x"}, "status": status}))
            .unwrap()
    }

    fn terminated(exit_code: i32, reason: &str, message: &str) -> Pod {
        pod(json!({"phase": "Failed", "containerStatuses": [{
            "name": "runner", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": exit_code, "reason": reason, "message": message}}
        }]}))
    }

    fn waiting(reason: &str) -> Pod {
        pod(json!({"phase": "Pending", "containerStatuses": [{
            "name": "runner", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": reason, "message": "details"}}
        }]}))
    }

    fn unschedulable(message: &str) -> Pod {
        pod(json!({"phase": "Pending", "conditions": [
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message}
        ]}))
    }

    const RESULT: &str = r#"{"event":"result","job_id":"j","model":"m","images":[],"timings":{"download_ms":0,"load_ms":0,"generate_ms":0,"upload_ms":0,"total_ms":0,"files_downloaded":0}}"#;
    const BAD_REQUEST: &str =
        r#"{"event":"error","failure":"bad_request","exit_code":2,"message":"Too big."}"#;
    const STORAGE: &str = r#"{"event":"error","failure":"storage_unavailable","exit_code":5,"message":"S3 is down."}"#;

    #[derive(Debug, PartialEq)]
    enum Expect {
        Waiting(&'static str),
        Running,
        Succeeded,
        Failed(FailureCode, bool),
    }

    fn expect(seen: Seen) -> Expect {
        match seen {
            Seen::Waiting(JobPhase::WaitingForGpu, _) => Expect::Waiting("gpu"),
            Seen::Waiting(JobPhase::Restarting, _) => Expect::Waiting("again"),
            Seen::Waiting(JobPhase::QueuedInCluster, _) => Expect::Waiting("queue"),
            Seen::Waiting(JobPhase::PullingImage, _) => Expect::Waiting("image"),
            Seen::Waiting(JobPhase::Launching, _) => Expect::Waiting("start"),
            Seen::Waiting(other, message) => panic!("unexpected phase {other:?}: {message}"),
            Seen::Running => Expect::Running,
            Seen::Finished(Outcome::Succeeded(_)) => Expect::Succeeded,
            Seen::Finished(Outcome::Failed(f)) => {
                // The cluster's words (the fixtures' "details") are the operator's detail.
                assert!(
                    f.message.ends_with('.') && !f.message.contains("details"),
                    "{f:?}"
                );
                Expect::Failed(f.code, f.retryable)
            }
            Seen::Finished(Outcome::Cancelled) => panic!("never classified as cancelled"),
        }
    }

    const BUDGETS: Budgets = Budgets {
        scheduling: Duration::from_secs(300),
        image_pull: Duration::from_secs(180),
    };

    /// The failure table of docs/kubernetes.md, row by row.
    #[test]
    fn classification_table() {
        use Expect::*;
        use FailureCode::*;
        let long = Duration::from_secs(3600);
        let short = Duration::from_secs(1);
        let running = pod(json!({"phase": "Running"}));
        let disrupted = pod(json!({"phase": "Running", "conditions": [
            {"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler"}
        ]}));
        let gpu_fault = pod(json!({"phase": "Failed", "reason": "UnexpectedAdmissionError"}));
        let no_gpu = unschedulable("0/3 nodes are available: 3 Insufficient nvidia.com/gpu.");
        let no_node = unschedulable(
            "0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector.",
        );
        let complete = job(Some(("Complete", "Completed")));
        let by_policy = job(Some(("Failed", "PodFailurePolicy")));
        let backoff = job(Some(("Failed", "BackoffLimitExceeded")));
        let deadline = job(Some(("Failed", "DeadlineExceeded")));
        let active = job(None);
        let mut suspended = job(None);
        suspended.spec = Some(k8s_openapi::api::batch::v1::JobSpec {
            suspend: Some(true),
            ..Default::default()
        });
        let (pull_backoff, err_pull) = (waiting("ImagePullBackOff"), waiting("ErrImagePull"));
        let (invalid_image, creating) = (waiting("InvalidImageName"), waiting("ContainerCreating"));
        let ok = terminated(0, "Completed", RESULT);
        let bad = terminated(2, "Error", BAD_REQUEST);
        let storage = terminated(5, "Error", STORAGE);
        let crash = terminated(1, "Error", "panicked at …");
        let oom = terminated(137, "OOMKilled", "");
        let rows: Vec<(&str, Observed, Expect)> = vec![
            (
                "deleted outside DUCKS",
                Observed::default(),
                Failed(Interrupted, true),
            ),
            (
                "no pod yet",
                Observed {
                    job: Some(&active),
                    ..Default::default()
                },
                Waiting("start"),
            ),
            (
                "suspended for Kueue",
                Observed {
                    job: Some(&suspended),
                    ..Default::default()
                },
                Waiting("queue"),
            ),
            (
                "quota",
                Observed {
                    job: Some(&active),
                    refused: Some("pods \"x\" is forbidden: exceeded quota: gpu"),
                    ..Default::default()
                },
                Failed(Refused, true),
            ),
            (
                "admission",
                Observed {
                    job: Some(&active),
                    refused: Some("admission webhook denied the request"),
                    ..Default::default()
                },
                Failed(Refused, false),
            ),
            (
                "waiting for a GPU",
                Observed {
                    job: Some(&active),
                    pod: Some(&no_gpu),
                    waiting_for: short,
                    ..Default::default()
                },
                Waiting("gpu"),
            ),
            (
                "no GPU in time",
                Observed {
                    job: Some(&active),
                    pod: Some(&no_gpu),
                    waiting_for: long,
                    ..Default::default()
                },
                Failed(NoGpuCapacity, true),
            ),
            (
                "no node fits",
                Observed {
                    job: Some(&active),
                    pod: Some(&no_node),
                    waiting_for: long,
                    ..Default::default()
                },
                Failed(NoGpuCapacity, false),
            ),
            (
                "pulling, retrying",
                Observed {
                    job: Some(&active),
                    pod: Some(&pull_backoff),
                    waiting_for: short,
                    ..Default::default()
                },
                Waiting("image"),
            ),
            (
                "cannot pull",
                Observed {
                    job: Some(&active),
                    pod: Some(&err_pull),
                    waiting_for: long,
                    ..Default::default()
                },
                Failed(ImagePullFailed, false),
            ),
            (
                "invalid image",
                Observed {
                    job: Some(&active),
                    pod: Some(&invalid_image),
                    ..Default::default()
                },
                Failed(ImagePullFailed, false),
            ),
            (
                "container creating",
                Observed {
                    job: Some(&active),
                    pod: Some(&creating),
                    ..Default::default()
                },
                Waiting("start"),
            ),
            (
                "running",
                Observed {
                    job: Some(&active),
                    pod: Some(&running),
                    ..Default::default()
                },
                Running,
            ),
            (
                "disrupted: the Job controller starts another pod",
                Observed {
                    job: Some(&active),
                    pod: Some(&disrupted),
                    ..Default::default()
                },
                Waiting("again"),
            ),
            (
                "GPU fault",
                Observed {
                    job: Some(&active),
                    pod: Some(&gpu_fault),
                    ..Default::default()
                },
                Failed(Interrupted, true),
            ),
            (
                "GPU fault, Job failed",
                Observed {
                    job: Some(&backoff),
                    pod: Some(&gpu_fault),
                    ..Default::default()
                },
                Failed(Interrupted, true),
            ),
            (
                "succeeded",
                Observed {
                    job: Some(&complete),
                    pod: Some(&ok),
                    ..Default::default()
                },
                Succeeded,
            ),
            (
                "bad request",
                Observed {
                    job: Some(&by_policy),
                    pod: Some(&bad),
                    ..Default::default()
                },
                Failed(InvalidRequest, false),
            ),
            (
                "storage down",
                Observed {
                    job: Some(&backoff),
                    pod: Some(&storage),
                    ..Default::default()
                },
                Failed(StorageUnavailable, true),
            ),
            (
                "crash",
                Observed {
                    job: Some(&backoff),
                    pod: Some(&crash),
                    ..Default::default()
                },
                Failed(RunnerCrashed, true),
            ),
            (
                "out of memory",
                Observed {
                    job: Some(&backoff),
                    pod: Some(&oom),
                    ..Default::default()
                },
                Failed(OutOfMemory, false),
            ),
            (
                "deadline while waiting for a GPU",
                Observed {
                    job: Some(&deadline),
                    pod: Some(&no_gpu),
                    ..Default::default()
                },
                Failed(NoGpuCapacity, true),
            ),
            (
                "deadline while running",
                Observed {
                    job: Some(&deadline),
                    pod: Some(&running),
                    ..Default::default()
                },
                Failed(DeadlineExceeded, false),
            ),
            (
                "failed, pod gone",
                Observed {
                    job: Some(&backoff),
                    ..Default::default()
                },
                Failed(RunnerCrashed, true),
            ),
        ];
        for (name, observed, expected) in rows {
            assert_eq!(expect(classify(observed, &BUDGETS)), expected, "{name}");
        }
    }
}
