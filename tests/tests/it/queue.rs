//! The queue against real redis-server processes: delivery, leases, retries, dead letters,
//! limits, cancellation, crashes and Redis Cluster.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ducks_contract::{Caller, EventKind, FailureCode, JobId, JobState};
use ducks_queue::{
    Cancelled, Completion, Consumer, EventReader, FailResult, Queue, QueueConfig, QueueError,
    RedisTarget, Signal, Submitted,
};
use ducks_tests::{RedisCluster, RedisOptions, RedisServer};

use crate::support::*;

const SECONDS_10: Duration = Duration::from_secs(10);

#[tokio::test]
async fn a_job_goes_from_submit_to_its_terminal_event() {
    let redis = RedisServer::start().await;
    let queue = queue_on(&redis, config()).await;
    let submitted = queue.submit(request("a duck in space")).await.unwrap();
    let Submitted::Queued { id, position } = submitted else {
        panic!("{submitted:?}")
    };
    assert_eq!(position, 1);
    assert_eq!(queue.status(&id).await.unwrap().state, JobState::Queued);
    assert_eq!(queue.status(&id).await.unwrap().position, Some(1));

    let mut consumer = Consumer::new(queue.clone(), "w1").await.unwrap();
    let delivery = take(&mut consumer, 1, SECONDS_10).await.pop().unwrap();
    assert_eq!(delivery.id, id);
    assert_eq!((delivery.attempt, delivery.deliveries), (0, 1));
    assert_eq!(delivery.job.prompt, "a duck in space");
    assert_eq!(queue.status(&id).await.unwrap().state, JobState::Running);

    let progress = EventKind::Progress { step: 1, total: 2 };
    assert_eq!(
        delivery.publish(progress.clone()).await.unwrap(),
        Signal::Running
    );
    assert_eq!(
        delivery.complete(succeeded()).await.unwrap(),
        Completion::Done
    );

    let status = queue.status(&id).await.unwrap();
    assert_eq!(status.state, JobState::Succeeded);
    assert_eq!(status.last_event.unwrap().kind, succeeded());
    let events = events_by_job(&queue, "cli").await;
    assert_eq!(
        events[&id],
        vec![EventKind::Queued { position: 1 }, progress, succeeded()]
    );
    assert_eq!(
        xlen(&queue, queue.keys().jobs()).await,
        0,
        "finished entries are deleted"
    );
}

#[tokio::test]
async fn submit_is_idempotent_by_key_and_by_job_id() {
    let redis = RedisServer::start().await;
    let queue = queue_on(&redis, config()).await;
    let mut keyed = request("same");
    keyed.idempotency_key = Some("discord-interaction-42".into());
    let first = queue.submit(keyed.clone()).await.unwrap();
    let again = queue.submit(keyed).await.unwrap();
    assert_eq!(
        again,
        Submitted::Duplicate {
            id: first.id().clone()
        }
    );

    let mut with_id = request("retried after a lost reply");
    with_id.id = Some(JobId::generate());
    queue.submit(with_id.clone()).await.unwrap();
    let repeated = queue.submit(with_id.clone()).await.unwrap();
    assert_eq!(
        repeated,
        Submitted::Duplicate {
            id: with_id.id.unwrap()
        }
    );
    assert_eq!(xlen(&queue, queue.keys().jobs()).await, 2);
}

