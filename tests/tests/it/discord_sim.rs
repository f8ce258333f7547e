//! Tests of the Discord API simulator ([`DiscordSim`]) with the production serenity 0.12.5 client:
//! its payloads parse as serenity's models, a real gateway client connects, receives
//! interactions, answers them over REST and survives a RECONNECT, an incomplete payload never
//! reaches `interaction_create`, HTTP interactions verify with serenity's own `Verifier`, and the
//! faults (429, expired tokens, missing access) look as Discord's.

use std::future::{Future, IntoFuture};
use std::time::Duration;

use ducks_tests::DiscordSim;
use ducks_tests::discord::{
    self, APPLICATION_ID, Actor, InteractionPayload, MANAGE_MESSAGES, RecordedRequest,
};
use serde_json::{Value, json};
use serenity::all::{
    ChannelId, Client, ClientBuilder, Command, CommandDataOptionValue, CommandInteraction,
    CommandOptionType, ComponentInteraction, Context, CreateActionRow, CreateAllowedMentions,
    CreateAttachment, CreateButton, CreateCommand, CreateCommandOption, CreateInteractionResponse,
    CreateInteractionResponseFollowup, CreateInteractionResponseMessage, CreateMessage,
    EditInteractionResponse, Event, EventHandler, GatewayIntents, GuildId, Interaction, Message,
    MessageId, RawEventHandler,
};
use tokio::sync::mpsc;

/// Deadline for every wait in these tests.
const WAIT: Duration = Duration::from_secs(30);

const GUILD: u64 = 1_190_000_000_000_000_001;
const CHANNEL: u64 = 1_190_000_000_000_000_101;
const DM_CHANNEL: u64 = 1_190_000_000_000_000_201;
const USER: u64 = 1_190_000_000_000_000_301;

/// An 8×8 PNG header: enough for the simulator to read the size.
const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x08\0\0\0\x08\x08\x02\0\0\0";

fn member() -> Actor {
    Actor::in_guild(USER, "quackers", GUILD, CHANNEL)
}

/// Runs `fut` with the [`WAIT`] deadline.
async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: no result within {WAIT:?}"))
}

fn parse_interaction(payload: &InteractionPayload) -> Interaction {
    serde_json::from_value(payload.json.clone()).unwrap_or_else(|err| {
        panic!(
            "serenity cannot parse the payload: {err}\n{:#}",
            payload.json
        )
    })
}

/// Discord's error code in a serenity error, if it is an unsuccessful request.
fn discord_code(err: &serenity::Error) -> Option<isize> {
    match err {
        serenity::Error::Http(serenity::http::HttpError::UnsuccessfulRequest(response)) => {
            Some(response.error.code)
        }
        _ => None,
    }
}

