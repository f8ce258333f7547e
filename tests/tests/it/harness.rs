//! Tests of the harness itself: if these fail, every other test's verdict
//! is meaningless, so they check the properties the suite relies on (a real
//! server, crash-safe AOF, no leaked processes, a working cluster).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use ducks_tests::{RedisCluster, RedisOptions, RedisServer};
use redis::AsyncCommands;
use redis::cluster::ClusterClient;

/// Deadline for the polls in these tests.
const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn start_answers_ping_on_its_own_port() {
    let a = RedisServer::start().await;
    let b = RedisServer::start().await;
    assert_ne!(a.port(), 6379, "must never use the shared instance");
    assert_ne!(a.port(), b.port(), "each server gets its own port");
    assert_eq!(a.url(), format!("redis://127.0.0.1:{}/", a.port()));

    let mut con = a.client().await;
    let pong: String = redis::cmd("PING")
        .query_async(&mut con)
        .await
        .expect("PING the harness server");
    assert_eq!(pong, "PONG");

    // The two servers are separate processes with separate data.
    let () = con.set("only-in-a", 1).await.expect("SET on server a");
    let mut con_b = b.client().await;
    let seen: Option<i64> = con_b.get("only-in-a").await.expect("GET on server b");
    assert_eq!(seen, None);
}

#[tokio::test]
async fn aof_data_survives_kill_and_restart() {
    let mut server = RedisServer::start_with(RedisOptions { aof: true }).await;
    let port = server.port();
    let mut con = server.client().await;
    let () = con
        .set("job:1", "queued")
        .await
        .expect("SET before the crash");
    let id: String = con
        .xadd("jobs", "*", &[("prompt", "a duck")])
        .await
        .expect("XADD before the crash");

    let pid = server.pid().expect("a started server has a pid");
    server.kill().await;
    assert_eq!(server.pid(), None);
    assert!(!process_exists(pid), "SIGKILL must have ended pid {pid}");

    server.restart().await;
    assert_eq!(server.port(), port, "restart keeps the port");
    assert_ne!(server.pid(), Some(pid), "restart runs a new process");
    let mut con = server.client().await;
    let value: Option<String> = con.get("job:1").await.expect("GET after restart");
    assert_eq!(value.as_deref(), Some("queued"));
    let entries: redis::streams::StreamRangeReply =
        con.xrange_all("jobs").await.expect("XRANGE after restart");
    let ids: Vec<&str> = entries.ids.iter().map(|entry| entry.id.as_str()).collect();
    assert_eq!(ids, [id.as_str()]);
}

#[tokio::test]
async fn without_aof_a_restart_loses_everything() {
    // Guards the default: tests that do not ask for persistence must not get
    // it by accident (e.g. an RDB snapshot replayed on restart).
    let mut server = RedisServer::start().await;
    let mut con = server.client().await;
    let () = con.set("k", "v").await.expect("SET before the crash");
    server.restart().await;
    let mut con = server.client().await;
    let value: Option<String> = con.get("k").await.expect("GET after restart");
    assert_eq!(value, None);
}

#[tokio::test]
async fn restart_waits_until_its_port_is_free_again() {
    // After a crash something else may hold the port for a moment; restart
    // must keep trying the same port (clients know only that one) rather
    // than fail at once or move elsewhere.
    let mut server = RedisServer::start_with(RedisOptions { aof: true }).await;
    let mut con = server.client().await;
    let () = con.set("k", "v").await.expect("SET before the crash");
    server.kill().await;
    let squatter = std::net::TcpListener::bind(("127.0.0.1", server.port()))
        .expect("bind the killed server's port to simulate another process on it");

    let port = server.port();
    let log = server.dir().join("redis.log");
    let restart = tokio::spawn(async move {
        server.restart().await;
        server
    });
    // Release the port only once a restart attempt has failed on it.
    let deadline = Instant::now() + WAIT;
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("Address already in use") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no failed bind in {}",
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(squatter);

    let server = restart.await.expect("restart task");
    assert_eq!(server.port(), port);
    let mut con = server.client().await;
    let value: Option<String> = con.get("k").await.expect("GET after restart");
    assert_eq!(value.as_deref(), Some("v"));
}

