//! The queue's surface as front ends use it, against real redis-server processes: scoped
//! idempotency, who may cancel, a requester's jobs, per-scope limits, checks against the
//! catalogue, credentials kept off display paths, events that outlive a front end's absence, the
//! one-tail-per-process fan-out, unreadable raw jobs, leases without false alarms, and a chat
//! channel's stream overlay.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ducks_contract::{
    Caller, EventKind, FailureCode, JobEvent, JobId, JobRequest, JobState, ModelCatalogue, Origin,
    Secret, wire,
};
use ducks_queue::{
    Cancelled, Consumer, EventReader, EventTail, OverlayImage, QueueConfig, QueueError,
    ScopeLimits, Submitted,
};
use ducks_tests::RedisServer;

use crate::support::*;

const SECONDS_10: Duration = Duration::from_secs(10);

fn twitch(channel: &str, user: &str) -> JobRequest {
    let mut request = JobRequest::new(
        "a duck",
        Origin::Twitch {
            channel: channel.into(),
            message_id: None,
        },
    );
    request.requester.id = user.into();
    request
}

fn queued(submitted: Submitted) -> JobId {
    match submitted {
        Submitted::Queued { id, .. } => id,
        other => panic!("not queued: {other:?}"),
    }
}

#[tokio::test]
async fn idempotency_keys_are_scoped_to_the_api_client_or_the_requester() {
    let redis = RedisServer::start().await;
    let queue = queue_on(&redis, config()).await;
    let api = |client: &str, user: &str| {
        let mut request = JobRequest::new(
            "a duck",
            Origin::Api {
                client: Some(client.into()),
                webhook: None,
            },
        );
        request.requester.id = user.into();
        request.idempotency_key = Some("order-1".into());
        request
    };
    let first = queued(queue.submit(api("acme", "u1")).await.unwrap());
    assert_eq!(
        queue.submit(api("acme", "u2")).await.unwrap(),
        Submitted::Duplicate { id: first.clone() },
        "one client's key names one job, whoever it acts for"
    );
    let other = queued(queue.submit(api("globex", "u1")).await.unwrap());
    assert_ne!(other, first, "another client's same key is another job");

    let cli = |user: &str| {
        let mut request = request("a duck");
        request.requester.id = user.into();
        request.idempotency_key = Some("k".into());
        request
    };
    let ann = queued(queue.submit(cli("ann")).await.unwrap());
    let bob = queued(queue.submit(cli("bob")).await.unwrap());
    assert_ne!(ann, bob);
    assert_eq!(
        queue.submit(cli("ann")).await.unwrap(),
        Submitted::Duplicate { id: ann }
    );
}

#[tokio::test]
async fn only_the_requester_a_moderator_of_its_scope_or_an_operator_may_cancel() {
    let redis = RedisServer::start().await;
    let queue = queue_on(&redis, config()).await;
    let id = queued(queue.submit(twitch("ducks", "ann")).await.unwrap());
    let refused = [
        Caller::Requester {
            origin_kind: "twitch",
            id: "bob".into(),
        },
        Caller::Requester {
            origin_kind: "discord",
            id: "ann".into(),
        },
        Caller::Moderator {
            origin_kind: "twitch",
            id: "mod".into(),
            scope: twitch("geese", "x").origin.scope(),
        },
    ];
    for caller in refused {
        let error = queue.cancel(&id, &caller).await.unwrap_err();
        assert!(
            matches!(error, QueueError::NotAllowed),
            "{caller:?}: {error:?}"
        );
        assert_eq!(
            error.to_string(),
            "Only the person who asked for this image, or a moderator, can cancel it."
        );
    }
    assert_eq!(queue.status(&id).await.unwrap().state, JobState::Queued);
    let moderator = Caller::Moderator {
        origin_kind: "twitch",
        id: "mod".into(),
        scope: twitch("ducks", "x").origin.scope(),
    };
    assert_eq!(
        queue.cancel(&id, &moderator).await.unwrap(),
        Cancelled::Cancelled
    );
    let own = queued(queue.submit(twitch("ducks", "ann")).await.unwrap());
    let ann = Caller::Requester {
        origin_kind: "twitch",
        id: "ann".into(),
    };
    assert_eq!(
        queue.cancel(&own, &ann).await.unwrap(),
        Cancelled::Cancelled
    );
}

