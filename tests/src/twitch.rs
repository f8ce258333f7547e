//! A local Twitch chat server: Twitch's tagged IRC over plain TCP on `127.0.0.1`, for the
//! production twitch-irc client (6.1.3) to talk to unchanged.
//!
//! # Reaching it
//!
//! twitch-irc dials `irc.chat.twitch.tv` from its transports; the only seam is its public trait
//! `twitch_irc::transport::tcp::MakeConnection` (`async fn new_socket() -> Result<Self::Socket,
//! TCPTransportConnectError>`, no `self`, no address), used as `TCPTransport<C>`. So the address
//! has to come from process-wide state. [`LocalTcp<SLOT>`] is such a connector: it dials whatever
//! simulator [`TwitchSim::route`] put in its slot (one of [`LOCAL_TCP_SLOTS`]), so tests running
//! side by side in one process each take their own slot:
//!
//! ```ignore
//! let sim = TwitchSim::start().await;
//! sim.route(3);
//! let (incoming, client) =
//!     TwitchIRCClient::<LocalTransport<3>, StaticLoginCredentials>::new(config);
//! ```
//!
//! # The protocol
//!
//! - `CAP REQ :twitch.tv/tags twitch.tv/commands twitch.tv/membership` → `CAP * ACK` (an
//!   unknown capability NAKs the whole request, as IRCv3 says). Without `twitch.tv/tags` lines go
//!   out untagged; without `twitch.tv/commands` there is no USERSTATE, ROOMSTATE,
//!   GLOBALUSERSTATE or RECONNECT (the connection is still closed). twitch-irc 6.1.3 asks for
//!   tags and commands only.
//! - `PASS oauth:<token>` then `NICK <login>` → `001`–`004`, `375`, `372`, `376` for the login,
//!   then GLOBALUSERSTATE. No PASS is an anonymous login (`justinfan…`), which may join and read
//!   but whose PRIVMSGs Twitch ignores. A login given a token with [`TwitchSim::require_token`]
//!   and a different or missing one gets `:tmi.twitch.tv NOTICE * :Login authentication failed`
//!   and the connection closes; a PASS without `oauth:` gets `Improperly formatted auth`.
//!   twitch-irc does not wait for `001`: its JOINs and PRIVMSGs follow NICK at once.
//! - `JOIN #a,#b` → the JOIN echo, `353`/`366` names, USERSTATE for the account in that channel
//!   (`broadcaster/1` in its own channel, `moderator/1` after [`TwitchSim::make_moderator`],
//!   `vip/1` after [`TwitchSim::make_vip`], no badges otherwise), ROOMSTATE. `PART` echoes.
//! - `PING x` → `:tmi.twitch.tv PONG tmi.twitch.tv :x` (twitch-irc pings every 30 s and drops
//!   the connection when no PONG comes within 5 s). The server pings every logged-in connection
//!   every [`DEFAULT_PING_INTERVAL`] ([`TwitchSim::set_ping_interval`], [`TwitchSim::ping_all`])
//!   and counts PONGs ([`ConnectionInfo::pongs`]).
//! - `PRIVMSG #chan :text` from an account (the channel need not be joined, as on Twitch) is
//!   recorded ([`Sent`]) and checked as Twitch does, in this order:
//!   more than [`MAX_MESSAGE_CHARS`] characters → dropped without a word (Twitch documents no
//!   NOTICE for it; refusal `too_long`); over the rate limit of that account in that channel
//!   (default 20 per 30 s, 100 where it moderates or broadcasts, decided per message,
//!   [`TwitchSim::set_rate_limit`]) → `NOTICE msg_ratelimit`, counted in
//!   [`TwitchSim::over_limit`]; identical to the account's previous accepted message in that
//!   channel within 30 s ([`TwitchSim::set_duplicate_window`]) and not a moderator or the
//!   broadcaster → `NOTICE msg_duplicate`. The limit counts the account's messages that were not
//!   themselves over it, across all its connections. Twitch's 30-minute lock-out after going
//!   over is not simulated. An accepted message gets an id, a USERSTATE with `id=` goes back to
//!   the sender (as Twitch does), and the message, with complete tags (and the `reply-parent-*`
//!   and `reply-thread-parent-*` tags of a reply to a known message), goes to every *other*
//!   connection joined to the channel: replicas of one bot see each other's messages.
//!   `/me text` reaches them as a CTCP ACTION.
//! - Viewers: [`TwitchSim::say`] and [`TwitchSim::say_in_reply_to`] send a complete PRIVMSG, with
//!   every tag Twitch sends today, to every connection joined to the channel.
//! - Faults: [`TwitchSim::reconnect_all`] (`:tmi.twitch.tv RECONNECT`, then close),
//!   [`TwitchSim::drop_all`] (close without a word).
//!
//! Every line in both directions is in [`TwitchSim::transcript`] (PASS redacted). Every wait
//! wakes on changes (no polling) and panics after its limit saying what it waited for, with the
//! connections and the last lines.
//!
//! # What does not exist
//!
//! Chat commands (`/ban`, `.timeout`: text like any other), whispers, USERNOTICE, CLEARCHAT,
//! CLEARMSG, slow, followers-only and subscribers-only modes, emote parsing (the `emotes` tag is
//! what a [`Viewer`] says), the 30-minute lock-out, join and authentication rate limits, TLS.

mod irc;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::AbortHandle;
use twitch_irc::transport::tcp::{MakeConnection, TCPTransport, TCPTransportConnectError};

use irc::{Line, numeric_id, strip_tags, tagged, uuid};

/// Twitch's limit on a chat message, in characters.
pub const MAX_MESSAGE_CHARS: usize = 500;
/// How long an identical message is refused, until [`TwitchSim::set_duplicate_window`].
pub const DEFAULT_DUPLICATE_WINDOW: Duration = Duration::from_secs(30);
/// The rate limit's window and its two limits, until [`TwitchSim::set_rate_limit`].
pub const DEFAULT_RATE_WINDOW: Duration = Duration::from_secs(30);
pub const DEFAULT_NORMAL_LIMIT: usize = 20;
pub const DEFAULT_MODERATOR_LIMIT: usize = 100;
/// How often the server pings each connection, until [`TwitchSim::set_ping_interval`].
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(60);
/// How many [`LocalTcp`] slots exist.
pub const LOCAL_TCP_SLOTS: usize = 16;

