//! Tests of the Twitch chat simulator ([`TwitchSim`]) with the production twitch-irc 6.1.3
//! client, connected through [`LocalTransport`]: it logs in, joins, parses viewers' messages
//! with all their tags, replies, sees its badges, meets Twitch's duplicate, length and rate
//! rules, reconnects by itself after RECONNECT or a dropped connection, and several replicas of
//! one bot each get every message.
//!
//! Each test routes its own [`LocalTcp`](ducks_tests::twitch::LocalTcp) slot, so they run side
//! by side.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::time::Duration;

use ducks_tests::twitch::{
    Closed, DUPLICATE_TEXT, LocalTransport, MAX_MESSAGE_CHARS, RATELIMIT_TEXT, REFUSED_DUPLICATE,
    REFUSED_RATELIMIT, REFUSED_TOO_LONG, Sent,
};
use ducks_tests::{TwitchSim, Viewer};
use tokio::sync::mpsc::UnboundedReceiver;
use twitch_irc::login::StaticLoginCredentials;
use twitch_irc::message::{NoticeMessage, ServerMessage};
use twitch_irc::{ClientConfig, TwitchIRCClient};

/// Deadline for every wait in these tests.
const WAIT: Duration = Duration::from_secs(30);

const BOT: &str = "ducksbot";
const TOKEN: &str = "0123456789abcdefghijklmnopqrst";
const CHANNEL: &str = "pond";

type Client<const SLOT: usize> = TwitchIRCClient<LocalTransport<SLOT>, StaticLoginCredentials>;

/// The bot's client configuration, except that new pool connections (after a failure, or when
/// messages pile up) open every 20 ms instead of every 2 s.
fn config(token: Option<&str>) -> ClientConfig<StaticLoginCredentials> {
    let mut config = ClientConfig::new_simple(StaticLoginCredentials::new(
        BOT.to_owned(),
        token.map(str::to_owned),
    ));
    config.new_connection_every = Duration::from_millis(20);
    config
}

fn client<const SLOT: usize>(sim: &TwitchSim) -> (UnboundedReceiver<ServerMessage>, Client<SLOT>) {
    sim.route(SLOT);
    sim.require_token(BOT, TOKEN);
    Client::<SLOT>::new(config(Some(TOKEN)))
}

fn mallard() -> Viewer<'static> {
    Viewer {
        user_id: "4711",
        login: "mallard",
        display_name: "Mallard",
        badges: &["subscriber/12"],
        badge_info: &["subscriber/14"],
        color: "#1E90FF",
        first_msg: true,
        ..Viewer::default()
    }
}

/// Runs `fut` with the [`WAIT`] deadline.
async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: no result within {WAIT:?}"))
}

/// The first message the client receives from now on for which `pick` gives a value.
async fn next_matching<T>(
    incoming: &mut UnboundedReceiver<ServerMessage>,
    what: &str,
    mut pick: impl FnMut(ServerMessage) -> Option<T>,
) -> T {
    within(what, async {
        while let Some(message) = incoming.recv().await {
            if let Some(value) = pick(message) {
                return value;
            }
        }
        panic!("the client's incoming messages ended while waiting for {what}")
    })
    .await
}

async fn next_notice(
    incoming: &mut UnboundedReceiver<ServerMessage>,
    msg_id: &str,
) -> NoticeMessage {
    next_matching(
        incoming,
        &format!("a NOTICE {msg_id}"),
        |message| match message {
            ServerMessage::Notice(notice) if notice.message_id.as_deref() == Some(msg_id) => {
                Some(notice)
            }
            _ => None,
        },
    )
    .await
}

fn badges(badges: &[twitch_irc::message::Badge]) -> Vec<String> {
    badges
        .iter()
        .map(|badge| format!("{}/{}", badge.name, badge.version))
        .collect()
}