#[tokio::test]
async fn jobs_of_lists_a_requesters_unfinished_jobs_oldest_first() {
    let redis = RedisServer::start().await;
    let queue = queue_on(&redis, config()).await;
    let of = |user: &str| {
        let mut request = request("a duck");
        request.requester.id = user.into();
        request
    };
    let mut ann = Vec::new();
    for _ in 0..3 {
        ann.push(queued(queue.submit(of("ann")).await.unwrap()));
        // Submit times a millisecond apart keep the order observable.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let bob = queued(queue.submit(of("bob")).await.unwrap());
    assert_eq!(queue.jobs_of("cli", "ann").await.unwrap(), ann);

    // One job cancelled before any worker took it, one finished.
    assert_eq!(
        queue.cancel(&ann[1], &Caller::Operator).await.unwrap(),
        Cancelled::Cancelled
    );
    let mut consumer = Consumer::new(queue.clone(), "w").await.unwrap();
    let first = take(&mut consumer, 1, SECONDS_10).await.pop().unwrap();
    assert_eq!(first.id, ann[0]);
    first.complete(succeeded()).await.unwrap();
    assert_eq!(queue.jobs_of("cli", "ann").await.unwrap(), [ann[2].clone()]);
    assert_eq!(queue.jobs_of("cli", "bob").await.unwrap(), [bob]);
    assert!(queue.jobs_of("twitch", "ann").await.unwrap().is_empty());
}

#[tokio::test]
async fn a_scope_limit_stops_a_raid_and_each_refusal_says_when_to_try_again() {
    let redis = RedisServer::start().await;
    let mut scopes = BTreeMap::new();
    scopes.insert(
        "twitch:ducks".to_owned(),
        ScopeLimits {
            in_flight: Some(3),
            ..ScopeLimits::default()
        },
    );
    scopes.insert(
        "twitch:swans".to_owned(),
        ScopeLimits {
            rate: Some(2),
            window_secs: Some(60),
            ..ScopeLimits::default()
        },
    );
    let queue = queue_on(&redis, QueueConfig { scopes, ..config() }).await;
    // A raid: many viewers of one channel, each under their own limits.
    let mut ducks = Vec::new();
    for viewer in 0..3 {
        let request = twitch("ducks", &format!("viewer-{viewer}"));
        ducks.push(queued(queue.submit(request).await.unwrap()));
    }
    let refused = queue.submit(twitch("ducks", "viewer-3")).await.unwrap_err();
    assert!(
        matches!(refused, QueueError::ScopeBusy { .. }),
        "{refused:?}"
    );
    assert_eq!(
        refused.to_string(),
        "This channel already has 3 images in progress (the limit is 3). Try again when one finishes."
    );
    // Other channels are not held up.
    queued(queue.submit(twitch("geese", "viewer-3")).await.unwrap());
    // A finished job frees the channel's slot.
    let mut consumer = Consumer::new(queue.clone(), "w").await.unwrap();
    let first = take(&mut consumer, 1, SECONDS_10).await.pop().unwrap();
    assert_eq!(first.id, ducks[0]);
    first.complete(succeeded()).await.unwrap();
    queued(queue.submit(twitch("ducks", "viewer-3")).await.unwrap());

    for viewer in 0..2 {
        queued(
            queue
                .submit(twitch("swans", &format!("viewer-{viewer}")))
                .await
                .unwrap(),
        );
    }
    let refused = queue.submit(twitch("swans", "viewer-2")).await.unwrap_err();
    let QueueError::ScopeRateLimited { retry_after, .. } = &refused else {
        panic!("expected ScopeRateLimited, got {refused:?}");
    };
    assert!(
        (Duration::from_secs(50)..=Duration::from_secs(60)).contains(retry_after),
        "{retry_after:?}"
    );
    let seconds = retry_after.as_millis().div_ceil(1000);
    assert_eq!(
        refused.to_string(),
        format!("This channel is asking too fast. Try again in {seconds} s.")
    );

    // Without a setting, a Twitch channel takes 10 jobs at once (the built-in default).
    for viewer in 0..10 {
        let request = twitch("herons", &format!("viewer-{viewer}"));
        queued(queue.submit(request).await.unwrap());
    }
    let refused = queue
        .submit(twitch("herons", "viewer-10"))
        .await
        .unwrap_err();
    assert!(
        matches!(refused, QueueError::ScopeBusy { limit: 10, .. }),
        "{refused:?}"
    );
}

#[tokio::test]
async fn submit_checked_refuses_at_once_what_the_model_cannot_draw() {
    let redis = RedisServer::start().await;
    let queue = queue_on(&redis, config()).await;
    let sized = |model: &str, side: u32| {
        let mut request = request("a duck");
        request.model = Some(model.into());
        (request.width, request.height) = (Some(side), Some(side));
        request
    };
    // Before any worker has published a catalogue, the worker checks.
    queued(queue.submit_checked(sized("tiny-sd", 512)).await.unwrap());

    queue
        .publish_models(&ModelCatalogue {
            default_model: Some("tiny-sd".into()),
            models: vec![tiny_info()],
            updated_at_ms: 1,
        })
        .await
        .unwrap();
    let waiting = xlen(&queue, queue.keys().jobs()).await;
    let table = [
        (
            sized("tiny-sd", 512),
            "512x512 is larger than tiny-sd allows (128x128 at most). Try 64x64.",
        ),
        (
            sized("sdxl", 64),
            "There is no model `sdxl`. Available models: tiny-sd.",
        ),
    ];
    for (request, message) in table {
        let refused = queue.submit_checked(request).await.unwrap_err();
        assert!(matches!(refused, QueueError::Refused(_)), "{refused:?}");
        assert_eq!(refused.to_string(), message);
    }
    assert_eq!(
        xlen(&queue, queue.keys().jobs()).await,
        waiting,
        "nothing refused was queued"
    );
    queued(queue.submit_checked(sized("tiny-sd", 128)).await.unwrap());
    let mut default = request("a duck");
    default.steps = Some(151);
    let refused = queue.submit_checked(default).await.unwrap_err();
    assert_eq!(
        refused.to_string(),
        "151 steps is not allowed: use 1 to 150.",
        "the contract's own limits come first"
    );
}

const TOKEN: &str = "discord-interaction-token-never-shown";

fn discord(token: &str) -> JobRequest {
    let mut request = JobRequest::new(
        "a duck",
        Origin::Discord {
            application_id: "1".into(),
            interaction_token: Secret::new(token),
            channel_id: "22".into(),
            guild_id: Some("33".into()),
        },
    );
    request.requester.id = "777".into();
    request
}

#[tokio::test]
async fn status_and_watchers_never_see_the_interaction_token_but_the_bot_does() {
    let redis = RedisServer::start().await;
    let queue = queue_on(&redis, config()).await;
    let tail = EventTail::start(&queue, "discord").await.unwrap();
    let id = JobId::generate();
    let mut watch = tail.watch(&id).await.unwrap();
    let mut request = discord(TOKEN);
    request.id = Some(id.clone());
    queue.submit(request).await.unwrap();

    let mut consumer = Consumer::new(queue.clone(), "w").await.unwrap();
    let delivery = take(&mut consumer, 1, SECONDS_10).await.pop().unwrap();
    assert!(
        wire::encode(&delivery.job).contains(TOKEN),
        "the worker carries the token on to the event stream"
    );
    delivery.complete(succeeded()).await.unwrap();

    let status = queue.status(&id).await.unwrap();
    let shown = serde_json::to_string(&status).unwrap();
    assert!(!shown.contains(TOKEN), "{shown}");
    assert!(shown.contains("\"channel_id\":\"22\""), "{shown}");
    let mut watched = Vec::new();
    while let Some(event) = tokio::time::timeout(SECONDS_10, watch.next())
        .await
        .unwrap()
    {
        watched.push(wire::encode(&event));
    }
    assert_eq!(watched.len(), 2, "queued and succeeded: {watched:?}");
    assert!(watched.iter().all(|e| !e.contains(TOKEN)), "{watched:?}");

    let mut bot = EventReader::new(&queue, "discord", "discord-bot", "bot")
        .await
        .unwrap();
    let entries = bot.next(10, Duration::from_millis(100)).await.unwrap();
    let Origin::Discord {
        interaction_token, ..
    } = &entries[0].event.as_ref().unwrap().origin
    else {
        panic!("a Discord origin");
    };
    assert_eq!(
        interaction_token.expose(),
        TOKEN,
        "the bot can edit its reply"
    );
}

#[tokio::test]
async fn a_front_end_back_after_twenty_thousand_progress_events_gets_every_result_in_order() {
    let redis = RedisServer::start().await;
    let queue = queue_on(&redis, config()).await;
    // The bot has run once (its group exists), then went down.
    drop(
        EventReader::new(&queue, "discord", "discord-bot", "bot-1")
            .await
            .unwrap(),
    );
    let mut consumer = Consumer::new(queue.clone(), "w").await.unwrap();
    let busy = queued(queue.submit(discord("t")).await.unwrap());
    let delivery = take(&mut consumer, 1, SECONDS_10).await.pop().unwrap();
    const STEPS: u32 = 20_000;
    for step in 1..=STEPS {
        delivery
            .publish(EventKind::Progress { step, total: STEPS })
            .await
            .unwrap();
    }
    delivery.complete(succeeded()).await.unwrap();
    // More jobs end while the bot is away: each end is a chance to trim the stream.
    let mut others = Vec::new();
    for _ in 0..5 {
        others.push(queued(queue.submit(discord("t")).await.unwrap()));
        let delivery = take(&mut consumer, 1, SECONDS_10).await.pop().unwrap();
        delivery.complete(succeeded()).await.unwrap();
    }

    let mut bot = EventReader::new(&queue, "discord", "discord-bot", "bot-2")
        .await
        .unwrap();
    let mut by_job: BTreeMap<JobId, Vec<EventKind>> = BTreeMap::new();
    let started = Instant::now();
    while by_job
        .values()
        .filter(|e| e.iter().any(EventKind::is_terminal))
        .count()
        < 6
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "results missing"
        );
        let entries = bot.next(1_000, Duration::from_millis(100)).await.unwrap();
        let ids: Vec<String> = entries.iter().map(|e| e.entry_id.clone()).collect();
        for entry in entries {
            let event = entry.event.unwrap();
            by_job.entry(event.job_id).or_default().push(event.kind);
        }
        bot.ack(&ids).await.unwrap();
    }
    let busy_events = &by_job[&busy];
    assert_eq!(
        busy_events.len(),
        STEPS as usize + 2,
        "every event, none lost"
    );
    assert!(matches!(busy_events[0], EventKind::Queued { .. }));
    for (n, event) in busy_events[1..=STEPS as usize].iter().enumerate() {
        assert_eq!(
            *event,
            EventKind::Progress {
                step: n as u32 + 1,
                total: STEPS
            },
            "in order"
        );
    }
    assert_eq!(busy_events.last(), Some(&succeeded()));
    for id in &others {
        assert_eq!(terminals(&by_job[id]), vec![&succeeded()]);
    }

    // Read by every group, the events go at the next ends (each trims at most 10,000 entries,
    // so no script runs long): the stream does not grow forever.
    let before = xlen(&queue, queue.keys().events("discord")).await;
    for _ in 0..3 {
        queued(queue.submit(discord("t")).await.unwrap());
        let delivery = take(&mut consumer, 1, SECONDS_10).await.pop().unwrap();
        delivery.complete(succeeded()).await.unwrap();
    }
    let after = xlen(&queue, queue.keys().events("discord")).await;
    assert!(
        before > STEPS as u64 && after < 500,
        "{before} events before the trim, {after} after"
    );
}