#[tokio::test]
async fn concurrent_consumers_never_receive_the_same_job() {
    let redis = RedisServer::start().await;
    let queue = queue_on(&redis, config()).await;
    let mut submitted = HashSet::new();
    for i in 0..200 {
        submitted.insert(
            queue
                .submit(request(&format!("job {i}")))
                .await
                .unwrap()
                .id()
                .clone(),
        );
    }
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for w in 0..4 {
        let (queue, seen) = (queue.clone(), seen.clone());
        tasks.push(tokio::spawn(async move {
            let mut consumer = Consumer::new(queue, format!("w{w}")).await.unwrap();
            loop {
                let batch = consumer.next_batch(7).await.unwrap();
                if batch.is_empty() {
                    return;
                }
                for delivery in batch {
                    seen.lock().unwrap().push(delivery.id.clone());
                    assert_eq!(
                        delivery.complete(succeeded()).await.unwrap(),
                        Completion::Done
                    );
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 200, "every job delivered exactly once");
    assert_eq!(seen.iter().cloned().collect::<HashSet<_>>(), submitted);
}

#[tokio::test]
async fn backlog_and_per_requester_limits_refuse_with_clear_errors() {
    let redis = RedisServer::start().await;
    let queue = queue_on(
        &redis,
        QueueConfig {
            max_backlog: 3,
            ..config()
        },
    )
    .await;
    for i in 0..3 {
        queue.submit(request(&format!("{i}"))).await.unwrap();
    }
    let full = queue.submit(request("one too many")).await.unwrap_err();
    assert!(
        matches!(full, QueueError::QueueFull { backlog: 3 }),
        "{full:?}"
    );
    assert_eq!(
        full.to_string(),
        "The queue is full (3 jobs waiting). Try again in a few minutes."
    );

    let limited = QueueConfig {
        name: "limited".into(),
        per_requester_in_flight: 2,
        ..config()
    };
    let queue = queue_on(&redis, limited).await;
    let mut alice = request("alice");
    alice.requester.id = "alice".into();
    queue.submit(alice.clone()).await.unwrap();
    queue.submit(alice.clone()).await.unwrap();
    let busy = queue.submit(alice.clone()).await.unwrap_err();
    assert!(
        matches!(
            busy,
            QueueError::TooManyInFlight {
                in_flight: 2,
                limit: 2
            }
        ),
        "{busy:?}"
    );
    let mut bob = alice.clone();
    bob.requester.id = "bob".into();
    queue.submit(bob).await.expect("limits are per requester");
    // Finishing one of alice's jobs frees a slot.
    let mut consumer = Consumer::new(queue.clone(), "w").await.unwrap();
    let deliveries = take(&mut consumer, 3, SECONDS_10).await;
    let alices = deliveries
        .into_iter()
        .find(|d| d.job.requester.id == "alice")
        .unwrap();
    alices.complete(succeeded()).await.unwrap();
    queue.submit(alice).await.expect("a slot was freed");

    let rated = QueueConfig {
        name: "rated".into(),
        per_requester_rate: 2,
        ..config()
    };
    let queue = queue_on(&redis, rated).await;
    queue.submit(request("1")).await.unwrap();
    queue.submit(request("2")).await.unwrap();
    match queue.submit(request("3")).await {
        Err(QueueError::RateLimited { retry_after }) => {
            assert!(
                retry_after > Duration::from_secs(50) && retry_after <= Duration::from_secs(60)
            );
        }
        other => panic!("expected RateLimited, got {other:?}"),
    }
}

#[tokio::test]
async fn jobs_of_a_killed_consumer_are_finished_by_another_after_the_lease() {
    let redis = RedisServer::start().await;
    let queue = queue_on(&redis, config()).await;
    for i in 0..3 {
        queue.submit(request(&format!("{i}"))).await.unwrap();
    }
    let mut doomed = Consumer::new(queue.clone(), "doomed").await.unwrap();
    let held = take(&mut doomed, 3, SECONDS_10).await;
    // A killed worker: its lease keeper stops and nothing is completed.
    drop(held);
    drop(doomed);

    let started = Instant::now();
    let mut survivor = Consumer::new(queue.clone(), "survivor").await.unwrap();
    let taken = take(&mut survivor, 3, SECONDS_10).await;
    assert!(
        started.elapsed() >= Duration::from_millis(config().lease_ms * 3 / 4),
        "taken before the lease ran out"
    );
    for delivery in taken {
        assert_eq!(delivery.deliveries, 2, "the delivery count rises");
        delivery.complete(succeeded()).await.unwrap();
    }
    for (_, events) in events_by_job(&queue, "cli").await {
        assert_eq!(terminals(&events).len(), 1);
    }
}

#[tokio::test]
async fn a_job_that_keeps_killing_its_worker_ends_in_the_dead_letters() {
    let redis = RedisServer::start().await;
    let queue = queue_on(&redis, config()).await;
    let id = queue.submit(request("poison")).await.unwrap().id().clone();
    for expected in 1..=3 {
        let mut consumer = Consumer::new(queue.clone(), format!("victim-{expected}"))
            .await
            .unwrap();
        let delivery = take(&mut consumer, 1, SECONDS_10).await.pop().unwrap();
        assert_eq!(delivery.deliveries, expected);
    }
    // The fourth delivery is over the limit of 3: it goes to the dead letters instead.
    let mut last = Consumer::new(queue.clone(), "last").await.unwrap();
    let deadline = Instant::now() + SECONDS_10;
    while xlen(&queue, queue.keys().dead_letters()).await == 0 {
        assert!(
            last.next_batch(1).await.unwrap().is_empty(),
            "poison job delivered again"
        );
        assert!(
            Instant::now() < deadline,
            "the job was not dead-lettered in time"
        );
    }
    let status = queue.status(&id).await.unwrap();
    assert_eq!(status.state, JobState::Failed);
    match status.last_event.unwrap().kind {
        EventKind::Failed {
            code, retryable, ..
        } => {
            assert_eq!((code, retryable), (FailureCode::TooManyDeliveries, false));
        }
        other => panic!("{other:?}"),
    }
    let dead = stream_entries(&queue, queue.keys().dead_letters()).await;
    let fields = &dead[0].1;
    assert_eq!(fields["reason"], "delivered 4 times without finishing");
    assert_eq!(fields["job_id"], id.as_str());
    assert_eq!(xlen(&queue, queue.keys().jobs()).await, 0);
}

#[tokio::test]
async fn a_live_job_running_far_longer_than_its_lease_is_never_taken_over() {
    let redis = RedisServer::start().await;
    let queue = queue_on(&redis, config()).await;
    queue.submit(request("slow")).await.unwrap();
    let mut runner = Consumer::new(queue.clone(), "runner").await.unwrap();
    let delivery = take(&mut runner, 1, SECONDS_10).await.pop().unwrap();

    let mut rival = Consumer::new(queue.clone(), "rival").await.unwrap();
    // The job "runs" for three leases while the rival keeps looking for stale work.
    let run_for = Duration::from_millis(3 * config().lease_ms);
    let started = Instant::now();
    while started.elapsed() < run_for {
        assert!(
            rival.next_batch(1).await.unwrap().is_empty(),
            "a live job was taken over"
        );
    }
    assert_eq!(delivery.signal(), Signal::Running);
    assert_eq!(
        delivery.complete(succeeded()).await.unwrap(),
        Completion::Done
    );
}

#[tokio::test]
async fn retries_back_off_exponentially_then_fail_for_good() {
    let redis = RedisServer::start().await;
    let config = config();
    let queue = queue_on(&redis, config.clone()).await;
    let id = queue.submit(request("flaky")).await.unwrap().id().clone();
    let mut consumer = Consumer::new(queue.clone(), "w").await.unwrap();
    for attempt in 0..=config.max_retries {
        let delivery = take(&mut consumer, 1, SECONDS_10).await.pop().unwrap();
        assert_eq!(delivery.attempt, attempt);
        let failed_at = Instant::now();
        let outcome = delivery
            .fail(
                FailureCode::StorageUnavailable,
                "S3 did not answer.".into(),
                true,
            )
            .await
            .unwrap();
        if attempt == config.max_retries {
            assert_eq!(outcome, FailResult::Failed(Completion::Done));
            break;
        }
        let FailResult::Retrying {
            attempt: next,
            delay,
        } = outcome
        else {
            panic!("{outcome:?}")
        };
        assert_eq!(next, attempt + 1);
        let ceiling = (config.retry_base_ms << attempt).min(config.retry_max_ms);
        assert!(
            delay.as_millis() as u64 >= ceiling / 2 && delay.as_millis() as u64 <= ceiling,
            "attempt {next}: delay {delay:?} outside [{}, {ceiling}] ms",
            ceiling / 2
        );
        let back = take(&mut consumer, 1, SECONDS_10).await.pop().unwrap();
        // Due times are whole milliseconds of the Redis clock: allow that one millisecond.
        assert!(
            failed_at.elapsed() + Duration::from_millis(1) >= delay,
            "came back before its backoff"
        );
        assert_eq!(queue.status(&id).await.unwrap().attempt, next);
        // Put it back for the next round of the loop.
        back.abandon().await.unwrap();
        consumer = Consumer::new(queue.clone(), "w").await.unwrap();
    }
    let events = &events_by_job(&queue, "cli").await[&id];
    let retries: Vec<u32> = events
        .iter()
        .filter_map(|e| match e {
            EventKind::Retrying { attempt, .. } => Some(*attempt),
            _ => None,
        })
        .collect();
    assert_eq!(retries, vec![1, 2, 3]);
    match terminals(events).as_slice() {
        [
            EventKind::Failed {
                code,
                message,
                retryable,
            },
        ] => {
            assert_eq!(*code, FailureCode::StorageUnavailable);
            assert_eq!(message, "S3 did not answer. (gave up after 4 attempts)");
            assert!(!retryable);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn due_retries_come_back_in_due_order() {
    let redis = RedisServer::start().await;
    let queue = queue_on(
        &redis,
        QueueConfig {
            retry_base_ms: 400,
            retry_max_ms: 4_000,
            ..config()
        },
    )
    .await;
    let first = queue.submit(request("first")).await.unwrap().id().clone();
    let second = queue.submit(request("second")).await.unwrap().id().clone();
    let mut consumer = Consumer::new(queue.clone(), "w").await.unwrap();
    let mut deliveries = take(&mut consumer, 2, SECONDS_10).await;
    deliveries.sort_by_key(|d| d.id.clone());
    let [a, b] = <[_; 2]>::try_from(deliveries).unwrap();
    // Fail `first` on its first attempt (200-400 ms) and `second` later with a shorter wait
    // (a non-retryable failure cannot be used, so both use attempt 1 delays with jitter): the one
    // with the earlier due time must come back first.
    let FailResult::Retrying { delay: da, .. } = a
        .fail(FailureCode::Internal, "x".into(), true)
        .await
        .unwrap()
    else {
        panic!()
    };
    let FailResult::Retrying { delay: db, .. } = b
        .fail(FailureCode::Internal, "y".into(), true)
        .await
        .unwrap()
    else {
        panic!()
    };
    let back = take(&mut consumer, 1, SECONDS_10).await.pop().unwrap();
    let expected = if da <= db { &first } else { &second };
    assert_eq!(&back.id, expected, "delays {da:?} and {db:?}");
}

#[tokio::test]
async fn garbage_entries_go_to_the_dead_letters_and_the_stream_keeps_flowing() {
    let redis = RedisServer::start().await;
    let queue = queue_on(&redis, config()).await;
    xadd_raw(&queue, &[("garbage", "1")]).await;
    xadd_raw(&queue, &[("job", "not json at all")]).await;
    xadd_raw(&queue, &[("job", r#"{"v":9,"prompt":"from the future"}"#)]).await;
    let good = xadd_raw(&queue, &[("job", r#"{"v":1,"prompt":"a raw duck"}"#)]).await;

    let mut consumer = Consumer::new(queue.clone(), "w").await.unwrap();
    let delivery = take(&mut consumer, 1, SECONDS_10).await.pop().unwrap();
    assert_eq!(delivery.job.prompt, "a raw duck");
    assert_eq!(
        delivery.id,
        JobId::from_entry_id(&good).unwrap(),
        "id derived from the entry"
    );

    let dead = stream_entries(&queue, queue.keys().dead_letters()).await;
    let reasons: Vec<&String> = dead.iter().map(|(_, fields)| &fields["reason"]).collect();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert!(reasons[0].contains("no `job` field"), "{}", reasons[0]);
    assert!(reasons[1].contains("malformed"), "{}", reasons[1]);
    assert!(reasons[2].contains("version 9"), "{}", reasons[2]);
    delivery.complete(succeeded()).await.unwrap();
    assert_eq!(xlen(&queue, queue.keys().jobs()).await, 0);
}

#[tokio::test]
async fn invalid_and_expired_raw_jobs_fail_without_reaching_a_worker() {
    let redis = RedisServer::start().await;
    let queue = queue_on(&redis, config()).await;
    xadd_raw(
        &queue,
        &[("job", r#"{"v":1,"id":"bad-size","prompt":"p","width":13}"#)],
    )
    .await;
    xadd_raw(
        &queue,
        &[(
            "job",
            r#"{"v":1,"id":"too-late","prompt":"p","deadline_ms":1000}"#,
        )],
    )
    .await;
    let mut consumer = Consumer::new(queue.clone(), "w").await.unwrap();
    let deadline = Instant::now() + SECONDS_10;
    while events_by_job(&queue, "redis").await.len() < 2 {
        assert!(
            consumer.next_batch(5).await.unwrap().is_empty(),
            "a bad job reached a worker"
        );
        assert!(
            Instant::now() < deadline,
            "the bad jobs did not fail in time"
        );
    }
    let events = events_by_job(&queue, "redis").await;
    let code_of = |id: &str| match &events[&id.parse::<JobId>().unwrap()][..] {
        [EventKind::Failed { code, message, .. }] => (*code, message.clone()),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        code_of("bad-size"),
        (
            FailureCode::InvalidRequest,
            "The width 13 is not allowed: use a multiple of 8 from 64 to 2048.".into()
        )
    );
    assert_eq!(code_of("too-late").0, FailureCode::DeadlineExceeded);
    let mut late = request("late");
    late.deadline_ms = Some(1_000);
    assert!(matches!(
        queue.submit(late).await,
        Err(QueueError::DeadlinePassed)
    ));
}

#[tokio::test]
async fn cancel_stops_queued_delayed_and_running_jobs() {
    let redis = RedisServer::start().await;
    let queue = queue_on(
        &redis,
        QueueConfig {
            retry_base_ms: 60_000,
            retry_max_ms: 60_000,
            ..config()
        },
    )
    .await;
    let queued = queue
        .submit(request("never mind"))
        .await
        .unwrap()
        .id()
        .clone();
    assert_eq!(
        queue.cancel(&queued, &Caller::Operator).await.unwrap(),
        Cancelled::Cancelled
    );
    assert_eq!(
        queue.status(&queued).await.unwrap().state,
        JobState::Cancelled
    );
    assert_eq!(
        xlen(&queue, queue.keys().jobs()).await,
        0,
        "the entry is gone before any worker saw it"
    );

    let delayed = queue
        .submit(request("retry later"))
        .await
        .unwrap()
        .id()
        .clone();
    let running = queue.submit(request("running")).await.unwrap().id().clone();
    let mut consumer = Consumer::new(queue.clone(), "w").await.unwrap();
    let mut deliveries = take(&mut consumer, 2, SECONDS_10).await;
    let pos = deliveries.iter().position(|d| d.id == delayed).unwrap();
    deliveries
        .remove(pos)
        .fail(FailureCode::Internal, "x".into(), true)
        .await
        .unwrap();
    assert_eq!(
        queue.status(&delayed).await.unwrap().state,
        JobState::Retrying
    );
    assert_eq!(
        queue.cancel(&delayed, &Caller::Operator).await.unwrap(),
        Cancelled::Cancelled
    );

    let mut delivery = deliveries.pop().unwrap();
    assert_eq!(
        queue.cancel(&running, &Caller::Operator).await.unwrap(),
        Cancelled::Requested
    );
    let signal = tokio::time::timeout(SECONDS_10, delivery.interrupted())
        .await
        .unwrap();
    assert_eq!(signal, Signal::CancelRequested);
    delivery.complete(EventKind::Cancelled).await.unwrap();
    assert_eq!(
        queue.cancel(&running, &Caller::Operator).await.unwrap(),
        Cancelled::AlreadyEnded(JobState::Cancelled)
    );
    let missing = queue
        .cancel(&JobId::generate(), &Caller::Operator)
        .await
        .unwrap_err();
    assert!(matches!(missing, QueueError::NotFound(_)));

    let events = events_by_job(&queue, "cli").await;
    for id in [&queued, &delayed, &running] {
        assert_eq!(terminals(&events[id]), vec![&EventKind::Cancelled], "{id}");
    }
}

#[tokio::test]
async fn status_reports_the_queue_position() {
    let redis = RedisServer::start().await;
    let queue = queue_on(&redis, config()).await;
    let mut ids = Vec::new();
    for i in 0..4 {
        let Submitted::Queued { id, position } =
            queue.submit(request(&format!("{i}"))).await.unwrap()
        else {
            panic!()
        };
        assert_eq!(position, i + 1);
        ids.push(id);
    }
    let mut consumer = Consumer::new(queue.clone(), "w").await.unwrap();
    let _taken = take(&mut consumer, 1, SECONDS_10).await;
    assert_eq!(
        queue.status(&ids[0]).await.unwrap().state,
        JobState::Running
    );
    assert_eq!(queue.status(&ids[0]).await.unwrap().position, None);
    assert_eq!(queue.status(&ids[3]).await.unwrap().position, Some(3));
}

#[tokio::test]
async fn a_restarted_front_end_reads_the_events_it_had_not_acknowledged() {
    let redis = RedisServer::start().await;
    let queue = queue_on(&redis, config()).await;
    for i in 0..3 {
        queue.submit(request(&format!("{i}"))).await.unwrap();
    }
    let block = Duration::from_millis(100);
    let mut reader = EventReader::new(&queue, "cli", "cli-frontend", "one")
        .await
        .unwrap();
    let mut first = Vec::new();
    while first.len() < 3 {
        first.extend(reader.next(10, block).await.unwrap());
    }
    reader
        .ack(&[first[0].entry_id.clone(), first[1].entry_id.clone()])
        .await
        .unwrap();
    drop(reader);

    let mut restarted = EventReader::new(&queue, "cli", "cli-frontend", "one")
        .await
        .unwrap();
    let again = restarted.next(10, block).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].entry_id, first[2].entry_id);
    assert!(matches!(
        again[0].event.as_ref().unwrap().kind,
        EventKind::Queued { position: 3 }
    ));
    assert!(restarted.next(10, block).await.unwrap().is_empty());
}

/// Redis is killed with SIGKILL in the middle of 1,000 jobs and restarted from its AOF; workers and
/// the producer carry on by themselves, and every job ends with exactly one terminal event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_crash_in_the_middle_of_1000_jobs_loses_and_repeats_nothing() {
    const JOBS: usize = 1_000;
    let mut redis = RedisServer::start_with(RedisOptions { aof: true }).await;
    let queue = queue_on(&redis, config()).await;
    let finished = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for w in 0..2 {
        let (queue, finished) = (queue.clone(), finished.clone());
        workers.push(tokio::spawn(async move {
            let mut consumer = Consumer::new(queue, format!("w{w}")).await.unwrap();
            loop {
                // Errors outlast the retry budget only if Redis stays down; keep going regardless.
                let Ok(batch) = consumer.next_batch(20).await else {
                    continue;
                };
                for delivery in batch {
                    if let Ok(Completion::Done) = delivery.complete(succeeded()).await {
                        finished.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    let producer = {
        let queue = queue.clone();
        tokio::spawn(async move {
            let mut ids = HashSet::new();
            for i in 0..JOBS {
                let mut job = request(&format!("job {i}"));
                job.id = Some(JobId::generate());
                ids.insert(
                    queue
                        .submit(job)
                        .await
                        .expect("submit survives the restart")
                        .id()
                        .clone(),
                );
            }
            ids
        })
    };
    eventually(
        Duration::from_secs(30),
        "a third of the jobs to finish",
        || async { finished.load(Ordering::Relaxed) >= JOBS / 3 },
    )
    .await;
    redis.kill().await;
    redis.restart().await;
    let submitted = producer.await.unwrap();
    assert_eq!(submitted.len(), JOBS);
    eventually(
        Duration::from_secs(60),
        "every job to have a terminal event",
        || async {
            let events = events_by_job(&queue, "cli").await;
            submitted
                .iter()
                .all(|id| events.get(id).is_some_and(|e| !terminals(e).is_empty()))
        },
    )
    .await;
    for worker in workers {
        worker.abort();
    }
    let events = events_by_job(&queue, "cli").await;
    for id in &submitted {
        assert_eq!(
            terminals(&events[id]).len(),
            1,
            "job {id} has {:?}",
            events[id]
        );
    }
    assert_eq!(xlen(&queue, queue.keys().jobs()).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_runs_on_a_three_node_redis_cluster() {
    let cluster = RedisCluster::start(3).await;
    let queue = Queue::connect(RedisTarget::Cluster(cluster.urls()), config())
        .await
        .unwrap();
    let mut ids = HashSet::new();
    for i in 0..10 {
        ids.insert(
            queue
                .submit(request(&format!("{i}")))
                .await
                .unwrap()
                .id()
                .clone(),
        );
    }
    let mut crashing = Consumer::new(queue.clone(), "crashing").await.unwrap();
    let mut first = take(&mut crashing, 10, SECONDS_10).await;
    let abandoned = first.pop().unwrap();
    for delivery in first {
        assert_eq!(
            delivery.complete(succeeded()).await.unwrap(),
            Completion::Done
        );
    }
    drop(abandoned);
    drop(crashing);
    let mut survivor = Consumer::new(queue.clone(), "survivor").await.unwrap();
    let reclaimed = take(&mut survivor, 1, SECONDS_10).await.pop().unwrap();
    assert_eq!(reclaimed.deliveries, 2);
    reclaimed.complete(succeeded()).await.unwrap();
    let events = events_by_job(&queue, "cli").await;
    assert_eq!(events.len(), 10);
    for id in &ids {
        assert_eq!(terminals(&events[id]).len(), 1);
    }
}

#[tokio::test]
async fn oversized_payloads_are_refused_at_submit() {
    let redis = RedisServer::start().await;
    let queue = queue_on(
        &redis,
        QueueConfig {
            max_payload_bytes: 400,
            ..config()
        },
    )
    .await;
    let mut big = request(&"a very detailed duck ".repeat(30));
    big.negative_prompt = "blurry ".repeat(20);
    match queue.submit(big).await {
        Err(e @ QueueError::PayloadTooLarge { limit: 400, .. }) => {
            assert!(e.to_string().ends_with("bytes; the limit is 400."), "{e}");
        }
        other => panic!("expected PayloadTooLarge, got {other:?}"),
    }
    assert_eq!(
        xlen(&queue, queue.keys().jobs()).await,
        0,
        "nothing was queued"
    );
}

#[tokio::test]
async fn the_model_catalogue_round_trips_through_redis() {
    let redis = RedisServer::start().await;
    let queue = queue_on(&redis, config()).await;
    assert_eq!(
        queue.models().await.unwrap(),
        ducks_contract::ModelCatalogue::default()
    );
    let catalogue = ducks_contract::ModelCatalogue {
        default_model: Some("tiny-sd".into()),
        models: vec![ducks_contract::ModelInfo {
            description: "Random weights for tests: draws noise.".into(),
            added_at_secs: Some(1_764_000_000),
            tags: vec!["test".into()],
            ..tiny_info()
        }],
        updated_at_ms: 1,
    };
    queue.publish_models(&catalogue).await.unwrap();
    let read = queue.models().await.unwrap();
    assert_eq!(read, catalogue);
    assert_eq!(
        read.get("tiny-sd").unwrap().added_at_secs,
        Some(1_764_000_000)
    );
}

#[tokio::test]
async fn a_restarted_consumer_takes_back_its_own_jobs_without_waiting_for_the_lease() {
    let redis = RedisServer::start().await;
    // A lease far longer than the test: only the restart path can hand the jobs back in time.
    let queue = queue_on(
        &redis,
        QueueConfig {
            lease_ms: 60_000,
            ..config()
        },
    )
    .await;
    for i in 0..2 {
        queue.submit(request(&format!("{i}"))).await.unwrap();
    }
    let mut before = Consumer::new(queue.clone(), "worker-0").await.unwrap();
    let held = take(&mut before, 2, SECONDS_10).await;
    drop(held);
    drop(before);

    let mut after = Consumer::new(queue.clone(), "worker-0").await.unwrap();
    let first = after.next_batch(10).await.unwrap();
    assert_eq!(
        first.len(),
        2,
        "the first read returns the consumer's own pending jobs"
    );
    assert!(first.iter().all(|d| d.deliveries == 2));
    let mut stranger = Consumer::new(queue.clone(), "worker-1").await.unwrap();
    assert!(
        stranger.next_batch(10).await.unwrap().is_empty(),
        "others do not get them"
    );
}

/// The owner of `entry` in the worker group, per XPENDING.
async fn owner_of(queue: &Queue, entry: &str) -> Option<String> {
    let pending: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
        .arg(queue.keys().jobs())
        .arg("workers")
        .arg(entry)
        .arg(entry)
        .arg(1)
        .query_async(&mut queue.connection())
        .await
        .unwrap();
    pending.into_iter().next().map(|(_, owner, _, _)| owner)
}

#[tokio::test]
async fn a_raw_job_id_added_twice_gets_one_terminal_event() {
    let redis = RedisServer::start().await;
    let queue = queue_on(&redis, config()).await;
    let job = r#"{"v":1,"id":"twice","prompt":"p"}"#;
    xadd_raw(&queue, &[("job", job)]).await;
    xadd_raw(&queue, &[("job", job)]).await;
    let mut consumer = Consumer::new(queue.clone(), "w").await.unwrap();
    for delivery in take(&mut consumer, 2, SECONDS_10).await {
        delivery.complete(succeeded()).await.unwrap();
    }
    let events = events_by_job(&queue, "redis").await;
    assert_eq!(terminals(&events[&"twice".parse().unwrap()]).len(), 1);
    assert_eq!(
        xlen(&queue, queue.keys().jobs()).await,
        0,
        "both entries are acknowledged"
    );
}

#[tokio::test]
async fn a_job_cancelled_while_running_does_not_come_back_after_a_failure() {
    let redis = RedisServer::start().await;
    let queue = queue_on(&redis, config()).await;
    let id = queue
        .submit(request("cancel me"))
        .await
        .unwrap()
        .id()
        .clone();
    let mut consumer = Consumer::new(queue.clone(), "w").await.unwrap();
    let delivery = take(&mut consumer, 1, SECONDS_10).await.pop().unwrap();
    assert_eq!(
        queue.cancel(&id, &Caller::Operator).await.unwrap(),
        Cancelled::Requested
    );
    let outcome = delivery
        .fail(FailureCode::StorageUnavailable, "S3 hiccup.".into(), true)
        .await
        .unwrap();
    assert_eq!(outcome, FailResult::Cancelled(Completion::Done));
    assert_eq!(queue.status(&id).await.unwrap().state, JobState::Cancelled);
    let mut conn = queue.connection();
    let delayed: u64 = redis::cmd("ZCARD")
        .arg(queue.keys().delayed())
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(delayed, 0, "nothing waits to be retried");
}

#[tokio::test]
async fn giving_a_job_back_never_steals_it_from_the_worker_that_took_it_over() {
    let redis = RedisServer::start().await;
    let queue = queue_on(&redis, config()).await;
    queue.submit(request("contested")).await.unwrap();
    let mut first = Consumer::new(queue.clone(), "first").await.unwrap();
    let delivery = take(&mut first, 1, SECONDS_10).await.pop().unwrap();
    let entry = delivery.entry_id.clone();
    // As if the first worker had stalled past its lease and a second one reclaimed the job.
    let _: redis::Value = redis::cmd("XCLAIM")
        .arg(queue.keys().jobs())
        .arg("workers")
        .arg("second")
        .arg(0)
        .arg(&entry)
        .query_async(&mut queue.connection())
        .await
        .unwrap();
    delivery.abandon().await.unwrap();
    assert_eq!(owner_of(&queue, &entry).await.as_deref(), Some("second"));
}

#[tokio::test]
async fn prefetched_jobs_keep_their_lease_until_the_worker_takes_them() {
    let redis = RedisServer::start().await;
    let queue = queue_on(&redis, config()).await;
    queue.submit(request("first")).await.unwrap();
    let mut worker = Consumer::new(queue.clone(), "worker").await.unwrap();
    let first = take(&mut worker, 1, SECONDS_10).await.pop().unwrap();
    let second = queue.submit(request("second")).await.unwrap().id().clone();
    // Finishing the first job reads the second one for this worker in the same call.
    first.complete(succeeded()).await.unwrap();
    let mut rival = Consumer::new(queue.clone(), "rival").await.unwrap();
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(3 * config().lease_ms) {
        assert!(
            rival.next_batch(1).await.unwrap().is_empty(),
            "a prefetched job was taken over"
        );
    }
    let taken = take(&mut worker, 1, SECONDS_10).await.pop().unwrap();
    assert_eq!((&taken.id, taken.deliveries), (&second, 1));
}

#[tokio::test]
async fn finishing_a_job_frees_the_requester_slot_whatever_the_worker_settings() {
    let redis = RedisServer::start().await;
    let front = queue_on(
        &redis,
        QueueConfig {
            per_requester_in_flight: 1,
            ..config()
        },
    )
    .await;
    let worker_side = queue_on(
        &redis,
        QueueConfig {
            per_requester_in_flight: 0,
            ..config()
        },
    )
    .await;
    front.submit(request("one")).await.unwrap();
    assert!(matches!(
        front.submit(request("two")).await,
        Err(QueueError::TooManyInFlight { .. })
    ));
    let mut consumer = Consumer::new(worker_side, "w").await.unwrap();
    take(&mut consumer, 1, SECONDS_10)
        .await
        .pop()
        .unwrap()
        .complete(succeeded())
        .await
        .unwrap();
    front
        .submit(request("two"))
        .await
        .expect("the slot was freed");
}