/// Twitch's texts for its refusals.
pub const DUPLICATE_TEXT: &str = "Your message was not sent because it is identical to the \
                                  previous one you sent, less than 30 seconds ago.";
pub const RATELIMIT_TEXT: &str =
    "Your message was not sent because you are sending messages too quickly.";

/// [`Sent::refused`] values: Twitch's `msg-id` where it answers with a NOTICE, else a word.
pub const REFUSED_DUPLICATE: &str = "msg_duplicate";
pub const REFUSED_RATELIMIT: &str = "msg_ratelimit";
/// Over [`MAX_MESSAGE_CHARS`]: dropped silently.
pub const REFUSED_TOO_LONG: &str = "too_long";
/// From an anonymous (`justinfan`) login: ignored silently.
pub const REFUSED_ANONYMOUS: &str = "anonymous";
/// Before a successful NICK: ignored.
pub const REFUSED_NOT_LOGGED_IN: &str = "not_logged_in";

const CAPABILITIES: [&str; 3] = [
    "twitch.tv/tags",
    "twitch.tv/commands",
    "twitch.tv/membership",
];

/// How many transcript lines and sent messages a panic message shows.
const SUMMARY_LINES: usize = 16;

// ---- Reaching the simulator from twitch-irc ----

/// The address each [`LocalTcp`] slot dials.
static ROUTES: [Mutex<Option<SocketAddr>>; LOCAL_TCP_SLOTS] =
    [const { Mutex::new(None) }; LOCAL_TCP_SLOTS];

fn route_slot(slot: usize) -> MutexGuard<'static, Option<SocketAddr>> {
    ROUTES
        .get(slot)
        .unwrap_or_else(|| panic!("LocalTcp slot {slot}: there are {LOCAL_TCP_SLOTS} slots"))
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}

/// twitch-irc's connector for a [`TwitchSim`]: plain TCP to the simulator that
/// [`TwitchSim::route`] put in slot `SLOT`. Use it as [`LocalTransport<SLOT>`].
#[derive(Clone, Copy, Debug, Default)]
pub struct LocalTcp<const SLOT: usize = 0>;

/// `TCPTransport<LocalTcp<SLOT>>`: the transport type parameter of a `TwitchIRCClient` that
/// talks to a simulator.
pub type LocalTransport<const SLOT: usize = 0> = TCPTransport<LocalTcp<SLOT>>;

#[async_trait::async_trait]
impl<const SLOT: usize> MakeConnection for LocalTcp<SLOT> {
    type Socket = TcpStream;

    async fn new_socket() -> Result<TcpStream, TCPTransportConnectError> {
        const { assert!(SLOT < LOCAL_TCP_SLOTS, "LocalTcp slot out of range") };
        let addr = *route_slot(SLOT);
        let addr = addr.ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                format!("no TwitchSim is routed to LocalTcp slot {SLOT} (call TwitchSim::route)"),
            )
        })?;
        Ok(TcpStream::connect(addr).await?)
    }
}

// ---- What the simulator records ----

/// A PRIVMSG an account sent, as recorded when it arrived.
#[derive(Clone, Debug)]
pub struct Sent {
    pub at: Instant,
    /// The connection it came on ([`ConnectionInfo::id`]).
    pub connection: usize,
    /// The account; empty before a successful NICK.
    pub login: String,
    /// Without `#`.
    pub channel: String,
    /// The text as sent: twitch-irc's `say` and `say_in_reply_to` put `. ` in front.
    pub text: String,
    /// The client's tags, e.g. `reply-parent-msg-id`.
    pub tags: BTreeMap<String, String>,
    /// Why Twitch did not deliver it: one of the `REFUSED_*` values. `None`: delivered.
    pub refused: Option<String>,
    /// The id Twitch gave it, when delivered.
    pub id: Option<String>,
    /// Whether the account moderated or owned the channel at that moment.
    pub privileged: bool,
}

impl Sent {
    pub fn delivered(&self) -> bool {
        self.refused.is_none()
    }

    /// The message this one replies to.
    pub fn reply_parent(&self) -> Option<&str> {
        self.tags.get("reply-parent-msg-id").map(String::as_str)
    }

    /// Whether it counts against the rate limit: everything but what was over it or never
    /// reached the limiter.
    fn counted(&self) -> bool {
        matches!(self.refused.as_deref(), None | Some(REFUSED_DUPLICATE))
    }
}

/// A message that reached the channel: a viewer's ([`TwitchSim::say`]) or an account's
/// delivered PRIVMSG.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatMessage {
    pub id: String,
    pub channel: String,
    pub user_id: String,
    pub login: String,
    pub display_name: String,
    pub text: String,
    /// The message it replies to.
    pub reply_parent: Option<String>,
    /// Sent by a connected account rather than a simulated viewer.
    pub from_connection: bool,
}

/// How a connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Closed {
    /// The client closed it (or it broke).
    ByClient,
    /// [`TwitchSim::reconnect_all`]: RECONNECT, then closed.
    Reconnect,
    /// [`TwitchSim::drop_all`].
    Dropped,
    /// A failed login.
    LoginFailed,
}

/// A connection as [`TwitchSim::connections`] reports it.
#[derive(Clone, Debug)]
pub struct ConnectionInfo {
    /// Numbered from 1 in the order they were accepted.
    pub id: usize,
    pub peer: SocketAddr,
    pub opened_at: Instant,
    /// From NICK, lowercased.
    pub login: Option<String>,
    /// The login succeeded (`001` was sent).
    pub logged_in: bool,
    pub anonymous: bool,
    /// Acknowledged capabilities.
    pub caps: BTreeSet<String>,
    /// Joined channels, without `#`.
    pub channels: BTreeSet<String>,
    /// The socket is still open.
    pub open: bool,
    /// The simulator has asked it to go or is closing it: it gets nothing more.
    pub retired: bool,
    pub closed: Option<Closed>,
    /// PINGs the server sent it and PONGs it answered.
    pub pings_sent: usize,
    pub pongs: usize,
    /// PINGs it sent.
    pub client_pings: usize,
}

impl ConnectionInfo {
    /// Open, logged in and not retired: messages reach it.
    pub fn live(&self) -> bool {
        self.open && self.logged_in && !self.retired
    }
}