#[tokio::test]
async fn the_client_logs_in_reads_tagged_messages_and_replies() {
    let sim = TwitchSim::start().await;
    let (mut incoming, client) = client::<1>(&sim);
    client.join(CHANNEL.to_owned()).unwrap();

    let joined = sim.wait_joined(CHANNEL, 1, WAIT).await;
    assert_eq!(joined[0].login.as_deref(), Some(BOT));
    assert!(!joined[0].anonymous);
    assert_eq!(
        joined[0].caps,
        BTreeSet::from(["twitch.tv/commands".to_owned(), "twitch.tv/tags".to_owned()]),
        "twitch-irc 6.1.3 asks for tags and commands, not membership"
    );
    let global = next_matching(&mut incoming, "GLOBALUSERSTATE", |message| match message {
        ServerMessage::GlobalUserState(state) => Some(state),
        _ => None,
    })
    .await;
    assert_eq!(global.user_id, sim.user_id(BOT));
    next_matching(&mut incoming, "the JOIN echo", |message| match message {
        ServerMessage::Join(join) if join.channel_login == CHANNEL && join.user_login == BOT => {
            Some(())
        }
        _ => None,
    })
    .await;
    assert_eq!(
        client.get_channel_status(CHANNEL.to_owned()).await,
        (true, true),
        "the client counts the channel as joined"
    );

    let id = sim.say(CHANNEL, mallard(), "!duck a pond at dawn");
    let message = next_matching(
        &mut incoming,
        "the viewer's PRIVMSG",
        |message| match message {
            ServerMessage::Privmsg(message) => Some(message),
            _ => None,
        },
    )
    .await;
    assert_eq!(message.message_id, id);
    assert_eq!(message.channel_login, CHANNEL);
    assert_eq!(message.channel_id, sim.room_id(CHANNEL));
    assert_eq!(message.message_text, "!duck a pond at dawn");
    assert_eq!(message.sender.id, "4711");
    assert_eq!(message.sender.login, "mallard");
    assert_eq!(message.sender.name, "Mallard");
    assert_eq!(badges(&message.badges), ["subscriber/12"]);
    assert_eq!(badges(&message.badge_info), ["subscriber/14"]);
    let color = message.name_color.expect("a colour");
    assert_eq!((color.r, color.g, color.b), (0x1E, 0x90, 0xFF));
    assert!(message.reply_parent.is_none());
    let tags: BTreeSet<&str> = message.source.tags.0.keys().map(String::as_str).collect();
    for tag in [
        "badge-info",
        "badges",
        "color",
        "display-name",
        "emotes",
        "first-msg",
        "flags",
        "id",
        "mod",
        "returning-chatter",
        "room-id",
        "subscriber",
        "tmi-sent-ts",
        "turbo",
        "user-id",
        "user-type",
    ] {
        assert!(tags.contains(tag), "tag {tag} missing from {tags:?}");
    }
    assert_eq!(message.source.tags.0["first-msg"], "1");
    assert_eq!(message.source.tags.0["subscriber"], "1");
    assert!(!tags.contains("vip"), "vip is only sent for VIPs");

    client
        .say_in_reply_to(&message, "here is your duck".to_owned())
        .await
        .unwrap();
    let sent = sim
        .wait_for_sent(|sent| sent.reply_parent() == Some(id.as_str()), WAIT)
        .await;
    assert_eq!(
        sent.text, ". here is your duck",
        "twitch-irc's say puts `. ` in front"
    );
    assert_eq!((sent.login.as_str(), sent.channel.as_str()), (BOT, CHANNEL));
    assert!(sent.delivered(), "{sent:?}");
    assert_eq!(sent.connection, joined[0].id);
    let replies = sim.replies_to(&id);
    assert_eq!(replies.len(), 1);
    // Twitch answers a delivered message with a USERSTATE carrying its id.
    let sent_id = sent.id.clone().expect("a delivered message has an id");
    next_matching(
        &mut incoming,
        "the USERSTATE after the reply",
        |message| match message {
            ServerMessage::UserState(state) if state.source.tags.0.get("id") == Some(&sent_id) => {
                Some(())
            }
            _ => None,
        },
    )
    .await;
    let chat = sim.chat(CHANNEL);
    assert_eq!(chat.len(), 2);
    assert_eq!(chat[1].reply_parent.as_deref(), Some(id.as_str()));
    assert!(chat[1].from_connection && !chat[0].from_connection);

    // The client's PING (every 30 s; it gives up on the connection without a PONG in 5 s)
    // gets a PONG, and the server's PING is answered.
    client.ping().await.unwrap();
    next_matching(&mut incoming, "the PONG", |message| {
        matches!(message, ServerMessage::Pong(_)).then_some(())
    })
    .await;
    assert!(sim.connections()[0].client_pings >= 1);
    sim.ping_all();
    sim.wait_connections(
        "a PONG to the server's PING",
        |connections| connections.iter().any(|connection| connection.pongs >= 1),
        WAIT,
    )
    .await;

    let transcript = sim.transcript();
    assert!(
        transcript
            .iter()
            .any(|line| line.from_client && line.text == "PASS <redacted>")
    );
    assert!(transcript.iter().all(|line| !line.text.contains(TOKEN)));
    assert!(transcript.iter().any(
        |line| !line.from_client && line.text == ":tmi.twitch.tv 001 ducksbot :Welcome, GLHF!"
    ));
}

