//! How twitch-irc reaches Twitch chat: its transports dial `irc.chat.twitch.tv` themselves, and
//! its one seam, the `MakeConnection` trait, takes no address. So the address (`twitch.server`)
//! is set once for the process ([`use_server`]) and [`Dial`] connects there, over TLS
//! (Twitch) or plain TCP (a local test server).

use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_util::either::Either;
use twitch_irc::transport::tcp::{MakeConnection, TCPTransport, TCPTransportConnectError};

use super::config::Server;

/// The transport type the bot's client uses.
pub type Transport = TCPTransport<Dial>;

static SERVER: OnceLock<Server> = OnceLock::new();

/// Sets where [`Dial`] connects, once per process.
pub fn use_server(server: Server) -> Result<(), String> {
    let wanted = server.clone();
    SERVER.set(server).or_else(|_| {
        if SERVER.get() == Some(&wanted) {
            Ok(())
        } else {
            Err("This process already talks to another Twitch chat server.".to_owned())
        }
    })
}

/// Connects to the server set with [`use_server`].
pub struct Dial;

#[async_trait]
impl MakeConnection for Dial {
    type Socket = Either<TcpStream, TlsStream<TcpStream>>;

    async fn new_socket() -> Result<Self::Socket, TCPTransportConnectError> {
        let server = SERVER.get().ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                "no Twitch chat server was set",
            )
        })?;
        let tcp = TcpStream::connect((server.host.as_str(), server.port)).await?;
        tcp.set_nodelay(true)?;
        if !server.tls {
            return Ok(Either::Left(tcp));
        }
        let name = ServerName::try_from(server.host.clone())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
        Ok(Either::Right(tls().connect(name, tcp).await?))
    }
}

/// A TLS client trusting the web's root certificates. The provider is named: the dependency
/// graph enables both of rustls' providers, so it cannot pick one itself.
fn tls() -> TlsConnector {
    static CONNECTOR: OnceLock<TlsConnector> = OnceLock::new();
    CONNECTOR
        .get_or_init(|| {
            let roots = RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            let config = ClientConfig::builder_with_provider(Arc::new(
                tokio_rustls::rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .expect("ring supports the default TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
            TlsConnector::from(Arc::new(config))
        })
        .clone()
}