/// One line of the transcript.
#[derive(Clone, Debug)]
pub struct IrcLine {
    pub at: Instant,
    pub connection: usize,
    /// `true` for a line the client sent.
    pub from_client: bool,
    /// Without `\r\n`; the token of a PASS is redacted.
    pub text: String,
}

/// A simulated chatter for [`TwitchSim::say`]. `display_name` defaults to `login`, `color` to
/// none (an empty `color` tag, as Twitch sends for users who never picked one).
///
/// ```ignore
/// Viewer { user_id: "4711", login: "mallard", badges: &["subscriber/12"], ..Viewer::default() }
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct Viewer<'a> {
    pub user_id: &'a str,
    pub login: &'a str,
    pub display_name: &'a str,
    /// `name/version`, e.g. `moderator/1`, `subscriber/12`, `vip/1`, `broadcaster/1`.
    pub badges: &'a [&'a str],
    /// E.g. `subscriber/14` (exact months).
    pub badge_info: &'a [&'a str],
    /// `#RRGGBB` or empty.
    pub color: &'a str,
    /// The `emotes` tag as Twitch writes it (`25:0-4/1902:6-10`), empty for none.
    pub emotes: &'a str,
    pub first_msg: bool,
    pub returning_chatter: bool,
    pub turbo: bool,
}

impl Viewer<'_> {
    fn display(&self) -> &str {
        if self.display_name.is_empty() {
            self.login
        } else {
            self.display_name
        }
    }

    fn has_badge(&self, name: &str) -> bool {
        self.badges
            .iter()
            .any(|badge| badge.split('/').next() == Some(name))
    }
}

// ---- The simulator ----

/// A running Twitch chat simulator. Dropping it closes the listener and every connection and
/// frees its [`LocalTcp`] slots.
pub struct TwitchSim {
    shared: Arc<Shared>,
    addr: SocketAddr,
    accept_task: AbortHandle,
    pinger_task: AbortHandle,
    slots: Mutex<Vec<usize>>,
}

impl std::fmt::Debug for TwitchSim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TwitchSim")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

struct Shared {
    state: Mutex<State>,
    /// Bumped after every change, so waits sleep until something happened.
    changed: watch::Sender<u64>,
    /// The ping interval changed.
    ping_changed: Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn bump(&self) {
        self.changed.send_modify(|version| *version += 1);
    }
}

/// What a connection task is told to do.
enum Out {
    Line(String),
    Close,
}

struct Conn {
    info: ConnectionInfo,
    pass: Option<String>,
    /// Why the simulator is closing it, once it is.
    closing: Option<Closed>,
    tx: mpsc::UnboundedSender<Out>,
}

struct State {
    conns: Vec<Conn>,
    tasks: Vec<AbortHandle>,
    tokens: HashMap<String, String>,
    moderators: HashSet<(String, String)>,
    vips: HashSet<(String, String)>,
    sent: Vec<Sent>,
    chat: Vec<ChatMessage>,
    transcript: Vec<IrcLine>,
    duplicate_window: Duration,
    rate_window: Duration,
    normal_limit: usize,
    moderator_limit: usize,
    over_limit: usize,
    ping_interval: Option<Duration>,
}

