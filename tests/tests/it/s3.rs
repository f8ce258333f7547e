//! Tests of the embedded S3 server harness ([`S3Server`]) with the real
//! `aws-sdk-s3` client: what the runner and `ducks dev` rely on (metadata
//! round trips, listing, request counts, SigV4, presigned URLs, "S3 down").

use std::future::Future;
use std::time::Duration;

use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use ducks_tests::{S3Server, http_get};

/// Deadline for every wait in these tests.
const WAIT: Duration = Duration::from_secs(30);

const BUCKET: &str = "ducks";

/// Runs `fut` with the [`WAIT`] deadline.
async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: no result within {WAIT:?}"))
}

async fn server_with_bucket() -> S3Server {
    let server = S3Server::start().await;
    server.create_bucket(BUCKET).await;
    server
}

async fn put(client: &aws_sdk_s3::Client, key: &str, body: &[u8]) {
    within(
        "put_object",
        client
            .put_object()
            .bucket(BUCKET)
            .key(key)
            .body(ByteStream::from(body.to_vec()))
            .send(),
    )
    .await
    .unwrap_or_else(|e| panic!("put {key}: {}", DisplayErrorContext(&e)));
}

/// GETs `key` and reads the whole body.
async fn get(client: &aws_sdk_s3::Client, key: &str) -> Vec<u8> {
    within("get_object", async {
        let out = client
            .get_object()
            .bucket(BUCKET)
            .key(key)
            .send()
            .await
            .unwrap_or_else(|e| panic!("get {key}: {}", DisplayErrorContext(&e)));
        out.body
            .collect()
            .await
            .unwrap_or_else(|e| panic!("read body of {key}: {e}"))
            .to_vec()
    })
    .await
}

#[tokio::test]
async fn start_gives_each_server_its_own_port_and_empty_folder() {
    let a = S3Server::start().await;
    let b = S3Server::start().await;
    assert_ne!(a.endpoint(), b.endpoint());
    assert_eq!(a.endpoint(), format!("http://127.0.0.1:{}", a.port()));
    assert_ne!(a.root(), b.root());
    assert_eq!(a.region(), "us-east-1");
    assert!(!a.access_key().is_empty() && !a.secret_key().is_empty());
    let entries = std::fs::read_dir(a.root()).expect("read root").count();
    assert_eq!(entries, 0, "start creates no bucket");

    a.create_bucket("only-in-a").await;
    assert!(a.root().join("only-in-a").is_dir(), "a bucket is a folder");
    let listed = within("list_buckets", b.client().list_buckets().send())
        .await
        .expect("list buckets on b");
    assert!(listed.buckets().is_empty(), "b has its own folder");
}

#[tokio::test]
async fn put_then_get_keeps_bytes_content_type_and_metadata() {
    let server = server_with_bucket().await;
    let client = server.client();
    let body: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();

    let put = within(
        "put_object",
        client
            .put_object()
            .bucket(BUCKET)
            .key("images/job-1/0.png")
            .content_type("image/png")
            .metadata("job-id", "job-1")
            .metadata("seed", "42")
            .body(ByteStream::from(body.clone()))
            .send(),
    )
    .await
    .unwrap_or_else(|e| panic!("put: {}", DisplayErrorContext(&e)));
    let put_etag = put.e_tag().expect("put returns an ETag").to_owned();

    let got = within(
        "get_object",
        client
            .get_object()
            .bucket(BUCKET)
            .key("images/job-1/0.png")
            .send(),
    )
    .await
    .unwrap_or_else(|e| panic!("get: {}", DisplayErrorContext(&e)));
    assert_eq!(got.content_type(), Some("image/png"));
    assert_eq!(got.content_length(), Some(100_000));
    assert_eq!(got.e_tag(), Some(put_etag.as_str()), "same ETag as the PUT");
    let metadata = got.metadata().expect("user metadata comes back");
    assert_eq!(metadata.get("job-id").map(String::as_str), Some("job-1"));
    assert_eq!(metadata.get("seed").map(String::as_str), Some("42"));
    assert_eq!(metadata.len(), 2, "{metadata:?}");
    let bytes = within("read body", got.body.collect())
        .await
        .expect("read body")
        .into_bytes();
    assert_eq!(bytes.as_ref(), body.as_slice());

    // HEAD sees the same attributes.
    let head = within(
        "head_object",
        client
            .head_object()
            .bucket(BUCKET)
            .key("images/job-1/0.png")
            .send(),
    )
    .await
    .unwrap_or_else(|e| panic!("head: {}", DisplayErrorContext(&e)));
    assert_eq!(head.content_type(), Some("image/png"));
    assert_eq!(head.content_length(), Some(100_000));
    assert_eq!(head.e_tag(), Some(put_etag.as_str()));

    // The object is a plain file under root().
    let on_disk = std::fs::read(server.object_path(BUCKET, "images/job-1/0.png"))
        .expect("the object is a file under root");
    assert_eq!(on_disk, body);

    // A missing key is NoSuchKey.
    let err = within(
        "get_object",
        client.get_object().bucket(BUCKET).key("images/nope").send(),
    )
    .await
    .expect_err("missing key");
    assert!(
        err.as_service_error().is_some_and(|e| e.is_no_such_key()),
        "{}",
        DisplayErrorContext(&err)
    );
}