#[tokio::test]
async fn payloads_and_answers_parse_as_serenity_models() {
    let sim = DiscordSim::start().await;
    let http = sim.http();

    // A slash command with a string and an integer option, in a guild, from a moderator.
    let options = [("prompt", json!("a duck in a pond")), ("steps", json!(4))];
    let moderator = member().with_permissions(discord::MEMBER_PERMISSIONS | MANAGE_MESSAGES);
    let slash = discord::slash_command("imagine", &options, &moderator);
    let Interaction::Command(command) = parse_interaction(&slash) else {
        panic!("a slash command parses as Interaction::Command");
    };
    assert_eq!(command.id.get(), slash.id);
    assert_eq!(command.token, slash.token);
    assert_eq!(command.application_id.get(), APPLICATION_ID);
    assert_eq!(command.guild_id, Some(GuildId::new(GUILD)));
    assert_eq!(command.channel_id, ChannelId::new(CHANNEL));
    assert_eq!(
        command.user.id.get(),
        USER,
        "serenity takes the user from member"
    );
    assert_eq!(command.data.name, "imagine");
    assert_eq!(command.data.id.get(), discord::command_id("imagine"));
    assert_eq!(
        command.data.options[0].value,
        CommandDataOptionValue::String("a duck in a pond".to_owned())
    );
    assert_eq!(
        command.data.options[1].value,
        CommandDataOptionValue::Integer(4)
    );
    let permissions = command
        .member
        .as_ref()
        .and_then(|member| member.permissions)
        .expect("member permissions");
    assert!(permissions.manage_messages());
    assert_eq!(command.attachment_size_limit, 10 * 1024 * 1024);

    // The same in a DM: `user`, no guild.
    let dm = discord::slash_command(
        "imagine",
        &options,
        &Actor::in_dm(USER, "quackers", DM_CHANNEL),
    );
    let Interaction::Command(dm_command) = parse_interaction(&dm) else {
        panic!("a DM slash command parses as Interaction::Command");
    };
    assert_eq!(dm_command.guild_id, None);
    assert!(dm_command.member.is_none());
    assert_eq!(dm_command.user.name, "quackers");

    // Autocomplete: the focused option's partial input.
    let typing = discord::autocomplete(
        "imagine",
        &[("prompt", json!("a duck")), ("model", json!("sd"))],
        "model",
        &member(),
    );
    let Interaction::Autocomplete(typing) = parse_interaction(&typing) else {
        panic!("an autocomplete parses as Interaction::Autocomplete");
    };
    let focused = typing.data.autocomplete().expect("a focused option");
    assert_eq!((focused.name, focused.value), ("model", "sd"));

    // The simulator's message (the original response) parses as serenity's Message ...
    sim.register_interaction(&slash.json);
    command
        .create_response(
            &http,
            CreateInteractionResponse::Message(
                CreateInteractionResponseMessage::new()
                    .content("Queued: a duck in a pond <@42> @everyone")
                    .allowed_mentions(CreateAllowedMentions::new())
                    .components(vec![CreateActionRow::Buttons(vec![
                        CreateButton::new("cancel").label("Cancel"),
                    ])]),
            ),
        )
        .await
        .expect("answer the slash command");
    let original = sim.original(&slash.token).expect("an original response");
    let message: Message = serde_json::from_value(original.clone())
        .unwrap_or_else(|err| panic!("serenity cannot parse the message: {err}\n{original:#}"));
    assert_eq!(message.channel_id, ChannelId::new(CHANNEL));
    assert_eq!(message.author.id.get(), APPLICATION_ID);
    assert!(
        !message.mention_everyone,
        "empty allowed_mentions ping no one"
    );
    assert!(message.mentions.is_empty());
    assert_eq!(message.components.len(), 1);
    assert_eq!(original["interaction_metadata"]["name"], "imagine");

    // ... and a button on it parses as a component interaction carrying that message.
    let click = discord::button("cancel", &original, &member());
    let Interaction::Component(click) = parse_interaction(&click) else {
        panic!("a button click parses as Interaction::Component");
    };
    assert_eq!(click.data.custom_id, "cancel");
    assert_eq!(click.message.id, message.id);

    // A PING parses too.
    assert!(matches!(
        parse_interaction(&discord::ping()),
        Interaction::Ping(_)
    ));

    // Commands, gateway discovery and the application through serenity's own calls.
    let imagine = CreateCommand::new("imagine")
        .description("Draw a picture")
        .add_option(
            CreateCommandOption::new(CommandOptionType::String, "prompt", "What to draw")
                .required(true),
        )
        .add_option(
            CreateCommandOption::new(CommandOptionType::Integer, "steps", "Sampling steps")
                .min_int_value(1)
                .max_int_value(50),
        );
    let global = Command::set_global_commands(&http, vec![imagine.clone()])
        .await
        .expect("overwrite the global commands");
    assert_eq!(global.len(), 1);
    assert_eq!(global[0].id.get(), discord::command_id("imagine"));
    assert_eq!(global[0].options.len(), 2);
    let in_guild = GuildId::new(GUILD)
        .set_commands(&http, vec![imagine])
        .await
        .expect("overwrite the guild's commands");
    assert_eq!(in_guild[0].guild_id, Some(GuildId::new(GUILD)));
    assert_eq!(sim.commands(None).len(), 1);
    assert_eq!(sim.commands(Some(GUILD))[0]["name"], "imagine");
    for echoed in sim.commands(None) {
        serde_json::from_value::<Command>(echoed.clone())
            .unwrap_or_else(|err| panic!("serenity cannot parse the command: {err}\n{echoed:#}"));
    }
    let bad = Command::set_global_commands(
        &http,
        vec![CreateCommand::new("Imagine").description("Upper case is not allowed")],
    )
    .await
    .expect_err("an invalid command name");
    assert_eq!(discord_code(&bad), Some(50035));

    assert_eq!(
        http.get_gateway().await.expect("GET /gateway").url,
        sim.gateway_url()
    );
    let bot_gateway = http.get_bot_gateway().await.expect("GET /gateway/bot");
    assert_eq!(bot_gateway.shards, 1);
    let application = http
        .get_current_application_info()
        .await
        .expect("GET /oauth2/applications/@me");
    assert_eq!(application.id.get(), APPLICATION_ID);
    assert_eq!(application.verify_key, sim.public_key_hex());
    assert_eq!(
        http.get_current_user()
            .await
            .expect("GET /users/@me")
            .id
            .get(),
        APPLICATION_ID
    );
}

