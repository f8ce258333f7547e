//! With no worker running (a deployment scaled to zero), nothing waits on one: the always-on API
//! moves retries whose backoff ended back into the jobs stream, where a scaler sees them, and
//! publishes the model catalogue from S3, so a model imported meanwhile can be asked for.

use std::time::Duration;

use ducks_api::{ApiConfig, RunningApi};
use ducks_contract::FailureCode;
use ducks_contract::links::LinkConfig;
use ducks_queue::{Consumer, FailResult, Queue, QueueConfig};
use ducks_tests::{RedisServer, tiny_bucket};

use crate::support::{eventually, queue_on, quick, submit, take};

const LIMIT: Duration = Duration::from_secs(30);

fn api_config() -> ApiConfig {
    ApiConfig {
        listen: "127.0.0.1:0".into(),
        open: true,
        catalogue_refresh_secs: 1,
        ..ApiConfig::default()
    }
}

/// Entries of the jobs stream that carry job `id`.
async fn stream_entries_of(queue: &Queue, id: &str) -> usize {
    crate::support::stream_entries(queue, queue.keys().jobs())
        .await
        .iter()
        .filter(|(_, fields)| fields.values().any(|v| v.contains(id)))
        .count()
}

async fn delayed(queue: &Queue) -> u64 {
    redis::cmd("ZCARD")
        .arg(queue.keys().delayed())
        .query_async(&mut queue.connection())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_brings_retries_back_and_publishes_models_while_no_worker_runs() {
    let redis = RedisServer::start().await;
    let (_s3, _s3_config, storage) = tiny_bucket().await;
    let queue = queue_on(
        &redis,
        QueueConfig {
            retry_base_ms: 300,
            retry_max_ms: 300,
            ..crate::support::config()
        },
    )
    .await;

    // A worker takes a job, fails it in a way a retry can fix, and goes away.
    let id = submit(&queue, quick("a duck")).await;
    {
        let mut worker = Consumer::new(queue.clone(), "last-worker").await.unwrap();
        let delivery = take(&mut worker, 1, LIMIT).await.pop().unwrap();
        let failed = delivery
            .fail(
                FailureCode::RunnerCrashed,
                "the node went away".into(),
                true,
            )
            .await
            .unwrap();
        assert!(matches!(failed, FailResult::Retrying { .. }));
    }
    assert_eq!(delayed(&queue).await, 1);
    assert_eq!(stream_entries_of(&queue, id.as_str()).await, 0);
    // Past its backoff, with no worker, nothing brings it back: a scaler would see no work.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(delayed(&queue).await, 1, "nothing promoted it yet");
    assert!(queue.models().await.unwrap().models.is_empty());

    let api = RunningApi::start(
        queue.clone(),
        storage.clone(),
        api_config(),
        LinkConfig::default(),
    )
    .await
    .expect("the API starts");
    eventually(LIMIT, "the retry is back in the jobs stream", || async {
        stream_entries_of(&queue, id.as_str()).await == 1 && delayed(&queue).await == 0
    })
    .await;
    eventually(LIMIT, "the catalogue lists tiny-sd", || async {
        queue
            .models()
            .await
            .unwrap()
            .models
            .iter()
            .any(|m| m.id == "tiny-sd")
    })
    .await;

    // A model added to the bucket while no worker runs is published by the API.
    ducks_runner::tiny::seed(&storage, "tiny-two")
        .await
        .unwrap();
    eventually(LIMIT, "the catalogue lists the new model", || async {
        queue
            .models()
            .await
            .unwrap()
            .models
            .iter()
            .any(|m| m.id == "tiny-two")
    })
    .await;
    api.stop().await;
}
