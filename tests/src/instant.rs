//! [`instant_worker`]: a stand-in for the worker where a test or benchmark is about a front end,
//! not images: it finishes every job the moment it takes it, with one image record (no runner,
//! no S3), so a result follows its request within milliseconds.

use ducks_contract::{EventKind, ImageRef, JobId, Timings};
use ducks_queue::{Consumer, Queue};
use tokio::task::JoinHandle;

/// Takes jobs from `queue` and completes each at once; `finished` hears every job it completed.
pub fn instant_worker(queue: Queue, finished: impl Fn(JobId) + Send + 'static) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut consumer = Consumer::new(queue, "instant")
            .await
            .expect("the stand-in worker joins the queue");
        loop {
            let batch = consumer.next_batch(64).await.expect("the queue answers");
            for delivery in batch {
                let id = delivery.id.clone();
                let image = ImageRef {
                    key: format!("images/{id}/0.png"),
                    url: format!("http://s3.invalid/ducks/images/{id}/0.png"),
                    width: 64,
                    height: 64,
                    seed: 7,
                };
                delivery
                    .complete(EventKind::Succeeded {
                        images: vec![image],
                        timings: Timings::default(),
                    })
                    .await
                    .expect("the job completes");
                finished(id);
            }
        }
    })
}
