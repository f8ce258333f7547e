//! An S3-protocol server inside the process: [s3s] over a folder ([s3s_fs]), SigV4 checked, for
//! `ducks dev`, `ducks demo` and the test harness. Clients talk to it with the same `aws-sdk-s3`
//! code, signing and presigned links as in production; only the server is small.

use std::io;
use std::path::Path;

use hyper::body::Incoming;
use hyper::service::Service;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::auth::SimpleAuth;
use s3s::service::{S3Service, S3ServiceBuilder};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// The S3 service over `root` (one folder per bucket), accepting only `access_key`/`secret_key`.
pub fn service(root: &Path, access_key: &str, secret_key: &str) -> io::Result<S3Service> {
    let fs = s3s_fs::FileSystem::new(root).map_err(|e| io::Error::other(format!("{e:?}")))?;
    let mut builder = S3ServiceBuilder::new(fs);
    builder.set_auth(SimpleAuth::from_single(access_key, secret_key));
    Ok(builder.build())
}

/// Serves `service` (the S3 service, a wrapper around it, or any other hyper service such as the
/// test harness's Kubernetes API) on `listener` until `shutdown` resolves, then drops the listener
/// and aborts every open connection.
pub async fn serve<S, B>(listener: TcpListener, service: S, shutdown: impl Future<Output = ()>)
where
    S: Service<hyper::Request<Incoming>, Response = hyper::Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let http = ConnBuilder::new(TokioExecutor::new());
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => {
                // Accept errors (a reset before accept, no file descriptors) only affect that
                // connection.
                let Ok((stream, _)) = accepted else { continue };
                let http = http.clone();
                let service = service.clone();
                connections.spawn(async move {
                    // A client hanging up mid-request is not a server failure.
                    let _ = http.serve_connection(TokioIo::new(stream), service).await;
                });
            }
            // Reap finished connections so the set does not grow forever.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    connections.shutdown().await;
}