#[tokio::test]
async fn a_wrong_token_gets_login_authentication_failed() {
    let sim = TwitchSim::start().await;
    sim.route(2);
    sim.require_token(BOT, TOKEN);
    // Twitch's default pace for new connections, so the retries after the failure stay few.
    let mut config = config(Some("not-the-token"));
    config.new_connection_every = Duration::from_secs(2);
    let (mut incoming, client) = Client::<2>::new(config);
    client.join(CHANNEL.to_owned()).unwrap();

    let notice = next_matching(&mut incoming, "the login NOTICE", |message| match message {
        ServerMessage::Notice(notice) => Some(notice),
        _ => None,
    })
    .await;
    assert_eq!(notice.message_text, "Login authentication failed");
    assert_eq!(notice.channel_login, None);
    let connections = sim
        .wait_connections(
            "the connection closed after the failed login",
            |connections| {
                connections
                    .first()
                    .is_some_and(|connection| !connection.open)
            },
            WAIT,
        )
        .await;
    assert_eq!(connections[0].closed, Some(Closed::LoginFailed));
    assert!(
        sim.connections()
            .iter()
            .all(|connection| !connection.logged_in && connection.channels.is_empty())
    );
}

#[tokio::test]
async fn userstate_carries_the_bots_badges() {
    let sim = TwitchSim::start().await;
    let (mut incoming, client) = client::<3>(&sim);
    sim.make_moderator("modpond", BOT);
    sim.make_vip("vippond", BOT);
    let channels = ["modpond", "vippond", "plainpond", BOT];
    for channel in channels {
        client.join(channel.to_owned()).unwrap();
    }

    let mut seen = BTreeMap::new();
    let mut rooms = BTreeMap::new();
    while seen.len() < channels.len() || rooms.len() < channels.len() {
        match next_matching(
            &mut incoming,
            "USERSTATE and ROOMSTATE",
            |message| match message {
                ServerMessage::UserState(_) | ServerMessage::RoomState(_) => Some(message),
                _ => None,
            },
        )
        .await
        {
            ServerMessage::UserState(state) => {
                seen.insert(state.channel_login.clone(), badges(&state.badges));
            }
            ServerMessage::RoomState(room) => {
                rooms.insert(room.channel_login.clone(), room.channel_id.clone());
            }
            _ => unreachable!(),
        }
    }
    assert_eq!(seen["modpond"], ["moderator/1"]);
    assert_eq!(seen["vippond"], ["vip/1"]);
    assert!(seen["plainpond"].is_empty());
    assert_eq!(seen[BOT], ["broadcaster/1"]);
    for channel in channels {
        assert_eq!(rooms[channel], sim.room_id(channel));
    }
}

/// The PRIVMSGs sent to `channel`.
fn in_channel(channel: &'static str) -> impl Fn(&Sent) -> bool {
    move |sent| sent.channel == channel
}