#[tokio::test]
async fn a_stream_no_group_reads_keeps_its_events_for_the_status_lifetime_only() {
    let redis = RedisServer::start().await;
    let queue = queue_on(
        &redis,
        QueueConfig {
            status_ttl_secs: 1,
            ..config()
        },
    )
    .await;
    let mut consumer = Consumer::new(queue.clone(), "w").await.unwrap();
    for _ in 0..300 {
        queue.submit(request("a duck")).await.unwrap();
    }
    for delivery in take(&mut consumer, 300, SECONDS_10).await {
        delivery.complete(succeeded()).await.unwrap();
    }
    let kept = xlen(&queue, queue.keys().events("cli")).await;
    assert_eq!(kept, 600, "younger than the status lifetime: kept");
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    queue.submit(request("a later duck")).await.unwrap();
    let delivery = take(&mut consumer, 1, SECONDS_10).await.pop().unwrap();
    delivery.complete(succeeded()).await.unwrap();
    let after = xlen(&queue, queue.keys().events("cli")).await;
    assert!(after < 150, "older events went: {after} of {kept} left");
}

#[tokio::test]
async fn a_dead_front_ends_unacknowledged_events_go_to_another_consumer_and_it_is_pruned() {
    let redis = RedisServer::start().await;
    let queue = queue_on(
        &redis,
        QueueConfig {
            event_claim_after_ms: 300,
            dead_consumer_secs: 1,
            ..config()
        },
    )
    .await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(queued(queue.submit(request("a duck")).await.unwrap()));
    }
    let mut dead = EventReader::new(&queue, "cli", "bot", "dead")
        .await
        .unwrap();
    let read = dead.next(10, Duration::from_millis(100)).await.unwrap();
    assert_eq!(read.len(), 3);
    let read_at = Instant::now();
    drop(dead); // It crashed before acknowledging.

    let mut alive = EventReader::new(&queue, "cli", "bot", "alive")
        .await
        .unwrap();
    let mut reclaimed = Vec::new();
    while reclaimed.len() < 3 {
        assert!(read_at.elapsed() < SECONDS_10, "never reclaimed");
        for entry in alive.next(10, Duration::from_millis(50)).await.unwrap() {
            reclaimed.push(entry.event.unwrap().job_id);
        }
    }
    assert!(
        read_at.elapsed() >= Duration::from_millis(300),
        "taken over before event_claim_after_ms"
    );
    assert_eq!(reclaimed, ids);

    let consumers = async || -> Vec<String> {
        let info: Vec<Vec<redis::Value>> = redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg(queue.keys().events("cli"))
            .arg("bot")
            .query_async(&mut queue.connection())
            .await
            .unwrap();
        info.into_iter()
            .filter_map(|fields| {
                let at = fields
                    .iter()
                    .position(|f| matches!(f, redis::Value::BulkString(b) if b == b"name"))?;
                match &fields[at + 1] {
                    redis::Value::BulkString(name) => Some(String::from_utf8_lossy(name).into()),
                    _ => None,
                }
            })
            .collect()
    };
    assert!(consumers().await.contains(&"dead".to_owned()));
    // Silent past dead_consumer_secs with nothing pending: removed at a later reclaim round.
    let started = Instant::now();
    while consumers().await.contains(&"dead".to_owned()) {
        assert!(started.elapsed() < SECONDS_10, "the dead consumer stayed");
        alive.next(10, Duration::from_millis(50)).await.unwrap();
    }
    assert!(consumers().await.contains(&"alive".to_owned()));
}

