//! IRC lines as Twitch reads and writes them: IRCv3 tags (`@k=v;k2=v2`), an optional prefix, the
//! command and its parameters (the last one after ` :`). Written here rather than borrowed from
//! twitch-irc so that the simulator does not share the client's parser, and with it its mistakes.

use std::collections::BTreeMap;

/// One parsed line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Line {
    /// Unescaped values; a tag without `=` has an empty value.
    pub tags: BTreeMap<String, String>,
    pub command: String,
    pub params: Vec<String>,
}

impl Line {
    /// `None` for an empty line or one with nothing after its tags or prefix.
    pub(crate) fn parse(raw: &str) -> Option<Line> {
        let mut rest = raw.trim_end_matches(['\r', '\n']);
        let mut tags = BTreeMap::new();
        if let Some(after) = rest.strip_prefix('@') {
            let (raw_tags, after) = after.split_once(' ')?;
            for pair in raw_tags.split(';').filter(|pair| !pair.is_empty()) {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                tags.insert(key.to_owned(), unescape(value));
            }
            rest = after.trim_start_matches(' ');
        }
        if let Some(after) = rest.strip_prefix(':') {
            // A prefix from a client is ignored, as servers do.
            let (_prefix, after) = after.split_once(' ')?;
            rest = after.trim_start_matches(' ');
        }
        let (command, mut rest) = rest.split_once(' ').unwrap_or((rest, ""));
        if command.is_empty() {
            return None;
        }
        let mut params = Vec::new();
        loop {
            rest = rest.trim_start_matches(' ');
            if rest.is_empty() {
                break;
            }
            if let Some(trailing) = rest.strip_prefix(':') {
                params.push(trailing.to_owned());
                break;
            }
            match rest.split_once(' ') {
                Some((param, after)) => {
                    params.push(param.to_owned());
                    rest = after;
                }
                None => {
                    params.push(rest.to_owned());
                    break;
                }
            }
        }
        Some(Line {
            tags,
            command: command.to_ascii_uppercase(),
            params,
        })
    }

    pub(crate) fn param(&self, index: usize) -> &str {
        self.params.get(index).map_or("", String::as_str)
    }
}

/// `@k=v;k2=v2 ` (with the trailing space) for `rest`, values escaped; `rest` alone without tags.
pub(crate) fn tagged(tags: &[(&str, String)], rest: &str) -> String {
    if tags.is_empty() {
        return rest.to_owned();
    }
    let tags = tags
        .iter()
        .map(|(key, value)| format!("{key}={}", escape(value)))
        .collect::<Vec<_>>()
        .join(";");
    format!("@{tags} {rest}")
}

/// The line without its tags, for a connection that did not ask for `twitch.tv/tags`.
pub(crate) fn strip_tags(line: &str) -> &str {
    match line.strip_prefix('@') {
        Some(after) => after.split_once(' ').map_or("", |(_, rest)| rest),
        None => line,
    }
}

/// IRCv3 tag value escaping.
pub(crate) fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            ';' => out.push_str("\\:"),
            ' ' => out.push_str("\\s"),
            '\\' => out.push_str("\\\\"),
            '\r' => out.push_str("\\r"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

pub(crate) fn unescape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some(':') => out.push(';'),
            Some('s') => out.push(' '),
            Some('r') => out.push('\r'),
            Some('n') => out.push('\n'),
            Some(other) => out.push(other),
            None => {}
        }
    }
    out
}

/// A random UUID (version 4), the form of Twitch's message ids.
pub(crate) fn uuid() -> String {
    format!(
        "{:08x}-{:04x}-4{:03x}-{:x}{:03x}-{:012x}",
        fastrand::u32(..),
        fastrand::u16(..),
        fastrand::u16(..0x1000),
        fastrand::u8(8..12),
        fastrand::u16(..0x1000),
        fastrand::u64(..1 << 48),
    )
}

/// A stable 9-digit numeric id for a name (FNV-1a), like Twitch's user and room ids.
pub(crate) fn numeric_id(name: &str) -> String {
    let hash = name.bytes().fold(0x811c_9dc5_u32, |hash, byte| {
        (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193)
    });
    (100_000_000 + u64::from(hash) % 900_000_000).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_escapes() {
        let line =
            Line::parse("@reply-parent-msg-id=abc;x=a\\sb\\:c PRIVMSG #chan :. hi there\r\n")
                .unwrap();
        assert_eq!(line.command, "PRIVMSG");
        assert_eq!(line.params, ["#chan", ". hi there"]);
        assert_eq!(line.tags["reply-parent-msg-id"], "abc");
        assert_eq!(line.tags["x"], "a b;c");
        assert_eq!(unescape(&escape("a b;c\\d\r\n")), "a b;c\\d\r\n");
        let line = Line::parse("CAP REQ :twitch.tv/tags twitch.tv/commands").unwrap();
        assert_eq!(line.params, ["REQ", "twitch.tv/tags twitch.tv/commands"]);
        assert_eq!(strip_tags("@a=b :x PING"), ":x PING");
        assert_eq!(uuid().len(), 36);
        assert_eq!(numeric_id("ducks").len(), 9);
    }
}