impl TwitchSim {
    /// Starts listening on `127.0.0.1:0`; bound before this returns. Must be called inside a
    /// tokio runtime.
    pub async fn start() -> TwitchSim {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("bind the Twitch chat simulator to 127.0.0.1:0");
        let addr = listener
            .local_addr()
            .expect("local address of the Twitch chat listener");
        crate::support::reserve_port(addr.port());
        let state = State {
            conns: Vec::new(),
            tasks: Vec::new(),
            tokens: HashMap::new(),
            moderators: HashSet::new(),
            vips: HashSet::new(),
            sent: Vec::new(),
            chat: Vec::new(),
            transcript: Vec::new(),
            duplicate_window: DEFAULT_DUPLICATE_WINDOW,
            rate_window: DEFAULT_RATE_WINDOW,
            normal_limit: DEFAULT_NORMAL_LIMIT,
            moderator_limit: DEFAULT_MODERATOR_LIMIT,
            over_limit: 0,
            ping_interval: Some(DEFAULT_PING_INTERVAL),
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            changed: watch::channel(0).0,
            ping_changed: Notify::new(),
        });
        let accept_task = tokio::spawn(accept(listener, Arc::clone(&shared))).abort_handle();
        let pinger_task = tokio::spawn(pinger(Arc::clone(&shared))).abort_handle();
        TwitchSim {
            shared,
            addr,
            accept_task,
            pinger_task,
            slots: Mutex::new(Vec::new()),
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Makes [`LocalTcp<slot>`] dial this simulator until it is dropped.
    ///
    /// # Panics
    /// When another live simulator holds the slot: give each test its own.
    pub fn route(&self, slot: usize) {
        let mut route = route_slot(slot);
        if let Some(other) = *route
            && other != self.addr
        {
            panic!(
                "LocalTcp slot {slot} already routes to the Twitch simulator at {other}: give each \
                 test its own slot"
            );
        }
        *route = Some(self.addr);
        self.slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(slot);
    }

    // ---- Settings ----

    /// Logging in as `login` needs `PASS oauth:<token>` (`token` with or without `oauth:`).
    /// Other logins may use any token.
    pub fn require_token(&self, login: &str, token: &str) {
        let token = token.strip_prefix("oauth:").unwrap_or(token);
        self.shared
            .lock()
            .tokens
            .insert(login.to_ascii_lowercase(), token.to_owned());
    }

    /// `login` moderates `channel` from now on: `moderator/1` in the USERSTATE of later JOINs,
    /// the moderator rate limit, no duplicate check.
    pub fn make_moderator(&self, channel: &str, login: &str) {
        self.shared.lock().moderators.insert(key(channel, login));
    }

    /// `login` is a VIP of `channel`: `vip/1` in the USERSTATE of later JOINs (limits unchanged).
    pub fn make_vip(&self, channel: &str, login: &str) {
        self.shared.lock().vips.insert(key(channel, login));
    }

    /// How long an identical message is refused (default 30 s).
    pub fn set_duplicate_window(&self, window: Duration) {
        self.shared.lock().duplicate_window = window;
    }

    /// The rate limit per account and channel (default 30 s, 20, 100).
    pub fn set_rate_limit(&self, window: Duration, normal_limit: usize, moderator_limit: usize) {
        let mut state = self.shared.lock();
        state.rate_window = window;
        state.normal_limit = normal_limit;
        state.moderator_limit = moderator_limit;
    }

    /// How often the server pings each logged-in connection; `None` never.
    pub fn set_ping_interval(&self, interval: Option<Duration>) {
        self.shared.lock().ping_interval = interval;
        self.shared.ping_changed.notify_one();
    }

    /// The room id of a channel (stable, derived from the name).
    pub fn room_id(&self, channel: &str) -> String {
        numeric_id(&format!("room:{}", channel_name(channel)))
    }

    /// The user id of a connected account (stable, derived from the login).
    pub fn user_id(&self, login: &str) -> String {
        numeric_id(&format!("user:{}", login.to_ascii_lowercase()))
    }

    // ---- Viewers and faults ----

    /// A viewer's message in `channel`, sent with every tag Twitch sends to every connection
    /// joined to it. Returns its id.
    pub fn say(&self, channel: &str, viewer: Viewer<'_>, text: &str) -> String {
        self.say_tagged(channel, viewer, text, None)
    }

    /// A viewer's reply to message `parent_id` (a viewer's or an account's): the
    /// `reply-parent-*` and `reply-thread-parent-*` tags as Twitch sends them.
    ///
    /// # Panics
    /// When no message has that id.
    pub fn say_in_reply_to(
        &self,
        channel: &str,
        viewer: Viewer<'_>,
        text: &str,
        parent_id: &str,
    ) -> String {
        self.say_tagged(channel, viewer, text, Some(parent_id))
    }

    fn say_tagged(
        &self,
        channel: &str,
        viewer: Viewer<'_>,
        text: &str,
        parent_id: Option<&str>,
    ) -> String {
        assert!(
            !viewer.login.is_empty() && !viewer.user_id.is_empty(),
            "Twitch simulator: a Viewer needs a login and a user_id: {viewer:?}"
        );
        let channel = channel_name(channel);
        let id = uuid();
        let mut state = self.shared.lock();
        let reply_tags = match parent_id {
            Some(parent_id) => state.reply_tags(parent_id).unwrap_or_else(|| {
                panic!("Twitch simulator: no message {parent_id} to reply to in #{channel}")
            }),
            None => Vec::new(),
        };
        let mut tags = vec![
            ("badge-info", viewer.badge_info.join(",")),
            ("badges", viewer.badges.join(",")),
            ("color", viewer.color.to_owned()),
            ("display-name", viewer.display().to_owned()),
            ("emotes", viewer.emotes.to_owned()),
            ("first-msg", flag(viewer.first_msg)),
            ("flags", String::new()),
            ("id", id.clone()),
            ("mod", flag(viewer.has_badge("moderator"))),
        ];
        tags.extend(reply_tags);
        tags.extend([
            ("returning-chatter", flag(viewer.returning_chatter)),
            ("room-id", self.room_id(&channel)),
            (
                "subscriber",
                flag(viewer.has_badge("subscriber") || viewer.has_badge("founder")),
            ),
            ("tmi-sent-ts", unix_millis()),
            ("turbo", flag(viewer.turbo)),
            ("user-id", viewer.user_id.to_owned()),
            (
                "user-type",
                if viewer.has_badge("moderator") {
                    "mod".to_owned()
                } else {
                    String::new()
                },
            ),
        ]);
        if viewer.has_badge("vip") {
            tags.push(("vip", "1".to_owned()));
        }
        let login = viewer.login.to_ascii_lowercase();
        let line = tagged(
            &tags,
            &format!("{} PRIVMSG #{channel} :{text}", user_prefix(&login)),
        );
        state.chat.push(ChatMessage {
            id: id.clone(),
            channel: channel.clone(),
            user_id: viewer.user_id.to_owned(),
            login,
            display_name: viewer.display().to_owned(),
            text: text.to_owned(),
            reply_parent: parent_id.map(str::to_owned),
            from_connection: false,
        });
        for conn in state.joined(&channel, None) {
            state.send(conn, &line);
        }
        drop(state);
        self.shared.bump();
        id
    }

    /// Sends `:tmi.twitch.tv RECONNECT` to every open connection and closes it, as Twitch does
    /// before a restart. Returns how many were open.
    pub fn reconnect_all(&self) -> usize {
        self.close_all(Closed::Reconnect)
    }

    /// Closes every open connection without a word. Returns how many were open.
    pub fn drop_all(&self) -> usize {
        self.close_all(Closed::Dropped)
    }

    fn close_all(&self, why: Closed) -> usize {
        let mut state = self.shared.lock();
        let ids: Vec<usize> = state
            .conns
            .iter()
            .filter(|conn| conn.info.open && conn.closing.is_none())
            .map(|conn| conn.info.id)
            .collect();
        for &id in &ids {
            if why == Closed::Reconnect {
                state.send_command(id, ":tmi.twitch.tv RECONNECT");
            }
            state.close(id, why);
        }
        drop(state);
        self.shared.bump();
        ids.len()
    }

    /// PINGs every live connection now.
    pub fn ping_all(&self) {
        self.shared.lock().ping_all();
        self.shared.bump();
    }

    // ---- Queries ----

    /// Every connection so far, closed ones too, in the order they were accepted.
    pub fn connections(&self) -> Vec<ConnectionInfo> {
        self.shared
            .lock()
            .conns
            .iter()
            .map(|conn| conn.info.clone())
            .collect()
    }

    /// Every PRIVMSG accounts sent, in arrival order, refused ones too.
    pub fn sent(&self) -> Vec<Sent> {
        self.shared.lock().sent.clone()
    }

    /// The delivered messages of accounts that reply to `message_id`.
    pub fn replies_to(&self, message_id: &str) -> Vec<Sent> {
        self.shared
            .lock()
            .sent
            .iter()
            .filter(|sent| sent.delivered() && sent.reply_parent() == Some(message_id))
            .cloned()
            .collect()
    }

    /// What reached `channel`, viewers' and accounts' messages, oldest first.
    pub fn chat(&self, channel: &str) -> Vec<ChatMessage> {
        let channel = channel_name(channel);
        self.shared
            .lock()
            .chat
            .iter()
            .filter(|message| message.channel == channel)
            .cloned()
            .collect()
    }

    /// How many messages went over the rate limit.
    pub fn over_limit(&self) -> usize {
        self.shared.lock().over_limit
    }

    /// The most PRIVMSGs one account sent to `channel` within any `window`, over all its
    /// connections, refused ones included: what the account asked of Twitch.
    pub fn max_in_window(&self, channel: &str, window: Duration) -> usize {
        let channel = channel_name(channel);
        let state = self.shared.lock();
        let mut by_login: HashMap<&str, Vec<Instant>> = HashMap::new();
        for sent in state.sent.iter().filter(|sent| sent.channel == channel) {
            by_login.entry(&sent.login).or_default().push(sent.at);
        }
        by_login
            .values()
            .map(|times| {
                // Recorded in arrival order, so already sorted.
                let mut most = 0;
                let mut start = 0;
                for (end, at) in times.iter().enumerate() {
                    while at.duration_since(times[start]) >= window {
                        start += 1;
                    }
                    most = most.max(end + 1 - start);
                }
                most
            })
            .max()
            .unwrap_or(0)
    }

    /// Every line in both directions so far.
    pub fn transcript(&self) -> Vec<IrcLine> {
        self.shared.lock().transcript.clone()
    }

    // ---- Waits ----

    /// The first recorded PRIVMSG (from the start, not only from now) for which `pred` holds.
    ///
    /// # Panics
    /// After `limit`, with the connections and the last lines.
    pub async fn wait_for_sent(&self, pred: impl Fn(&Sent) -> bool, limit: Duration) -> Sent {
        self.wait_until(
            limit,
            |_| "a matching PRIVMSG from an account".to_owned(),
            |state| state.sent.iter().find(|sent| pred(sent)).cloned(),
        )
        .await
    }

    /// Waits until at least `n` recorded PRIVMSGs (from the start) match `pred`; returns every
    /// match.
    ///
    /// # Panics
    /// After `limit`, with how many matched, the connections and the last lines.
    pub async fn wait_for_sent_count(
        &self,
        n: usize,
        pred: impl Fn(&Sent) -> bool,
        limit: Duration,
    ) -> Vec<Sent> {
        self.wait_until(
            limit,
            |state| {
                let matched = state.sent.iter().filter(|sent| pred(sent)).count();
                format!("{n} matching PRIVMSGs from accounts ({matched} so far)")
            },
            |state| {
                let matched: Vec<Sent> = state
                    .sent
                    .iter()
                    .filter(|sent| pred(sent))
                    .cloned()
                    .collect();
                (matched.len() >= n).then_some(matched)
            },
        )
        .await
    }

    /// Waits until `n` live connections have joined `channel`; returns them.
    ///
    /// # Panics
    /// After `limit`, with the connections and the last lines.
    pub async fn wait_joined(
        &self,
        channel: &str,
        n: usize,
        limit: Duration,
    ) -> Vec<ConnectionInfo> {
        let channel = channel_name(channel);
        self.wait_until(
            limit,
            |_| format!("{n} live connection(s) joined to #{channel}"),
            |state| {
                let joined: Vec<ConnectionInfo> = state
                    .joined(&channel, None)
                    .into_iter()
                    .map(|id| state.conns[id - 1].info.clone())
                    .collect();
                (joined.len() >= n).then_some(joined)
            },
        )
        .await
    }

    /// Waits until `pred` holds for the connections (all so far, closed ones too).
    ///
    /// # Panics
    /// After `limit`, saying `what`.
    pub async fn wait_connections(
        &self,
        what: &str,
        pred: impl Fn(&[ConnectionInfo]) -> bool,
        limit: Duration,
    ) -> Vec<ConnectionInfo> {
        self.wait_until(
            limit,
            |_| what.to_owned(),
            |state| {
                let infos: Vec<ConnectionInfo> =
                    state.conns.iter().map(|conn| conn.info.clone()).collect();
                pred(&infos).then_some(infos)
            },
        )
        .await
    }

    /// Waits until `check` gives a value, waking on every change; panics after `limit` saying
    /// what was awaited, with the connections and the last lines.
    async fn wait_until<T>(
        &self,
        limit: Duration,
        describe: impl Fn(&State) -> String,
        mut check: impl FnMut(&State) -> Option<T>,
    ) -> T {
        let mut changes = self.shared.changed.subscribe();
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            changes.borrow_and_update();
            if let Some(value) = check(&self.shared.lock()) {
                return value;
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => unreachable!("the simulator's change channel closed"),
                Err(_) => {
                    let state = self.shared.lock();
                    if let Some(value) = check(&state) {
                        return value;
                    }
                    panic!(
                        "Twitch simulator: waited {limit:?} for {}.\n{}",
                        describe(&state),
                        state.summary()
                    );
                }
            }
        }
    }
}