/// Forwards interactions to the test.
struct Forward(mpsc::UnboundedSender<Interaction>);

#[serenity::async_trait]
impl EventHandler for Forward {
    async fn interaction_create(&self, _ctx: Context, interaction: Interaction) {
        let _ = self.0.send(interaction);
    }
}

/// Forwards events serenity could not parse (`Event::Unknown`): kind and payload.
struct Unknowns(mpsc::UnboundedSender<(String, Value)>);

#[serenity::async_trait]
impl RawEventHandler for Unknowns {
    async fn raw_event(&self, _ctx: Context, event: Event) {
        if let Event::Unknown(unknown) = event {
            let _ = self.0.send((unknown.kind, unknown.value));
        }
    }
}

async fn next_command(rx: &mut mpsc::UnboundedReceiver<Interaction>) -> CommandInteraction {
    match within("an interaction in interaction_create", rx.recv()).await {
        Some(Interaction::Command(command)) => command,
        other => panic!("expected a slash command, got {other:?}"),
    }
}

#[tokio::test]
async fn serenity_gateway_client_receives_and_answers_interactions() {
    let sim = DiscordSim::start().await;
    let (interactions, mut received) = mpsc::unbounded_channel();
    let (unknowns, mut unknown) = mpsc::unbounded_channel();
    let mut client: Client = within(
        "build the serenity client",
        ClientBuilder::new_with_http(sim.http(), GatewayIntents::empty())
            .event_handler(Forward(interactions))
            .raw_event_handler(Unknowns(unknowns))
            .into_future(),
    )
    .await
    .expect("build the serenity client");
    let shard_manager = client.shard_manager.clone();
    let http = client.http.clone();
    let run = tokio::spawn(async move { client.start().await });

    assert_eq!(sim.wait_gateway_ready(WAIT).await, 1);
    let sessions = sim.gateway_sessions();
    assert_eq!(
        sessions[0].query, "v=10",
        "serenity asks for v10, no compression"
    );
    assert!(sessions[0].identified);
    assert!(
        sim.requests()
            .iter()
            .any(|request| request.is("GET", "/gateway") && request.path == "/api/v10/gateway"),
        "serenity asks GET /gateway for the URL before it connects"
    );

    // A slash command over the gateway, answered through serenity's REST calls.
    let options = [("prompt", json!("a duck")), ("steps", json!(4))];
    let slash = discord::slash_command("imagine", &options, &member());
    assert_eq!(sim.dispatch_interaction(&slash.json), 1);
    let command = next_command(&mut received).await;
    assert_eq!(command.id.get(), slash.id);
    assert_eq!(
        command.data.options[0].value,
        CommandDataOptionValue::String("a duck".to_owned())
    );
    assert_eq!(
        command.data.options[1].value,
        CommandDataOptionValue::Integer(4)
    );
    command
        .create_response(
            &http,
            CreateInteractionResponse::Message(
                CreateInteractionResponseMessage::new()
                    .content("Queued: a duck")
                    .components(vec![CreateActionRow::Buttons(vec![
                        CreateButton::new("regenerate").label("Again"),
                    ])]),
            ),
        )
        .await
        .expect("answer the slash command");
    let original = sim.original(&slash.token).expect("the original response");
    assert_eq!(original["content"], "Queued: a duck");
    assert_eq!(original["channel_id"], CHANNEL.to_string());
    let again = command
        .create_response(
            &http,
            CreateInteractionResponse::Message(
                CreateInteractionResponseMessage::new().content("twice"),
            ),
        )
        .await
        .expect_err("a second callback");
    assert_eq!(discord_code(&again), Some(40060));
    let edited = command
        .edit_response(
            &http,
            EditInteractionResponse::new().content("Done: a duck"),
        )
        .await
        .expect("edit the original response");
    assert_eq!(edited.content, "Done: a duck");
    assert!(edited.edited_timestamp.is_some());
    assert_eq!(sim.edits_of(&slash.token), 1);
    sim.wait_for_original(
        &slash.token,
        |message| message["content"] == "Done: a duck",
        WAIT,
    )
    .await;

    // RECONNECT: serenity resumes on a new connection and still gets interactions.
    assert_eq!(sim.reconnect_all(), 1);
    let sessions = sim
        .wait_gateway(
            |sessions| {
                sessions
                    .iter()
                    .any(|session| session.live() && session.connection > 1)
            },
            WAIT,
        )
        .await;
    let new = sessions
        .iter()
        .find(|session| session.live())
        .expect("a live session");
    assert!(new.resumed, "serenity resumes after op 7: {sessions:?}");
    assert_eq!(new.session_id, sessions[0].session_id);
    let current = sim.original(&slash.token).expect("the original response");
    let click = discord::button("regenerate", &current, &member());
    assert_eq!(sim.dispatch_interaction(&click.json), 1);
    let component: ComponentInteraction = match within("the button click", received.recv()).await {
        Some(Interaction::Component(component)) => component,
        other => panic!("expected a button click, got {other:?}"),
    };
    assert_eq!(component.data.custom_id, "regenerate");
    component
        .create_response(
            &http,
            CreateInteractionResponse::UpdateMessage(
                CreateInteractionResponseMessage::new().content("Regenerating: a duck"),
            ),
        )
        .await
        .expect("update the message the button is on");
    let updated = sim.original(&click.token).expect("the button's message");
    assert_eq!(
        updated["id"], current["id"],
        "UPDATE_MESSAGE edits the same message"
    );
    assert_eq!(updated["content"], "Regenerating: a duck");
    assert_eq!(
        sim.original(&slash.token).expect("the original")["content"],
        "Regenerating: a duck"
    );

    // The trap: an INTERACTION_CREATE without `attachment_size_limit` becomes Event::Unknown.
    let mut incomplete = discord::slash_command("imagine", &options, &member());
    incomplete
        .json
        .as_object_mut()
        .expect("an object")
        .remove("attachment_size_limit");
    assert_eq!(sim.dispatch_interaction(&incomplete.json), 1);
    let (kind, value) = within("an unknown event", unknown.recv())
        .await
        .expect("the raw handler is alive");
    assert_eq!(kind, "INTERACTION_CREATE");
    assert_eq!(value["id"], incomplete.id.to_string());
    let complete = discord::slash_command("imagine", &options, &member());
    sim.dispatch_interaction(&complete.json);
    let next = next_command(&mut received).await;
    assert_eq!(
        next.id.get(),
        complete.id,
        "the incomplete interaction must not reach interaction_create"
    );
    assert!(received.try_recv().is_err());

    within("shut the shards down", shard_manager.shutdown_all()).await;
    within("the client to stop", run)
        .await
        .expect("the client task")
        .expect("the client stops cleanly");
    sim.wait_gateway(
        |sessions| sessions.iter().all(|session| !session.open),
        WAIT,
    )
    .await;
}