#[tokio::test]
async fn duplicates_long_messages_and_the_rate_limit_are_refused() {
    let sim = TwitchSim::start().await;
    let (mut incoming, client) = client::<4>(&sim);
    client.join(CHANNEL.to_owned()).unwrap();
    sim.wait_joined(CHANNEL, 1, WAIT).await;

    // An identical message within 30 s.
    for _ in 0..2 {
        client
            .privmsg(CHANNEL.to_owned(), "quack".to_owned())
            .await
            .unwrap();
    }
    let notice = next_notice(&mut incoming, REFUSED_DUPLICATE).await;
    assert_eq!(notice.message_text, DUPLICATE_TEXT);
    assert_eq!(notice.channel_login.as_deref(), Some(CHANNEL));
    let quacks = sim
        .wait_for_sent_count(2, |sent| sent.text == "quack", WAIT)
        .await;
    assert!(quacks[0].delivered());
    assert_eq!(quacks[1].refused.as_deref(), Some(REFUSED_DUPLICATE));

    // After the (shortened) window the same text goes through.
    sim.set_duplicate_window(Duration::from_millis(200));
    client
        .privmsg(CHANNEL.to_owned(), "honk".to_owned())
        .await
        .unwrap();
    sim.wait_for_sent(|sent| sent.text == "honk", WAIT).await;
    tokio::time::sleep(Duration::from_millis(250)).await;
    client
        .privmsg(CHANNEL.to_owned(), "honk".to_owned())
        .await
        .unwrap();
    let honks = sim
        .wait_for_sent_count(2, |sent| sent.text == "honk", WAIT)
        .await;
    assert!(honks.iter().all(Sent::delivered), "{honks:?}");

    // 500 characters are fine, 501 are dropped without a NOTICE.
    for length in [MAX_MESSAGE_CHARS, MAX_MESSAGE_CHARS + 1] {
        client
            .privmsg(CHANNEL.to_owned(), "é".repeat(length))
            .await
            .unwrap();
    }
    let long = sim
        .wait_for_sent_count(2, |sent| sent.text.starts_with('é'), WAIT)
        .await;
    assert!(long[0].delivered());
    assert_eq!(long[1].refused.as_deref(), Some(REFUSED_TOO_LONG));

    // 25 messages at once: 20 go through, 5 are over the limit, each answered by a NOTICE,
    // however many pool connections twitch-irc spreads them over.
    for i in 0..25 {
        client
            .privmsg("busypond".to_owned(), format!("duck {i}"))
            .await
            .unwrap();
    }
    let busy = sim
        .wait_for_sent_count(25, in_channel("busypond"), WAIT)
        .await;
    for _ in 0..5 {
        let notice = next_notice(&mut incoming, REFUSED_RATELIMIT).await;
        assert_eq!(notice.message_text, RATELIMIT_TEXT);
        assert_eq!(notice.channel_login.as_deref(), Some("busypond"));
    }
    assert_eq!(sim.over_limit(), 5);
    assert_eq!(busy.iter().filter(|sent| sent.delivered()).count(), 20);
    assert_eq!(
        busy.iter()
            .filter(|sent| sent.refused.as_deref() == Some(REFUSED_RATELIMIT))
            .count(),
        5
    );
    assert_eq!(sim.max_in_window("busypond", Duration::from_secs(30)), 25);
    // twitch-irc opens another pool connection when 5 messages are under way on each (150 ms
    // apiece), so a burst usually spreads over several; the limit is the account's either way.

    // A moderator gets 100, and may repeat itself.
    sim.make_moderator("modpond", BOT);
    for i in 0..105 {
        let text = if i < 2 {
            "mod quack".to_owned()
        } else {
            format!("mod duck {i}")
        };
        client.privmsg("modpond".to_owned(), text).await.unwrap();
    }
    let moderated = sim
        .wait_for_sent_count(105, in_channel("modpond"), WAIT)
        .await;
    assert!(moderated.iter().all(|sent| sent.privileged));
    assert_eq!(
        moderated.iter().filter(|sent| sent.delivered()).count(),
        100
    );
    assert_eq!(sim.over_limit(), 10);
    assert!(
        moderated[..2].iter().all(Sent::delivered),
        "a moderator may repeat itself: {:?}",
        &moderated[..2]
    );
    // The NOTICEs: 1 duplicate, 10 over the limit; none for the long message.
    let notices = sim
        .transcript()
        .iter()
        .filter(|line| line.text.contains(" NOTICE "))
        .count();
    assert_eq!(notices, 11);
}