impl Drop for TwitchSim {
    fn drop(&mut self) {
        self.accept_task.abort();
        self.pinger_task.abort();
        for task in &self.shared.lock().tasks {
            task.abort();
        }
        for &slot in self
            .slots
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            let mut route = route_slot(slot);
            if *route == Some(self.addr) {
                *route = None;
            }
        }
    }
}

// ---- Tasks ----

async fn accept(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            tokio::task::yield_now().await;
            continue;
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let id = {
            let mut state = shared.lock();
            let id = state.conns.len() + 1;
            state.conns.push(Conn {
                info: ConnectionInfo {
                    id,
                    peer,
                    opened_at: Instant::now(),
                    login: None,
                    logged_in: false,
                    anonymous: false,
                    caps: BTreeSet::new(),
                    channels: BTreeSet::new(),
                    open: true,
                    retired: false,
                    closed: None,
                    pings_sent: 0,
                    pongs: 0,
                    client_pings: 0,
                },
                pass: None,
                closing: None,
                tx,
            });
            id
        };
        let task = tokio::spawn(serve(Arc::clone(&shared), id, stream, rx));
        shared.lock().tasks.push(task.abort_handle());
        shared.bump();
    }
}

/// One connection: reads lines into [`State::handle`] and writes what the state queues for it.
async fn serve(
    shared: Arc<Shared>,
    id: usize,
    stream: TcpStream,
    mut rx: mpsc::UnboundedReceiver<Out>,
) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    loop {
        tokio::select! {
            out = rx.recv() => match out {
                Some(Out::Line(line)) => {
                    if write.write_all(format!("{line}\r\n").as_bytes()).await.is_err() {
                        break;
                    }
                }
                Some(Out::Close) | None => {
                    let _ = write.shutdown().await;
                    break;
                }
            },
            // `next_line` is cancel-safe.
            line = lines.next_line() => match line {
                Ok(Some(line)) => {
                    shared.lock().handle(id, &line);
                    shared.bump();
                }
                Ok(None) | Err(_) => break,
            },
        }
    }
    {
        let mut state = shared.lock();
        let conn = &mut state.conns[id - 1];
        conn.info.open = false;
        conn.info.closed = Some(conn.closing.unwrap_or(Closed::ByClient));
    }
    shared.bump();
}