#[tokio::test]
async fn list_objects_v2_filters_by_prefix() {
    let server = server_with_bucket().await;
    let client = server.client();
    for key in [
        "models/tiny-sd/unet.safetensors",
        "models/tiny-sd/vae.safetensors",
        "models/other/unet.safetensors",
        "images/job-1/0.png",
    ] {
        put(&client, key, key.as_bytes()).await;
    }

    let listed = within(
        "list_objects_v2",
        client
            .list_objects_v2()
            .bucket(BUCKET)
            .prefix("models/tiny-sd/")
            .send(),
    )
    .await
    .unwrap_or_else(|e| panic!("list: {}", DisplayErrorContext(&e)));
    let keys: Vec<&str> = listed.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(
        keys,
        [
            "models/tiny-sd/unet.safetensors",
            "models/tiny-sd/vae.safetensors"
        ]
    );
    assert_eq!(listed.key_count(), Some(2));
    let sizes: Vec<Option<i64>> = listed.contents().iter().map(|o| o.size()).collect();
    assert_eq!(sizes, [Some(31), Some(30)]);

    let all = within(
        "list_objects_v2",
        client.list_objects_v2().bucket(BUCKET).send(),
    )
    .await
    .unwrap_or_else(|e| panic!("list: {}", DisplayErrorContext(&e)));
    assert_eq!(all.contents().len(), 4, "the side files are not objects");
}

#[tokio::test]
async fn get_count_increases_by_exactly_one_per_get_object() {
    let server = server_with_bucket().await;
    let client = server.client();
    put(&client, "models/tiny-sd/unet.safetensors", b"weights").await;
    put(&client, "models/other/unet.safetensors", b"other").await;
    assert_eq!(server.requests("PUT", "models/"), 2);
    assert_eq!(server.requests("GET", "models/"), 0);

    server.reset_counts();
    assert_eq!(server.requests("PUT", "models/"), 0);
    for n in 1..=3 {
        assert_eq!(
            get(&client, "models/tiny-sd/unet.safetensors").await,
            b"weights"
        );
        assert_eq!(server.requests("GET", "models/tiny-sd/"), n);
    }
    assert_eq!(
        server.requests("get", "models/tiny-sd/"),
        3,
        "method is case-insensitive"
    );
    assert_eq!(server.requests("GET", "models/other/"), 0);
    assert_eq!(server.requests("GET", ""), 3);

    // Neither HEAD nor a listing counts as a GET of a key.
    within(
        "head_object",
        client
            .head_object()
            .bucket(BUCKET)
            .key("models/tiny-sd/unet.safetensors")
            .send(),
    )
    .await
    .expect("head");
    within(
        "list_objects_v2",
        client
            .list_objects_v2()
            .bucket(BUCKET)
            .prefix("models/tiny-sd/")
            .send(),
    )
    .await
    .expect("list");
    assert_eq!(server.requests("GET", "models/tiny-sd/"), 3);
    assert_eq!(server.requests("HEAD", "models/tiny-sd/"), 1);

    // A failed GET is still a request.
    let _ = within(
        "get_object",
        client
            .get_object()
            .bucket(BUCKET)
            .key("models/tiny-sd/missing")
            .send(),
    )
    .await
    .expect_err("missing key");
    assert_eq!(server.requests("GET", "models/tiny-sd/"), 4);
}

#[tokio::test]
async fn wrong_secret_is_rejected() {
    let server = server_with_bucket().await;
    let config = server
        .client_config()
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            server.access_key(),
            "not-the-secret",
            None,
            None,
            "wrong",
        ))
        .build();
    let wrong = aws_sdk_s3::Client::from_conf(config);

    let err = within(
        "put_object",
        wrong
            .put_object()
            .bucket(BUCKET)
            .key("forged")
            .body(ByteStream::from_static(b"x"))
            .send(),
    )
    .await
    .expect_err("a wrong secret must be rejected");
    let status = err.raw_response().map(|r| r.status().as_u16());
    assert!(
        err.code() == Some("SignatureDoesNotMatch") || status == Some(403),
        "code {:?}, status {status:?}: {}",
        err.code(),
        DisplayErrorContext(&err)
    );
    assert!(
        !server.object_path(BUCKET, "forged").exists(),
        "nothing was written"
    );

    let err = within(
        "get_object",
        wrong.get_object().bucket(BUCKET).key("anything").send(),
    )
    .await
    .expect_err("a wrong secret must be rejected");
    assert_eq!(
        err.code(),
        Some("SignatureDoesNotMatch"),
        "{}",
        DisplayErrorContext(&err)
    );
}