#[tokio::test]
async fn the_client_reconnects_and_rejoins_by_itself() {
    let sim = TwitchSim::start().await;
    let (mut incoming, client) = client::<5>(&sim);
    client.join(CHANNEL.to_owned()).unwrap();
    let first = sim.wait_joined(CHANNEL, 1, WAIT).await[0].id;

    assert_eq!(sim.reconnect_all(), 1);
    next_matching(&mut incoming, "RECONNECT", |message| {
        matches!(message, ServerMessage::Reconnect(_)).then_some(())
    })
    .await;
    let second = sim.wait_joined(CHANNEL, 1, WAIT).await[0].id;
    assert_ne!(second, first);
    sim.wait_connections(
        "the first connection closed",
        |connections| !connections[first - 1].open,
        WAIT,
    )
    .await;
    assert_eq!(sim.connections()[first - 1].closed, Some(Closed::Reconnect));
    let id = sim.say(CHANNEL, mallard(), "still there?");
    let message =
        next_matching(
            &mut incoming,
            "a PRIVMSG after the reconnect",
            |message| match message {
                ServerMessage::Privmsg(message) => Some(message),
                _ => None,
            },
        )
        .await;
    assert_eq!(message.message_id, id);

    // A connection that just breaks is replaced too.
    assert_eq!(sim.drop_all(), 1);
    let third = sim.wait_joined(CHANNEL, 1, WAIT).await[0].id;
    assert!(third > second);
    let id = sim.say(CHANNEL, mallard(), "and now?");
    let message = next_matching(
        &mut incoming,
        "a PRIVMSG after the drop",
        |message| match message {
            ServerMessage::Privmsg(message) => Some(message),
            _ => None,
        },
    )
    .await;
    assert_eq!(message.message_id, id);
    let connections = sim
        .wait_connections(
            "the second connection closed",
            |connections| !connections[second - 1].open,
            WAIT,
        )
        .await;
    assert_eq!(connections[second - 1].closed, Some(Closed::Dropped));
}

#[tokio::test]
async fn every_replica_gets_every_message() {
    let sim = TwitchSim::start().await;
    let (mut first_incoming, first) = client::<6>(&sim);
    let (mut second_incoming, second) = Client::<6>::new(config(Some(TOKEN)));
    first.join(CHANNEL.to_owned()).unwrap();
    second.join(CHANNEL.to_owned()).unwrap();
    sim.wait_joined(CHANNEL, 2, WAIT).await;

    let id = sim.say(CHANNEL, mallard(), "!duck twice?");
    for incoming in [&mut first_incoming, &mut second_incoming] {
        let message = next_matching(incoming, "the viewer's PRIVMSG", |message| match message {
            ServerMessage::Privmsg(message) => Some(message),
            _ => None,
        })
        .await;
        assert_eq!(message.message_id, id);
    }

    // One replica's reply reaches the other one (which must ignore its own account's messages),
    // with the reply-parent tags, and not the sender.
    first
        .say_in_reply_to(&(CHANNEL.to_owned(), id.clone()), "one duck".to_owned())
        .await
        .unwrap();
    let echoed = next_matching(
        &mut second_incoming,
        "the other replica's reply",
        |message| match message {
            ServerMessage::Privmsg(message) => Some(message),
            _ => None,
        },
    )
    .await;
    assert_eq!(echoed.sender.login, BOT);
    assert_eq!(echoed.message_text, ". one duck");
    let parent = echoed.reply_parent.expect("reply-parent tags");
    assert_eq!(parent.message_id, id);
    assert_eq!(parent.reply_parent_user.login, "mallard");
    assert_eq!(parent.message_text, "!duck twice?");
    let sender_got_it = sim
        .transcript()
        .iter()
        .filter(|line| !line.from_client && line.text.contains("PRIVMSG #pond :. one duck"))
        .count();
    assert_eq!(sender_got_it, 1, "only the other replica gets it");
    assert_eq!(sim.replies_to(&id).len(), 1);

    // The rate limit is the account's, over all its connections.
    sim.set_rate_limit(Duration::from_secs(30), 3, 100);
    for (i, client) in [&first, &second, &first, &second].into_iter().enumerate() {
        client
            .privmsg("sharedpond".to_owned(), format!("duck {i}"))
            .await
            .unwrap();
    }
    let shared = sim
        .wait_for_sent_count(4, in_channel("sharedpond"), WAIT)
        .await;
    let connections: BTreeSet<usize> = shared.iter().map(|sent| sent.connection).collect();
    assert_eq!(connections.len(), 2);
    assert_eq!(shared.iter().filter(|sent| sent.delivered()).count(), 3);
    assert_eq!(sim.over_limit(), 1);
    assert_eq!(sim.max_in_window("sharedpond", Duration::from_secs(30)), 4);
}

#[tokio::test]
#[should_panic(expected = "Twitch simulator: waited")]
async fn waits_end_with_an_explanation() {
    let sim = TwitchSim::start().await;
    sim.wait_joined(CHANNEL, 1, Duration::from_millis(50)).await;
}