async fn pinger(shared: Arc<Shared>) {
    loop {
        let interval = shared.lock().ping_interval;
        match interval {
            Some(interval) => {
                tokio::select! {
                    () = tokio::time::sleep(interval) => {
                        shared.lock().ping_all();
                        shared.bump();
                    }
                    () = shared.ping_changed.notified() => {}
                }
            }
            None => shared.ping_changed.notified().await,
        }
    }
}

// ---- The protocol ----

impl State {
    /// Queues `line` for connection `id` unless it is closing; without its tags where the
    /// connection did not ask for them.
    fn send(&mut self, id: usize, line: &str) {
        let conn = &self.conns[id - 1];
        if !conn.info.open || conn.closing.is_some() {
            return;
        }
        let line = if conn.info.caps.contains("twitch.tv/tags") {
            line
        } else {
            strip_tags(line)
        };
        if conn.tx.send(Out::Line(line.to_owned())).is_ok() {
            self.transcript.push(IrcLine {
                at: Instant::now(),
                connection: id,
                from_client: false,
                text: line.to_owned(),
            });
        }
    }

    /// Like [`State::send`], for Twitch's own commands (USERSTATE and friends), which only
    /// connections with `twitch.tv/commands` get.
    fn send_command(&mut self, id: usize, line: &str) {
        if self.conns[id - 1].info.caps.contains("twitch.tv/commands") {
            self.send(id, line);
        }
    }

    fn close(&mut self, id: usize, why: Closed) {
        let conn = &mut self.conns[id - 1];
        if conn.closing.is_none() {
            conn.closing = Some(why);
            conn.info.retired = true;
            let _ = conn.tx.send(Out::Close);
        }
    }

    /// Live connections joined to `channel`, but `except`.
    fn joined(&self, channel: &str, except: Option<usize>) -> Vec<usize> {
        self.conns
            .iter()
            .filter(|conn| {
                conn.info.live()
                    && conn.info.channels.contains(channel)
                    && Some(conn.info.id) != except
            })
            .map(|conn| conn.info.id)
            .collect()
    }

    fn ping_all(&mut self) {
        let ids: Vec<usize> = self
            .conns
            .iter()
            .filter(|conn| conn.info.live())
            .map(|conn| conn.info.id)
            .collect();
        for id in ids {
            self.conns[id - 1].info.pings_sent += 1;
            self.send(id, "PING :tmi.twitch.tv");
        }
    }

    fn privileged(&self, channel: &str, login: &str) -> bool {
        login == channel || self.moderators.contains(&key(channel, login))
    }

    fn handle(&mut self, id: usize, raw: &str) {
        let conn = &self.conns[id - 1];
        if conn.closing.is_some() || !conn.info.open {
            return;
        }
        let text = if raw.to_ascii_uppercase().starts_with("PASS ") {
            "PASS <redacted>".to_owned()
        } else {
            raw.to_owned()
        };
        self.transcript.push(IrcLine {
            at: Instant::now(),
            connection: id,
            from_client: true,
            text,
        });
        let Some(line) = Line::parse(raw) else {
            return;
        };
        let logged_in = self.conns[id - 1].info.logged_in;
        match line.command.as_str() {
            "CAP" => self.cap(id, &line),
            "PASS" => self.conns[id - 1].pass = Some(line.param(0).to_owned()),
            "NICK" if !logged_in => self.nick(id, line.param(0)),
            "PING" => {
                self.conns[id - 1].info.client_pings += 1;
                let payload = line.param(0).to_owned();
                self.send(id, &format!(":tmi.twitch.tv PONG tmi.twitch.tv :{payload}"));
            }
            "PONG" => self.conns[id - 1].info.pongs += 1,
            "JOIN" if logged_in => {
                for channel in line.param(0).split(',').filter(|c| !c.is_empty()) {
                    self.join(id, &channel_name(channel));
                }
            }
            "PART" if logged_in => {
                for channel in line.param(0).split(',').filter(|c| !c.is_empty()) {
                    self.part(id, &channel_name(channel));
                }
            }
            "PRIVMSG" => self.privmsg(id, line),
            "QUIT" => self.close(id, Closed::ByClient),
            "NICK" | "USER" | "JOIN" | "PART" => {}
            other if logged_in => {
                let login = self.login(id);
                self.send(
                    id,
                    &format!(":tmi.twitch.tv 421 {login} {other} :Unknown command"),
                );
            }
            _ => {}
        }
    }

    fn login(&self, id: usize) -> String {
        self.conns[id - 1].info.login.clone().unwrap_or_default()
    }

    fn cap(&mut self, id: usize, line: &Line) {
        match line.param(0).to_ascii_uppercase().as_str() {
            "LS" => self.send(
                id,
                &format!(":tmi.twitch.tv CAP * LS :{}", CAPABILITIES.join(" ")),
            ),
            "REQ" => {
                let requested = line.param(1).to_owned();
                let caps: Vec<&str> = requested.split_whitespace().collect();
                if caps.iter().all(|cap| CAPABILITIES.contains(cap)) {
                    let conn = &mut self.conns[id - 1];
                    conn.info
                        .caps
                        .extend(caps.iter().map(|cap| (*cap).to_owned()));
                    self.send(id, &format!(":tmi.twitch.tv CAP * ACK :{requested}"));
                } else {
                    self.send(id, &format!(":tmi.twitch.tv CAP * NAK :{requested}"));
                }
            }
            _ => {}
        }
    }