fn header<'a>(response: &'a reqwest::Response, name: &str) -> &'a str {
    response
        .headers()
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .to_str()
        .expect("an ASCII header")
}

#[tokio::test]
async fn rate_limits_answer_429_and_count_early_retries() {
    let sim = DiscordSim::start().await;
    let slash = discord::slash_command("imagine", &[("prompt", json!("a duck"))], &member());
    sim.register_interaction(&slash.json);
    let client = reqwest::Client::new();
    let callback = format!(
        "{}/api/v10/interactions/{}/{}/callback",
        sim.api_base(),
        slash.id,
        slash.token
    );
    let answer = json!({"type": 4, "data": {"content": "Queued"}});
    let first = client
        .post(&callback)
        .json(&answer)
        .send()
        .await
        .expect("callback");
    assert_eq!(first.status(), 204);
    assert!(first.headers().contains_key("x-ratelimit-bucket"));
    let second = client
        .post(&callback)
        .json(&answer)
        .send()
        .await
        .expect("callback");
    assert_eq!(second.status(), 400);
    let error: Value = second.json().await.expect("an error body");
    assert_eq!(error["code"], 40060);

    let original = format!(
        "{}/api/v10/webhooks/{APPLICATION_ID}/{}/messages/@original",
        sim.api_base(),
        slash.token
    );
    sim.rate_limit_next(1, Duration::from_millis(300));
    let limited = client
        .patch(&original)
        .json(&json!({"content": "50%"}))
        .send()
        .await
        .expect("PATCH");
    assert_eq!(limited.status(), 429);
    assert_eq!(header(&limited, "retry-after"), "1");
    assert_eq!(header(&limited, "x-ratelimit-remaining"), "0");
    assert_eq!(header(&limited, "x-ratelimit-reset-after"), "0.300");
    assert_eq!(header(&limited, "x-ratelimit-scope"), "user");
    assert!(!header(&limited, "x-ratelimit-bucket").is_empty());
    assert!(!header(&limited, "x-ratelimit-limit").is_empty());
    assert!(header(&limited, "x-ratelimit-reset").parse::<f64>().is_ok());
    let body: Value = limited.json().await.expect("a 429 body");
    assert_eq!(
        body,
        json!({"message": "You are being rate limited.", "retry_after": 0.3, "global": false})
    );

    // Straight back: an early retry (answered, the 429s being used up).
    let early = client
        .patch(&original)
        .json(&json!({"content": "60%"}))
        .send()
        .await
        .expect("PATCH");
    assert_eq!(early.status(), 200);
    assert_eq!(sim.early_retries(), 1);
    assert_eq!(sim.rate_limited(), 1);

    // After the announced wait (the wait is what is tested): not early.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let late = client
        .patch(&original)
        .json(&json!({"content": "70%"}))
        .send()
        .await
        .expect("PATCH");
    assert_eq!(late.status(), 200);
    assert_eq!(sim.early_retries(), 1);
    let requests: Vec<RecordedRequest> = sim.requests();
    let last = requests.last().expect("requests");
    assert!(!last.early_retry);
    assert_eq!(last.json, Some(json!({"content": "70%"})));
    assert_eq!(
        sim.original(&slash.token).expect("the original")["content"],
        "70%"
    );
    assert_eq!(sim.edits_of(&slash.token), 2);
}