#[tokio::test]
async fn presigned_get_works_over_plain_http() {
    let server = server_with_bucket().await;
    let client = server.client();
    let body = b"\x89PNG\r\n\x1a\n not really a png".to_vec();
    within(
        "put_object",
        client
            .put_object()
            .bucket(BUCKET)
            .key("images/job-7/0.png")
            .content_type("image/png")
            .body(ByteStream::from(body.clone()))
            .send(),
    )
    .await
    .expect("put");

    let presigned = client
        .get_object()
        .bucket(BUCKET)
        .key("images/job-7/0.png")
        .presigned(PresigningConfig::expires_in(Duration::from_secs(600)).expect("expiry"))
        .await
        .expect("presign");
    let url = presigned.uri().to_owned();
    assert!(
        url.starts_with(&format!(
            "{}/{BUCKET}/images/job-7/0.png?",
            server.endpoint()
        )),
        "{url}"
    );
    assert!(url.contains("X-Amz-Signature="), "{url}");

    server.reset_counts();
    let response = http_get(&url).await.expect("fetch the presigned URL");
    assert_eq!(
        response.status,
        200,
        "{}",
        String::from_utf8_lossy(&response.body)
    );
    assert_eq!(response.body, body);
    assert_eq!(response.header("content-type"), Some("image/png"));
    assert_eq!(server.requests("GET", "images/job-7/"), 1);

    // The signature covers the key: pointing the URL elsewhere is refused.
    let tampered = url.replace("/0.png?", "/1.png?");
    let response = http_get(&tampered).await.expect("fetch the tampered URL");
    assert_eq!(response.status, 403);

    // Without any signature, the server refuses anonymous access.
    let unsigned = url.split('?').next().expect("url has a path");
    let response = http_get(unsigned).await.expect("fetch without signature");
    assert_eq!(response.status, 403);
}

#[tokio::test]
async fn stop_makes_the_endpoint_refuse_connections() {
    let mut server = server_with_bucket().await;
    // No retries, so the failure is reported at once.
    let client = aws_sdk_s3::Client::from_conf(
        server
            .client_config()
            .retry_config(aws_sdk_s3::config::retry::RetryConfig::disabled())
            .build(),
    );
    put(&client, "k", b"v").await;
    // This client now holds a pooled keep-alive connection to the server.
    assert_eq!(get(&client, "k").await, b"v");

    within("stop", server.stop()).await;
    within("second stop", server.stop()).await;

    let refused = within(
        "connect",
        tokio::net::TcpStream::connect(("127.0.0.1", server.port())),
    )
    .await
    .expect_err("the listener is closed");
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);

    let err = within(
        "get_object",
        client.get_object().bucket(BUCKET).key("k").send(),
    )
    .await
    .expect_err("S3 is down");
    assert!(
        matches!(err, SdkError::DispatchFailure(_)),
        "expected a connection error: {}",
        DisplayErrorContext(&err)
    );

    // A fresh client fails the same way.
    let err = within(
        "get_object",
        server.client().get_object().bucket(BUCKET).key("k").send(),
    )
    .await
    .expect_err("S3 is down");
    match &err {
        SdkError::DispatchFailure(failure) => assert!(failure.is_io(), "{failure:?}"),
        other => panic!(
            "expected a connection error: {}",
            DisplayErrorContext(other)
        ),
    }

    // The data stays on disk.
    assert_eq!(
        std::fs::read(server.object_path(BUCKET, "k")).expect("object file"),
        b"v"
    );
}

/// Documents what a test sees after corrupting an object's file under
/// `root()`: s3s-fs keeps the ETag and the CRC32 the SDK sent with the PUT in
/// a side file, and the SDK validates that CRC32 on GET, so the corruption
/// surfaces as a checksum error while reading the body. Without the side
/// file the corrupt bytes are served as they are.
#[tokio::test]
async fn corrupting_a_file_under_root() {
    let server = server_with_bucket().await;
    let client = server.client();
    put(&client, "models/w.bin", b"original weights").await;
    std::fs::write(
        server.object_path(BUCKET, "models/w.bin"),
        b"CORRUPT weights!",
    )
    .expect("corrupt the object file");

    let out = within(
        "get_object",
        client
            .get_object()
            .bucket(BUCKET)
            .key("models/w.bin")
            .send(),
    )
    .await
    .unwrap_or_else(|e| panic!("get: {}", DisplayErrorContext(&e)));
    assert!(
        out.checksum_crc32().is_some(),
        "the stored CRC32 is returned"
    );
    let err = within("read body", out.body.collect())
        .await
        .expect_err("the SDK checks the CRC32 of the body");
    assert!(format!("{err:?}").contains("ChecksumMismatch"), "{err:?}");

    // Remove s3s-fs's side files with the ETag and checksums.
    for entry in std::fs::read_dir(server.root()).expect("read root") {
        let path = entry.expect("root entry").path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if name.starts_with(".bucket-") && name.ends_with(".internal.json") {
            std::fs::remove_file(&path).expect("remove side file");
        }
    }
    assert_eq!(get(&client, "models/w.bin").await, b"CORRUPT weights!");
}