    fn nick(&mut self, id: usize, nick: &str) {
        let login = nick.to_ascii_lowercase();
        let pass = self.conns[id - 1].pass.clone();
        self.conns[id - 1].info.login = Some(login.clone());
        let failure = match (&pass, self.tokens.get(&login)) {
            (Some(pass), _) if !pass.starts_with("oauth:") => Some("Improperly formatted auth"),
            (Some(pass), Some(token)) if pass.strip_prefix("oauth:") != Some(token.as_str()) => {
                Some("Login authentication failed")
            }
            (None, Some(_)) => Some("Login authentication failed"),
            _ => None,
        };
        if let Some(failure) = failure {
            self.send(id, &format!(":tmi.twitch.tv NOTICE * :{failure}"));
            self.close(id, Closed::LoginFailed);
            return;
        }
        let conn = &mut self.conns[id - 1];
        conn.info.logged_in = true;
        conn.info.anonymous = pass.is_none();
        for (code, text) in [
            ("001", "Welcome, GLHF!"),
            ("002", "Your host is tmi.twitch.tv"),
            ("003", "This server is rather new"),
            ("004", "-"),
            ("375", "-"),
            ("372", "You are in a great company!"),
            ("376", ">"),
        ] {
            self.send(id, &format!(":tmi.twitch.tv {code} {login} :{text}"));
        }
        if pass.is_some() {
            let tags = [
                ("badge-info", String::new()),
                ("badges", String::new()),
                ("color", String::new()),
                ("display-name", login.clone()),
                ("emote-sets", "0".to_owned()),
                ("user-id", self.user_id(&login)),
                ("user-type", String::new()),
            ];
            self.send_command(id, &tagged(&tags, ":tmi.twitch.tv GLOBALUSERSTATE"));
        }
    }

    fn user_id(&self, login: &str) -> String {
        numeric_id(&format!("user:{login}"))
    }

    fn room_id(&self, channel: &str) -> String {
        numeric_id(&format!("room:{channel}"))
    }

    /// The bot's badges in `channel`, as its USERSTATE and its messages carry them.
    fn badges(&self, channel: &str, login: &str) -> (String, bool) {
        let moderator = self.moderators.contains(&key(channel, login));
        let mut badges = Vec::new();
        if login == channel {
            badges.push("broadcaster/1");
        }
        if moderator {
            badges.push("moderator/1");
        }
        if self.vips.contains(&key(channel, login)) {
            badges.push("vip/1");
        }
        (badges.join(","), moderator)
    }

    fn userstate(&mut self, id: usize, channel: &str, message_id: Option<&str>) {
        let login = self.login(id);
        let (badges, moderator) = self.badges(channel, &login);
        let mut tags = vec![
            ("badge-info", String::new()),
            ("badges", badges),
            ("color", String::new()),
            ("display-name", login.clone()),
            ("emote-sets", "0".to_owned()),
        ];
        if let Some(message_id) = message_id {
            tags.push(("id", message_id.to_owned()));
        }
        tags.extend([
            ("mod", flag(moderator)),
            ("subscriber", "0".to_owned()),
            ("user-type", if moderator { "mod" } else { "" }.to_owned()),
        ]);
        self.send_command(
            id,
            &tagged(&tags, &format!(":tmi.twitch.tv USERSTATE #{channel}")),
        );
    }

    fn join(&mut self, id: usize, channel: &str) {
        let login = self.login(id);
        if !self.conns[id - 1].info.channels.insert(channel.to_owned()) {
            return;
        }
        self.send(id, &format!("{} JOIN #{channel}", user_prefix(&login)));
        self.send(
            id,
            &format!(":{login}.tmi.twitch.tv 353 {login} = #{channel} :{login}"),
        );
        self.send(
            id,
            &format!(":{login}.tmi.twitch.tv 366 {login} #{channel} :End of /NAMES list"),
        );
        if !self.conns[id - 1].info.anonymous {
            self.userstate(id, channel, None);
        }
        let tags = [
            ("emote-only", "0".to_owned()),
            ("followers-only", "-1".to_owned()),
            ("r9k", "0".to_owned()),
            ("room-id", self.room_id(channel)),
            ("slow", "0".to_owned()),
            ("subs-only", "0".to_owned()),
        ];
        self.send_command(
            id,
            &tagged(&tags, &format!(":tmi.twitch.tv ROOMSTATE #{channel}")),
        );
    }

    fn part(&mut self, id: usize, channel: &str) {
        if self.conns[id - 1].info.channels.remove(channel) {
            let login = self.login(id);
            self.send(id, &format!("{} PART #{channel}", user_prefix(&login)));
        }
    }

    /// The `reply-parent-*` and `reply-thread-parent-*` tags of a reply to `parent_id`.
    fn reply_tags(&self, parent_id: &str) -> Option<Vec<(&'static str, String)>> {
        let parent = self.chat.iter().find(|message| message.id == parent_id)?;
        let thread = parent
            .reply_parent
            .as_deref()
            .and_then(|id| self.chat.iter().find(|message| message.id == id))
            .unwrap_or(parent);
        Some(vec![
            ("reply-parent-display-name", parent.display_name.clone()),
            ("reply-parent-msg-body", parent.text.clone()),
            ("reply-parent-msg-id", parent.id.clone()),
            ("reply-parent-user-id", parent.user_id.clone()),
            ("reply-parent-user-login", parent.login.clone()),
            (
                "reply-thread-parent-display-name",
                thread.display_name.clone(),
            ),
            ("reply-thread-parent-msg-id", thread.id.clone()),
            ("reply-thread-parent-user-id", thread.user_id.clone()),
            ("reply-thread-parent-user-login", thread.login.clone()),
        ])
    }

    fn privmsg(&mut self, id: usize, line: Line) {
        let channel = channel_name(line.param(0));
        let text = line.param(1).to_owned();
        let info = &self.conns[id - 1].info;
        let login = info.login.clone().unwrap_or_default();
        let (logged_in, anonymous) = (info.logged_in, info.anonymous);
        let privileged = self.privileged(&channel, &login);
        let now = Instant::now();
        let refused = if !logged_in {
            Some(REFUSED_NOT_LOGGED_IN)
        } else if anonymous {
            Some(REFUSED_ANONYMOUS)
        } else if text.chars().count() > MAX_MESSAGE_CHARS {
            Some(REFUSED_TOO_LONG)
        } else if self.over_rate_limit(&channel, &login, privileged, now) {
            Some(REFUSED_RATELIMIT)
        } else if !privileged && self.duplicate(&channel, &login, &text, now) {
            Some(REFUSED_DUPLICATE)
        } else {
            None
        };
        let message_id = refused.is_none().then(uuid);
        self.sent.push(Sent {
            at: now,
            connection: id,
            login: login.clone(),
            channel: channel.clone(),
            text: text.clone(),
            tags: line.tags.clone(),
            refused: refused.map(str::to_owned),
            id: message_id.clone(),
            privileged,
        });
        match refused {
            Some(REFUSED_RATELIMIT) => {
                self.over_limit += 1;
                self.notice(id, &channel, REFUSED_RATELIMIT, RATELIMIT_TEXT);
            }
            Some(REFUSED_DUPLICATE) => {
                self.notice(id, &channel, REFUSED_DUPLICATE, DUPLICATE_TEXT);
            }
            Some(_) => {}
            None => {
                let message_id = message_id.expect("a delivered message has an id");
                self.deliver(id, &channel, &login, &text, &line.tags, &message_id);
            }
        }
    }