#[tokio::test]
async fn one_tail_hands_every_watcher_its_own_jobs_events_in_order() {
    let redis = RedisServer::start().await;
    let queue = queue_on(&redis, config()).await;
    let tail = EventTail::start(&queue, "cli").await.unwrap();
    const JOBS: usize = 200;
    let mut watches = Vec::new();
    for _ in 0..JOBS {
        let id = JobId::generate();
        watches.push((id.clone(), tail.watch(&id).await.unwrap()));
        let mut job = request("a duck");
        job.id = Some(id);
        queue.submit(job).await.unwrap();
    }
    let mut consumer = Consumer::new(queue.clone(), "w").await.unwrap();
    for delivery in take(&mut consumer, JOBS, SECONDS_10).await {
        for step in 1..=2 {
            delivery
                .publish(EventKind::Progress { step, total: 2 })
                .await
                .unwrap();
        }
        delivery.complete(succeeded()).await.unwrap();
    }
    for (id, mut watch) in watches {
        let mut kinds = Vec::new();
        while let Some(event) = tokio::time::timeout(SECONDS_10, watch.next())
            .await
            .unwrap()
        {
            assert_eq!(event.job_id, id, "only its own job's events");
            kinds.push(event.kind);
        }
        assert!(matches!(kinds[0], EventKind::Queued { .. }), "{kinds:?}");
        assert_eq!(
            kinds[1..],
            [
                EventKind::Progress { step: 1, total: 2 },
                EventKind::Progress { step: 2, total: 2 },
                succeeded()
            ]
        );
    }
}

