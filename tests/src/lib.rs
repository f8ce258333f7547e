//! Test harness for the DUCKS suite: real `redis-server` processes on free
//! loopback ports, each in its own temporary directory.
//!
//! Why real servers instead of a mock: the queue's correctness rests on
//! Redis Streams semantics (pending entries, XAUTOCLAIM, Lua atomicity, AOF
//! replay after a crash) that a fake would have to re-implement and could get
//! subtly wrong. The harness never touches the machine's shared instance on
//! port 6379.
//!
//! - [`RedisServer`] owns one `redis-server` child and its data directory; it
//!   can be killed with SIGKILL and restarted on the same port and directory, so
//!   tests can check what survives a crash.
//! - [`RedisCluster`] owns N cluster-mode masters joined with
//!   `redis-cli --cluster create`.
//! - [`S3Server`] is the embedded S3-protocol server (s3s-fs, SigV4) that
//!   counts requests, holds chosen ones at a [`Gate`], and can be stopped.
//! - [`KubeApi`] is a local Kubernetes API server speaking the real REST and
//!   watch protocol, with a Job controller and a kubelet that can run the
//!   real runner, for the production `kube` client to talk to unchanged.
//! - [`Browser`] is a headless Chromium driven over WebDriver, for the web page.
//! - [`chart`] renders the Helm chart with Helm's own engine and resolves each container's
//!   environment and mounted files as the kubelet would.
//! - [`DiscordSim`] is a local Discord API server (REST v10 and the gateway) that the production
//!   serenity client talks to unchanged, with payload builders for complete, current
//!   interactions ([`discord::slash_command`] and friends) and Ed25519-signed HTTP interactions.
//! - [`TwitchSim`] is a local Twitch chat server (tagged IRC over TCP) that the production
//!   twitch-irc client reaches through [`twitch::LocalTransport`], with Twitch's message rules
//!   (500 characters, duplicates, 20/100 per 30 s) and simulated viewers.
//!
//! - [`stderr_on_terminal`] runs a command with its stderr on a pseudo-terminal, for output
//!   that depends on one (progress bars, colour).
//!
//! Every wait in here polls with a deadline and panics with the tail of the
//! server's log, so a broken environment fails fast and explains itself
//! instead of hanging the suite.

mod binary;
pub mod chart;
mod cluster;
pub mod discord;
mod instant;
mod kube;
pub mod measure;
mod s3;
mod server;
mod support;
mod terminal;
pub mod twitch;
mod webdriver;

pub use self::kube::{KubeApi, KubeFault, Kubelet, PodBehaviour, Timing};
pub use binary::ducks_binary;
pub use cluster::RedisCluster;
pub use discord::{Actor, DiscordSim, InteractionPayload};
pub use instant::instant_worker;
pub use s3::{BUCKET, Gate, PlainHttpResponse, S3Server, http_get, s3_env, tiny_bucket};
pub use server::{RedisOptions, RedisServer};
pub use terminal::{OnTerminal, stderr_on_terminal};
pub use twitch::{TwitchSim, Viewer};
pub use webdriver::Browser;