    fn notice(&mut self, id: usize, channel: &str, msg_id: &str, text: &str) {
        self.send(
            id,
            &tagged(
                &[("msg-id", msg_id.to_owned())],
                &format!(":tmi.twitch.tv NOTICE #{channel} :{text}"),
            ),
        );
    }

    fn over_rate_limit(&self, channel: &str, login: &str, privileged: bool, now: Instant) -> bool {
        let limit = if privileged {
            self.moderator_limit
        } else {
            self.normal_limit
        };
        let recent = self
            .sent
            .iter()
            .filter(|sent| {
                sent.channel == channel
                    && sent.login == login
                    && sent.counted()
                    && now.duration_since(sent.at) < self.rate_window
            })
            .count();
        recent >= limit
    }

    fn duplicate(&self, channel: &str, login: &str, text: &str, now: Instant) -> bool {
        self.sent
            .iter()
            .rev()
            .find(|sent| sent.channel == channel && sent.login == login && sent.delivered())
            .is_some_and(|last| {
                last.text == text && now.duration_since(last.at) < self.duplicate_window
            })
    }

    /// A delivered message: USERSTATE with its id to the sender, the PRIVMSG to every other
    /// connection in the channel.
    fn deliver(
        &mut self,
        id: usize,
        channel: &str,
        login: &str,
        text: &str,
        client_tags: &BTreeMap<String, String>,
        message_id: &str,
    ) {
        self.userstate(id, channel, Some(message_id));
        let parent = client_tags.get("reply-parent-msg-id");
        let reply_tags = parent.and_then(|parent| self.reply_tags(parent));
        let (badges, moderator) = self.badges(channel, login);
        let vip = badges.contains("vip/1");
        let mut tags = vec![("badge-info", String::new()), ("badges", badges)];
        if let Some(nonce) = client_tags.get("client-nonce") {
            tags.push(("client-nonce", nonce.clone()));
        }
        tags.extend([
            ("color", String::new()),
            ("display-name", login.to_owned()),
            ("emotes", String::new()),
            ("first-msg", "0".to_owned()),
            ("flags", String::new()),
            ("id", message_id.to_owned()),
            ("mod", flag(moderator)),
        ]);
        tags.extend(reply_tags.clone().unwrap_or_default());
        tags.extend([
            ("returning-chatter", "0".to_owned()),
            ("room-id", self.room_id(channel)),
            ("subscriber", "0".to_owned()),
            ("tmi-sent-ts", unix_millis()),
            ("turbo", "0".to_owned()),
            ("user-id", self.user_id(login)),
            ("user-type", if moderator { "mod" } else { "" }.to_owned()),
        ]);
        if vip {
            tags.push(("vip", "1".to_owned()));
        }
        let shown = match text.strip_prefix("/me ") {
            Some(action) => format!("\u{1}ACTION {action}\u{1}"),
            None => text.to_owned(),
        };
        let line = tagged(
            &tags,
            &format!("{} PRIVMSG #{channel} :{shown}", user_prefix(login)),
        );
        self.chat.push(ChatMessage {
            id: message_id.to_owned(),
            channel: channel.to_owned(),
            user_id: self.user_id(login),
            login: login.to_owned(),
            display_name: login.to_owned(),
            text: text.to_owned(),
            reply_parent: reply_tags.and(parent.cloned()),
            from_connection: true,
        });
        for other in self.joined(channel, Some(id)) {
            self.send(other, &line);
        }
    }

    fn summary(&self) -> String {
        let mut out = String::from("Connections:\n");
        for conn in &self.conns {
            let info = &conn.info;
            out.push_str(&format!(
                "  #{} login {:?} logged_in {} open {} retired {} closed {:?} channels {:?} \
                 pings {} pongs {}\n",
                info.id,
                info.login,
                info.logged_in,
                info.open,
                info.retired,
                info.closed,
                info.channels,
                info.pings_sent,
                info.pongs,
            ));
        }
        if self.conns.is_empty() {
            out.push_str(
                "  none (is the client's LocalTcp slot routed here with TwitchSim::route?)\n",
            );
        }
        out.push_str(&format!(
            "Last PRIVMSGs from accounts ({} in all):\n",
            self.sent.len()
        ));
        for sent in self.sent.iter().rev().take(SUMMARY_LINES).rev() {
            out.push_str(&format!(
                "  conn {} {} #{}: {:?} refused {:?}\n",
                sent.connection, sent.login, sent.channel, sent.text, sent.refused
            ));
        }
        out.push_str(&format!(
            "Last lines ({} in all, > from client):\n",
            self.transcript.len()
        ));
        for line in self.transcript.iter().rev().take(SUMMARY_LINES).rev() {
            out.push_str(&format!(
                "  {} conn {}: {}\n",
                if line.from_client { '>' } else { '<' },
                line.connection,
                line.text
            ));
        }
        out
    }
}

// ---- Helpers ----

/// A channel's login: without `#`, lowercased.
fn channel_name(channel: &str) -> String {
    channel.trim_start_matches('#').to_ascii_lowercase()
}

fn key(channel: &str, login: &str) -> (String, String) {
    (channel_name(channel), login.to_ascii_lowercase())
}

/// `:login!login@login.tmi.twitch.tv`.
fn user_prefix(login: &str) -> String {
    format!(":{login}!{login}@{login}.tmi.twitch.tv")
}

fn flag(on: bool) -> String {
    if on { "1" } else { "0" }.to_owned()
}

fn unix_millis() -> String {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis())
        .to_string()
}