#[tokio::test]
async fn a_watch_that_starts_late_begins_with_the_jobs_newest_event() {
    let redis = RedisServer::start().await;
    let queue = queue_on(&redis, config()).await;
    let tail = EventTail::start(&queue, "cli").await.unwrap();
    let id = queued(queue.submit(request("a duck")).await.unwrap());
    let mut consumer = Consumer::new(queue.clone(), "w").await.unwrap();
    let delivery = take(&mut consumer, 1, SECONDS_10).await.pop().unwrap();
    delivery
        .publish(EventKind::Progress { step: 1, total: 2 })
        .await
        .unwrap();
    // Started after the first step: it sees that step, then what follows, each once.
    let mut watch = tail.watch(&id).await.unwrap();
    delivery
        .publish(EventKind::Progress { step: 2, total: 2 })
        .await
        .unwrap();
    delivery.complete(succeeded()).await.unwrap();
    let mut kinds = Vec::new();
    while let Some(event) = tokio::time::timeout(SECONDS_10, watch.next())
        .await
        .unwrap()
    {
        kinds.push(event.kind);
    }
    assert_eq!(
        kinds,
        [
            EventKind::Progress { step: 1, total: 2 },
            EventKind::Progress { step: 2, total: 2 },
            succeeded()
        ]
    );
    // A watch of a finished job gets its end at once.
    let mut ended = tail.watch(&id).await.unwrap();
    assert_eq!(ended.next().await.map(|e| e.kind), Some(succeeded()));
    assert_eq!(ended.next().await, None);
}

#[tokio::test]
async fn nothing_after_a_jobs_end_reaches_its_front_end() {
    let redis = RedisServer::start().await;
    let queue = queue_on(&redis, config()).await;
    let id = queued(queue.submit(request("a duck")).await.unwrap());
    let mut consumer = Consumer::new(queue.clone(), "w").await.unwrap();
    let delivery = take(&mut consumer, 1, SECONDS_10).await.pop().unwrap();
    let event = |kind| {
        wire::encode(&JobEvent {
            job_id: id.clone(),
            at_ms: 1,
            origin: Origin::Cli,
            requester: Default::default(),
            kind,
        })
    };
    delivery.complete(succeeded()).await.unwrap();
    // A stray writer adds a progress event after the end.
    let _: String = redis::cmd("XADD")
        .arg(queue.keys().events("cli"))
        .arg("*")
        .arg("event")
        .arg(event(EventKind::Progress { step: 1, total: 2 }))
        .query_async(&mut queue.connection())
        .await
        .unwrap();
    let mut bot = EventReader::new(&queue, "cli", "bot", "bot").await.unwrap();
    let mut seen = Vec::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(500) {
        for entry in bot.next(10, Duration::from_millis(50)).await.unwrap() {
            seen.push(entry.event.unwrap().kind);
            bot.ack(&[entry.entry_id]).await.unwrap();
        }
    }
    assert!(matches!(seen[0], EventKind::Queued { .. }), "{seen:?}");
    assert_eq!(seen[1..], [succeeded()], "the late progress is left out");
}