#[tokio::test]
async fn restart_does_not_mistake_another_server_on_its_port_for_itself() {
    // A stranger redis-server answers PING on the port too; readiness must
    // check that the answer comes from our own process.
    let mut server = RedisServer::start().await;
    let port = server.port();
    server.kill().await;
    let stranger_dir = tempfile::tempdir().expect("temporary directory for the stranger");
    let mut stranger = tokio::process::Command::new("redis-server")
        .args([
            "--bind",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--save",
            "",
        ])
        .arg("--dir")
        .arg(stranger_dir.path())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn a stranger redis-server");
    let stranger_pid = stranger.id().expect("the stranger is running");
    // The stranger must own the port before the restart begins.
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).expect("stranger URL");
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(
            Instant::now() < deadline,
            "stranger never served port {port}"
        );
        if let Ok(mut con) = client.get_multiplexed_async_connection().await
            && let Ok(info) = redis::cmd("INFO")
                .arg("server")
                .query_async::<String>(&mut con)
                .await
            && info.contains(&format!("process_id:{stranger_pid}\r"))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let log = server.dir().join("redis.log");
    let restart = tokio::spawn(async move {
        server.restart().await;
        server
    });
    // Remove the stranger only once our own server has failed to bind.
    let deadline = Instant::now() + WAIT;
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("Address already in use")
    {
        assert!(
            Instant::now() < deadline,
            "no failed bind in {}",
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stranger.kill().await.expect("kill the stranger");

    let server = restart.await.expect("restart task");
    assert_eq!(server.port(), port);
    assert_ne!(server.pid(), Some(stranger_pid));
    // The port is served by the process the harness owns.
    let mut con = server.client().await;
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut con)
        .await
        .expect("INFO server after restart");
    let served_by = info
        .lines()
        .find_map(|line| line.strip_prefix("process_id:"))
        .and_then(|pid| pid.trim().parse::<u32>().ok());
    assert_eq!(served_by, server.pid());
}

#[tokio::test]
async fn drop_kills_the_process() {
    let server = RedisServer::start().await;
    let pid = server.pid().expect("a started server has a pid");
    drop(server);
    // The kill is asynchronous (Drop cannot await), so poll for it.
    let deadline = Instant::now() + WAIT;
    while process_exists(pid) {
        assert!(
            Instant::now() < deadline,
            "redis-server pid {pid} still alive {WAIT:?} after drop"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn cluster_of_three_serves_keys_in_different_slots() {
    let cluster = RedisCluster::start(3).await;
    let urls = cluster.urls();
    assert_eq!(urls.len(), 3);

    let client = ClusterClient::new(urls).expect("build a cluster client from the harness URLs");
    let mut con = client
        .get_async_connection()
        .await
        .expect("connect to the harness cluster");
    // Enough keys that every master owns some of them (checked below).
    let keys: Vec<String> = (0..30).map(|i| format!("ducks:key:{i}")).collect();
    for (i, key) in keys.iter().enumerate() {
        let () = con.set(key, i).await.expect("SET through the cluster");
    }
    for (i, key) in keys.iter().enumerate() {
        let value: usize = con.get(key).await.expect("GET through the cluster");
        assert_eq!(value, i, "{key}");
    }

    // Every node holds part of the data, so the keys really were spread
    // over different slots owned by different masters.
    let mut ports_with_keys = HashSet::new();
    for node in cluster.nodes() {
        let mut direct = node.client().await;
        let size: usize = redis::cmd("DBSIZE")
            .query_async(&mut direct)
            .await
            .expect("DBSIZE on one node");
        if size > 0 {
            ports_with_keys.insert(node.port());
        }
    }
    assert_eq!(ports_with_keys.len(), 3, "keys on every master");
}

/// Whether a process with this pid exists and is not a zombie. Uses /proc
/// (Linux) so the test needs no extra dependency.
fn process_exists(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the field after the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}