#[tokio::test]
async fn http_interactions_are_signed_as_serenity_verifies() {
    use axum::body::Bytes;
    use axum::http::{HeaderMap, StatusCode};

    let sim = DiscordSim::start().await;
    let key: [u8; 32] = hex::decode(sim.public_key_hex())
        .expect("hex")
        .try_into()
        .expect("32 bytes");
    let verifier = serenity::interactions_endpoint::Verifier::try_new(key).expect("a valid key");
    // A minimal interactions endpoint: serenity's check, PONG, a message answer.
    let endpoint = axum::Router::new().route(
        "/interactions",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let verifier = verifier.clone();
            async move {
                let header = |name: &str| {
                    headers
                        .get(name)
                        .and_then(|value| value.to_str().ok())
                        .unwrap_or_default()
                        .to_owned()
                };
                let verified = verifier.verify(
                    &header("X-Signature-Ed25519"),
                    &header("X-Signature-Timestamp"),
                    &body,
                );
                if verified.is_err() {
                    return (
                        StatusCode::UNAUTHORIZED,
                        "invalid request signature".to_owned(),
                    );
                }
                let answer = match serde_json::from_slice::<Interaction>(&body) {
                    Ok(Interaction::Ping(_)) => json!({"type": 1}),
                    Ok(Interaction::Command(command)) => json!({
                        "type": 4,
                        "data": {"content": format!("Hello {}", command.user.name)},
                    }),
                    other => panic!("unexpected interaction {other:?}"),
                };
                (StatusCode::OK, answer.to_string())
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the endpoint");
    let url = format!(
        "http://{}/interactions",
        listener.local_addr().expect("its address")
    );
    let server = tokio::spawn(async move { axum::serve(listener, endpoint).await });

    let (status, body) = sim.post_interaction(&url, &discord::ping().json).await;
    assert_eq!((status, body.as_str()), (200, r#"{"type":1}"#));

    let slash = discord::slash_command("imagine", &[("prompt", json!("a duck"))], &member());
    let (status, _) = sim.post_interaction(&url, &slash.json).await;
    assert_eq!(status, 200);
    let original = sim
        .original(&slash.token)
        .expect("the answer became the original");
    assert_eq!(original["content"], "Hello quackers");
    assert!(sim.rejected_responses().is_empty());

    // Tampered body, stale signature, no headers: all refused.
    let client = reqwest::Client::new();
    let send = |signed: discord::SignedRequest, headers: bool| {
        let mut request = client.post(&url).body(signed.body.clone());
        if headers {
            for (name, value) in signed.headers() {
                request = request.header(name, value);
            }
        }
        async move { request.send().await.expect("POST").status().as_u16() }
    };
    let mut tampered = sim.signed_request(&slash.json);
    tampered.body = tampered.body.replace("a duck", "a goose");
    assert_eq!(send(tampered, true).await, 401);
    let mut other_time = sim.signed_request(&slash.json);
    other_time.timestamp = "1".to_owned();
    assert_eq!(send(other_time, true).await, 401);
    assert_eq!(send(sim.signed_request(&slash.json), false).await, 401);
    let mut resigned = sim.signed_request(&slash.json);
    resigned.timestamp = "1".to_owned();
    resigned.signature = sim.sign("1", &resigned.body);
    assert_eq!(
        send(resigned, true).await,
        200,
        "a correct signature verifies"
    );
    server.abort();
}

#[tokio::test]
async fn webhook_and_channel_faults_look_like_discord() {
    let sim = DiscordSim::start().await;
    let http = sim.http();
    let slash = discord::slash_command("imagine", &[("prompt", json!("a duck"))], &member());
    sim.register_interaction(&slash.json);
    let Interaction::Command(command) = parse_interaction(&slash) else {
        panic!("a slash command");
    };

    // Editing before any response: there is no original.
    let early = command
        .edit_response(&http, EditInteractionResponse::new().content("too soon"))
        .await
        .expect_err("no original yet");
    assert_eq!(discord_code(&early), Some(10008));

    // Deferred, then follow-up with a file, then edited: the loading flag goes away.
    command.defer(&http).await.expect("defer");
    let loading = sim.original(&slash.token).expect("a loading original");
    assert_eq!(loading["flags"], 128);
    let followup = command
        .create_followup(
            &http,
            CreateInteractionResponseFollowup::new()
                .content("here")
                .add_file(CreateAttachment::bytes(PNG.to_vec(), "duck.png")),
        )
        .await
        .expect("a follow-up with a file");
    assert_eq!(followup.attachments.len(), 1);
    assert_eq!(followup.attachments[0].dimensions(), Some((8, 8)));
    assert_eq!(
        sim.attachment_bytes(&followup.attachments[0].url)
            .as_deref(),
        Some(PNG)
    );
    let upload = sim
        .wait_for_request(
            |request| request.is("POST", "/webhooks/") && !request.files.is_empty(),
            WAIT,
        )
        .await;
    assert_eq!(upload.files[0].filename, "duck.png");
    assert_eq!(upload.files[0].size(), PNG.len());
    assert_eq!(
        upload.json.as_ref().expect("payload_json")["content"],
        "here"
    );
    assert_eq!(sim.followups(&slash.token).len(), 1);
    command
        .edit_response(&http, EditInteractionResponse::new().content("done"))
        .await
        .expect("edit the deferred response");
    let done = sim.original(&slash.token).expect("the original");
    assert_eq!(done["flags"], 0);
    assert_eq!(done["content"], "done");

    // After 15 minutes the token is dead.
    sim.expire_token(&slash.token);
    let expired = command
        .edit_response(&http, EditInteractionResponse::new().content("late"))
        .await
        .expect_err("an expired token");
    assert_eq!(discord_code(&expired), Some(50027));

    // Channel posts: a reply with a file, then a channel the bot may not see.
    let channel = ChannelId::new(CHANNEL);
    let reply = channel
        .send_message(
            &http,
            CreateMessage::new()
                .content("your duck")
                .reference_message((
                    channel,
                    MessageId::new(done["id"].as_str().unwrap().parse().unwrap()),
                ))
                .add_file(CreateAttachment::bytes(PNG.to_vec(), "duck.png")),
        )
        .await
        .expect("post to the channel");
    assert_eq!(reply.attachments.len(), 1);
    assert_eq!(
        reply
            .message_reference
            .as_ref()
            .and_then(|reference| reference.message_id),
        Some(MessageId::new(
            done["id"].as_str().unwrap().parse().unwrap()
        ))
    );
    assert!(reply.referenced_message.is_some());
    assert_eq!(
        sim.channel_messages(CHANNEL).len(),
        3,
        "original, follow-up, reply"
    );
    sim.forbid_channel(CHANNEL);
    let forbidden = channel
        .send_message(&http, CreateMessage::new().content("hello"))
        .await
        .expect_err("no access");
    assert_eq!(discord_code(&forbidden), Some(50001));

    // Discord's limits: 2,000 characters of content.
    let long = ChannelId::new(DM_CHANNEL)
        .send_message(&http, CreateMessage::new().content("q".repeat(2001)))
        .await;
    // serenity checks the length itself before sending.
    assert!(long.is_err());
    let client = reqwest::Client::new();
    let too_long = client
        .post(format!(
            "{}/api/v10/channels/{DM_CHANNEL}/messages",
            sim.api_base()
        ))
        .header("Authorization", format!("Bot {}", sim.bot_token()))
        .json(&json!({"content": "q".repeat(2001)}))
        .send()
        .await
        .expect("POST");
    assert_eq!(too_long.status(), 400);
    let error: Value = too_long.json().await.expect("an error body");
    assert_eq!(
        error["errors"]["content"]["_errors"][0]["code"],
        "BASE_TYPE_MAX_LENGTH"
    );
    let unauthorized = client
        .post(format!(
            "{}/api/v10/channels/{DM_CHANNEL}/messages",
            sim.api_base()
        ))
        .json(&json!({"content": "hi"}))
        .send()
        .await
        .expect("POST");
    assert_eq!(unauthorized.status(), 401);
}

#[tokio::test]
async fn autocomplete_results_are_kept_and_limited() {
    let sim = DiscordSim::start().await;
    let http = sim.http();
    let typing = discord::autocomplete(
        "imagine",
        &[("prompt", json!("a duck")), ("model", json!("s"))],
        "model",
        &member(),
    );
    sim.register_interaction(&typing.json);
    let Interaction::Autocomplete(typing_interaction) = parse_interaction(&typing) else {
        panic!("an autocomplete");
    };
    typing_interaction
        .create_response(
            &http,
            CreateInteractionResponse::Autocomplete(
                serenity::all::CreateAutocompleteResponse::new()
                    .add_string_choice("sd-turbo", "sd-turbo")
                    .add_string_choice("sdxl", "sdxl"),
            ),
        )
        .await
        .expect("answer the autocomplete");
    let choices = sim.autocomplete_choices(&typing.token).expect("choices");
    assert_eq!(choices.len(), 2);
    assert_eq!(choices[0]["value"], "sd-turbo");
    assert!(
        sim.original(&typing.token).is_none(),
        "autocomplete makes no message"
    );

    let more = discord::autocomplete("imagine", &[("model", json!("s"))], "model", &member());
    sim.register_interaction(&more.json);
    let choices: Vec<Value> = (0..26)
        .map(|n| json!({"name": format!("m{n}"), "value": format!("m{n}")}))
        .collect();
    let answer = reqwest::Client::new()
        .post(format!(
            "{}/api/v10/interactions/{}/{}/callback",
            sim.api_base(),
            more.id,
            more.token
        ))
        .json(&json!({"type": 8, "data": {"choices": choices}}))
        .send()
        .await
        .expect("callback");
    assert_eq!(answer.status(), 400);
    let error: Value = answer.json().await.expect("an error body");
    assert_eq!(error["code"], 50035);
    assert_eq!(
        error["errors"]["data"]["choices"]["_errors"][0]["code"],
        "BASE_TYPE_MAX_LENGTH"
    );
    // A message answer does not fit an autocomplete.
    let wrong = reqwest::Client::new()
        .post(format!(
            "{}/api/v10/interactions/{}/{}/callback",
            sim.api_base(),
            more.id,
            more.token
        ))
        .json(&json!({"type": 4, "data": {"content": "hi"}}))
        .send()
        .await
        .expect("callback");
    assert_eq!(wrong.status(), 400);
}

#[tokio::test]
#[should_panic(expected = "Discord simulator: waited")]
async fn waits_end_with_an_explanation() {
    let sim = DiscordSim::start().await;
    sim.wait_gateway_ready(Duration::from_millis(50)).await;
}