#[tokio::test]
async fn an_unreadable_raw_job_is_answered_where_its_id_and_origin_can_be_read() {
    let redis = RedisServer::start().await;
    let queue = queue_on(&redis, config()).await;
    xadd_raw(
        &queue,
        &[("job", r#"{"v":1,"id":"typo-job","promt":"a duck"}"#)],
    )
    .await;
    xadd_raw(
        &queue,
        &[(
            "job",
            r#"{"v":1,"id":"cli-job","origin":{"kind":"cli"},"prompt":"a duck","width":"512"}"#,
        )],
    )
    .await;
    xadd_raw(
        &queue,
        &[("job", r#"{"v":1,"prompt":"a duck","width":"x"}"#)],
    )
    .await;
    xadd_raw(
        &queue,
        &[("job", r#"{"v":1,"id":"cut-off","prompt":"a du"#)],
    )
    .await;
    let mut consumer = Consumer::new(queue.clone(), "w").await.unwrap();
    let started = Instant::now();
    while xlen(&queue, queue.keys().dead_letters()).await < 4 {
        assert!(started.elapsed() < SECONDS_10, "not all dead-lettered");
        assert!(consumer.next_batch(10).await.unwrap().is_empty());
    }
    let answered = |origin: &'static str, id: &'static str| {
        let queue = queue.clone();
        async move {
            let events = events_by_job(&queue, origin).await;
            let id: JobId = id.parse().unwrap();
            match terminals(&events[&id])[..] {
                [
                    EventKind::Failed {
                        code,
                        message,
                        retryable,
                    },
                ] => {
                    assert_eq!((*code, *retryable), (FailureCode::InvalidRequest, false));
                    message.clone()
                }
                ref other => panic!("{other:?}"),
            }
        }
    };
    let message = answered("redis", "typo-job").await;
    assert!(
        message.starts_with(
            "The job message is malformed: unknown field `promt`, expected one of `id`, `prompt`"
        ),
        "{message}"
    );
    assert_eq!(
        answered("cli", "cli-job").await,
        "The job message is malformed: `width`: invalid type: string \"512\", expected u32."
    );
    let status = queue.status(&"typo-job".parse().unwrap()).await.unwrap();
    assert_eq!((status.state, status.request), (JobState::Failed, None));
    // Neither a job without an id nor one cut off before its id is readable can be answered.
    assert_eq!(events_by_job(&queue, "redis").await.len(), 1);
    let dead = stream_entries(&queue, queue.keys().dead_letters()).await;
    let ids: Vec<&str> = dead.iter().map(|(_, f)| f["job_id"].as_str()).collect();
    assert_eq!(ids, ["typo-job", "cli-job", "", ""]);
    assert!(
        dead[3].1["reason"].contains("the JSON ends before it is complete"),
        "{:?}",
        dead[3].1
    );
}

/// A lease renewal that runs just after a job finished must not call its lease lost: the
/// warning is for an operator, and a false one trains them to ignore it.
#[tokio::test]
async fn finished_jobs_never_log_a_lost_lease() {
    let logs = Logs::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    // This test's runtime runs on this one thread, so the subscriber sees every task.
    let _default = tracing::subscriber::set_default(subscriber);
    let redis = RedisServer::start().await;
    // Renewals every 50 ms, while jobs finish in batches: many land just after an end.
    let queue = queue_on(
        &redis,
        QueueConfig {
            lease_ms: 150,
            ..config()
        },
    )
    .await;
    let mut consumer = Consumer::new(queue.clone(), "w").await.unwrap();
    let started = Instant::now();
    let mut finished = 0;
    while started.elapsed() < Duration::from_secs(2) {
        for _ in 0..20 {
            queue.submit(request("a duck")).await.unwrap();
        }
        let batch = take(&mut consumer, 20, SECONDS_10).await;
        let ends = batch.into_iter().map(|d| d.complete(succeeded()));
        for end in futures_util::future::join_all(ends).await {
            assert_eq!(end.unwrap(), ducks_queue::Completion::Done);
            finished += 1;
        }
    }
    let text = logs.text();
    assert!(finished >= 100, "{finished} jobs");
    assert!(!text.contains("Lost the lease"), "{text}");
    assert!(!text.contains("ended elsewhere"), "{text}");
}

/// Log output gathered in memory.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for Logs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Logs;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// The edit turn of a chat front end's reply (`Queue::begin_reply_edit`): what lets bot replicas
/// share one job's message without a late progress edit overwriting the result.
#[tokio::test]
async fn reply_edit_turns_keep_progress_from_overwriting_a_result() {
    use ducks_queue::EditTurn;
    let server = RedisServer::start().await;
    let queue = queue_on(&server, config()).await;
    let other_replica = queue_on(&server, config()).await;
    let job: JobId = "reply-turns".parse().unwrap();
    let lease = Duration::from_secs(10);

    // One progress edit at a time, whichever replica asks.
    let turn = |q: &ducks_queue::Queue, editor: &'static str, result: bool| {
        let q = q.clone();
        let job = job.clone();
        async move {
            q.begin_reply_edit("discord", &job, editor, lease, result)
                .await
                .unwrap()
        }
    };
    assert_eq!(turn(&queue, "a#1", false).await, EditTurn::Granted);
    assert_eq!(turn(&other_replica, "b#1", false).await, EditTurn::Busy);

    // The result closes the reply to progress at once, but waits for the edit in flight.
    assert_eq!(turn(&other_replica, "b#2", true).await, EditTurn::Busy);
    assert_eq!(turn(&queue, "a#3", false).await, EditTurn::Finished);
    queue
        .end_reply_edit("discord", &job, "a#1", false)
        .await
        .unwrap();
    assert_eq!(turn(&other_replica, "b#2", true).await, EditTurn::Granted);
    assert_eq!(turn(&queue, "a#4", false).await, EditTurn::Finished);
    other_replica
        .end_reply_edit("discord", &job, "b#2", true)
        .await
        .unwrap();

    // A result read again (a reclaimed event) is not sent twice.
    assert_eq!(turn(&queue, "a#5", true).await, EditTurn::Delivered);
    let reply = queue.reply("discord", &job).await.unwrap();
    assert!(reply.delivered);

    // What a front end remembers stays beside the turn's own fields, which it never sees.
    queue
        .remember_reply("discord", &job, &[("message", "42")])
        .await
        .unwrap();
    let reply = queue.reply("discord", &job).await.unwrap();
    assert_eq!(reply.fields.len(), 1, "{:?}", reply.fields);
    assert_eq!(reply.fields["message"], "42");

    // A turn whose holder died lapses with its lease.
    let stuck: JobId = "reply-stuck".parse().unwrap();
    assert_eq!(
        queue
            .begin_reply_edit(
                "discord",
                &stuck,
                "dead#1",
                Duration::from_millis(200),
                false
            )
            .await
            .unwrap(),
        EditTurn::Granted
    );
    let started = Instant::now();
    loop {
        let turn = other_replica
            .begin_reply_edit("discord", &stuck, "b#9", lease, true)
            .await
            .unwrap();
        if turn == EditTurn::Granted {
            break;
        }
        assert_eq!(turn, EditTurn::Busy);
        assert!(
            started.elapsed() < SECONDS_10,
            "the lapsed turn was never given"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(started.elapsed() >= Duration::from_millis(100));
}

/// The chat sending budget (`Queue::take_send_budget`): replicas share it, and it never lets
/// more than the limit through in any window.
#[tokio::test]
async fn a_sending_budget_is_shared_by_replicas_and_never_exceeded() {
    let server = RedisServer::start().await;
    let one = queue_on(&server, config()).await;
    let two = queue_on(&server, config()).await;
    let window = Duration::from_millis(600);
    let mut granted = Vec::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(2) {
        for queue in [&one, &two] {
            match queue
                .take_send_budget("twitch:ducksbot:#ducks", window, 5)
                .await
                .unwrap()
            {
                None => granted.push(Instant::now()),
                Some(wait) => assert!(wait <= window, "{wait:?}"),
            }
        }
    }
    // More than one window's worth went out, and no window held more than five. The times are the
    // client's, a little after Redis granted each: a margin covers the replies' delays.
    assert!(granted.len() > 5, "{}", granted.len());
    let checked = window - Duration::from_millis(50);
    for (n, at) in granted.iter().enumerate() {
        let in_window = granted[n..]
            .iter()
            .take_while(|later| later.duration_since(*at) < checked)
            .count();
        assert!(in_window <= 5, "{in_window} sends within {checked:?}");
    }
    // Another account's budget is its own.
    assert_eq!(
        one.take_send_budget("twitch:ducksbot:#other", window, 5)
            .await
            .unwrap(),
        None
    );
}

fn overlay_image(job: &str, image: u32) -> OverlayImage {
    OverlayImage {
        job: job.into(),
        url: format!("https://ducks.example/i/{job}-{image}"),
        width: 512,
        height: 768,
        requester: "DuckFan".into(),
        prompt: format!("duck {job}"),
        model: "tiny-sd".into(),
        at_ms: 1_718_000_000_000,
    }
}

fn jobs_of(images: &[OverlayImage]) -> Vec<String> {
    images.iter().map(|image| image.job.clone()).collect()
}

/// A channel's overlay (`Queue::add_to_overlay`, `Queue::overlay`): a redelivered result shows
/// once while a job's other images show too, the newest 50 are kept, and a cursor answers what
/// came after it, oldest first, page by page without missing one.
#[tokio::test]
async fn an_overlay_shows_a_redelivered_image_once_keeps_fifty_and_follows_its_cursor() {
    let server = RedisServer::start().await;
    let queue = queue_on(&server, config()).await;
    let (none, start) = queue.overlay("twitch", "ducks", None, 10).await.unwrap();
    assert!(none.is_empty());

    let first = overlay_image("job-a", 0);
    for _ in 0..3 {
        queue
            .add_to_overlay("twitch", "ducks", &first)
            .await
            .unwrap();
    }
    let second = overlay_image("job-a", 1);
    queue
        .add_to_overlay("twitch", "ducks", &second)
        .await
        .unwrap();
    let (images, cursor) = queue
        .overlay("twitch", "ducks", Some(&start), 10)
        .await
        .unwrap();
    assert_eq!(images, [first.clone(), second.clone()], "each image once");
    let (newest, newest_cursor) = queue.overlay("twitch", "ducks", None, 1).await.unwrap();
    assert_eq!((newest, &newest_cursor), (vec![second.clone()], &cursor));
    let (nothing, same) = queue
        .overlay("twitch", "ducks", Some(&cursor), 10)
        .await
        .unwrap();
    assert!(nothing.is_empty());
    assert_eq!(same, cursor, "nothing new keeps the cursor");
    assert!(
        queue
            .overlay("twitch", "other", None, 10)
            .await
            .unwrap()
            .0
            .is_empty(),
        "each channel has its own overlay"
    );
    assert!(
        queue
            .overlay("discord", "ducks", None, 10)
            .await
            .unwrap()
            .0
            .is_empty(),
        "and each front end"
    );

    // 60 more: the newest 50 stay, and an image still kept is not shown again.
    for n in 0..60 {
        let image = overlay_image(&format!("job-{n:02}"), 0);
        queue
            .add_to_overlay("twitch", "ducks", &image)
            .await
            .unwrap();
    }
    queue
        .add_to_overlay("twitch", "ducks", &overlay_image("job-59", 0))
        .await
        .unwrap();
    let kept: Vec<String> = (10..60).map(|n| format!("job-{n:02}")).collect();
    let (all, last) = queue.overlay("twitch", "ducks", None, 500).await.unwrap();
    assert_eq!(jobs_of(&all), kept, "the newest 50, oldest first");
    let length: usize = redis::cmd("XLEN")
        .arg(queue.keys().overlay("twitch", "ducks"))
        .query_async(&mut queue.connection())
        .await
        .unwrap();
    assert_eq!(length, 50);

    // From a cursor whose image has left: every kept image, in pages that miss none.
    let mut paged = Vec::new();
    let mut after = cursor;
    loop {
        let (page, next) = queue
            .overlay("twitch", "ducks", Some(&after), 20)
            .await
            .unwrap();
        assert!(page.len() <= 20);
        if page.is_empty() {
            assert_eq!(next, after);
            break;
        }
        paged.extend(page);
        after = next;
    }
    assert_eq!(jobs_of(&paged), kept);
    assert_eq!(after, last);

    // Forgotten a week after the last image.
    let ttl: i64 = redis::cmd("TTL")
        .arg(queue.keys().overlay("twitch", "ducks"))
        .query_async(&mut queue.connection())
        .await
        .unwrap();
    assert!((7 * 24 * 3600 - 60..=7 * 24 * 3600).contains(&ttl), "{ttl}");

    // Names that are no channel's, and cursors that are no cursor, are refused with a reason.
    for channel in ["", "Ducks", "ducks:*", "{main}", &"d".repeat(26)] {
        let refused = queue
            .add_to_overlay("twitch", channel, &first)
            .await
            .unwrap_err();
        assert!(matches!(refused, QueueError::Invalid(_)), "{channel:?}");
        assert!(refused.to_string().contains("login"), "{refused}");
    }
    for cursor in ["$", "+", "0", "99999999999999999999-0", "1-2-3"] {
        let refused = queue
            .overlay("twitch", "ducks", Some(cursor), 10)
            .await
            .unwrap_err();
        assert!(matches!(refused, QueueError::Invalid(_)), "{cursor:?}");
        assert!(refused.to_string().contains("cursor"), "{refused}");
    }
}
