//! Permanent image links: `<base>/i/<slug>`, where the slug carries the image's object key and a
//! signature over it. A link works as long as the object exists: after the job's status has
//! expired, and whatever id a client chose for the job. It cannot be guessed or altered, because
//! only holders of `links.signing_key` (the worker, which makes links, and the API, which serves
//! them) can sign a key.
//!
//! Two slug formats, both base64url without padding, both signed with the first 12 bytes (96 bits:
//! short, and forgery out of reach) of HMAC-SHA256(signing key, key):
//! - **compact**, for keys the runner writes by default
//!   (`images/<yyyy>/<mm>/<dd>/<uuid job id>/<run ms>-<n>.png`): `base64url(uuid (16 bytes) ‖ run
//!   ms (6) ‖ n (1) ‖ signature (12))`, 47 characters, so a link with a normal host name stays
//!   under 100 characters and fits a Twitch message; the date comes back from the run's time;
//! - **general**, for any other key (another prefix, a job id a Redis client chose):
//!   `base64url(key) "." base64url(signature)`.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::Secret;

/// How image links are made (`[links]`, `DUCKS_LINKS__*`): the worker makes them, the API serves
/// the permanent ones, and both read these settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LinkConfig {
    /// The secret that signs permanent links; the worker and the API must share it. Changing it
    /// breaks every link made before.
    pub signing_key: Secret,
    /// The API's public address (`https://ducks.example.com`): when set, with a signing key,
    /// images get permanent links `<base_url>/i/<slug>`.
    pub base_url: String,
    /// Otherwise, a CDN in front of the bucket or a public bucket: links are this URL + `/` + the
    /// object key, and last as long as the object.
    pub cdn_base_url: String,
    /// Otherwise, presigned S3 links that expire after this long (at most 7 days, 604800).
    pub presign_ttl_secs: u64,
}

impl Default for LinkConfig {
    fn default() -> Self {
        Self {
            signing_key: Secret::default(),
            base_url: String::new(),
            cdn_base_url: String::new(),
            presign_ttl_secs: 24 * 3600,
        }
    }
}

/// Signature bytes kept in a slug.
const SIGNATURE_BYTES: usize = 12;
/// Object keys are at most 1,024 bytes in S3; a slug longer than a key that long is not one.
const MAX_SLUG_CHARS: usize = 1_400;

/// Why a slug does not name an image; each is a 404 to whoever asked, and says why in the log.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("the link is not in the DUCKS format")]
    Malformed,
    #[error("the link's signature does not match (altered, or signed with another key)")]
    BadSignature,
}

/// Bytes of a compact slug before its signature.
const PACKED_BYTES: usize = 23;

/// The slug of `key`: compact where the key has the runner's default shape, general otherwise.
///
/// # Panics
/// Never: HMAC takes keys of any length.
pub fn slug(key: &str, signing_key: &Secret) -> String {
    let signature = sign(key, signing_key).finalize().into_bytes();
    if let Some(packed) = pack(key) {
        let mut bytes = packed.to_vec();
        bytes.extend_from_slice(&signature[..SIGNATURE_BYTES]);
        return URL_SAFE_NO_PAD.encode(bytes);
    }
    format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(key),
        URL_SAFE_NO_PAD.encode(&signature[..SIGNATURE_BYTES])
    )
}

/// `<base_url>/i/<slug>`.
pub fn permanent_link(base_url: &str, key: &str, signing_key: &Secret) -> String {
    format!(
        "{}/i/{}",
        base_url.trim_end_matches('/'),
        slug(key, signing_key)
    )
}

/// The object key a slug names, once its signature is checked (in constant time).
pub fn key_of(slug: &str, signing_key: &Secret) -> Result<String, LinkError> {
    if slug.len() > MAX_SLUG_CHARS {
        return Err(LinkError::Malformed);
    }
    let Some((key, signature)) = slug.split_once('.') else {
        let bytes = URL_SAFE_NO_PAD
            .decode(slug)
            .map_err(|_| LinkError::Malformed)?;
        if bytes.len() != PACKED_BYTES + SIGNATURE_BYTES {
            return Err(LinkError::Malformed);
        }
        let (packed, signature) = bytes.split_at(PACKED_BYTES);
        let key = unpack(packed.try_into().map_err(|_| LinkError::Malformed)?);
        sign(&key, signing_key)
            .verify_truncated_left(signature)
            .map_err(|_| LinkError::BadSignature)?;
        return Ok(key);
    };
    let key = URL_SAFE_NO_PAD
        .decode(key)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .filter(|key| !key.is_empty())
        .ok_or(LinkError::Malformed)?;
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| LinkError::Malformed)?;
    if signature.len() != SIGNATURE_BYTES {
        return Err(LinkError::Malformed);
    }
    sign(&key, signing_key)
        .verify_truncated_left(&signature)
        .map_err(|_| LinkError::BadSignature)?;
    Ok(key)
}

/// `images/<yyyy>/<mm>/<dd>/<uuid>/<ms>-<n>.png` as 23 bytes, when it has exactly that shape (the
/// bytes unpack to the very same key, date included).
fn pack(key: &str) -> Option<[u8; PACKED_BYTES]> {
    let parts: Vec<&str> = key.strip_prefix("images/")?.split('/').collect();
    let [_, _, _, job, file] = parts.as_slice() else {
        return None;
    };
    let job = uuid::Uuid::try_parse(job).ok()?;
    let (ms, n) = file.strip_suffix(".png")?.split_once('-')?;
    let (ms, n): (u64, u8) = (ms.parse().ok()?, n.parse().ok()?);
    if ms >= 1 << 48 {
        return None;
    }
    let mut packed = [0u8; PACKED_BYTES];
    packed[..16].copy_from_slice(job.as_bytes());
    packed[16..22].copy_from_slice(&ms.to_be_bytes()[2..]);
    packed[22] = n;
    (unpack(&packed) == key).then_some(packed)
}

fn unpack(packed: &[u8; PACKED_BYTES]) -> String {
    let job = uuid::Uuid::from_bytes(packed[..16].try_into().expect("16 bytes"));
    let mut ms_bytes = [0u8; 8];
    ms_bytes[2..].copy_from_slice(&packed[16..22]);
    let ms = u64::from_be_bytes(ms_bytes);
    let (year, month, day) = crate::time::civil_from_days((ms / 86_400_000) as i64);
    format!(
        "images/{year:04}/{month:02}/{day:02}/{}/{ms}-{}.png",
        job.hyphenated(),
        packed[22]
    )
}

fn sign(key: &str, signing_key: &Secret) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(signing_key.expose().as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(key.as_bytes());
    mac
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "images/2026/12/01/019ad5f2-3c4e-7abc-8def-0123456789ab/1796158800000-0.png";

    fn secret() -> Secret {
        Secret::new("a signing key shared by worker and API")
    }

    #[test]
    fn keys_the_runner_writes_get_compact_slugs_that_fit_chat() {
        let slug = slug(KEY, &secret());
        assert_eq!(slug.len(), 47, "{slug}");
        assert!(!slug.contains('.'));
        assert_eq!(key_of(&slug, &secret()), Ok(KEY.to_owned()));
        let link = permanent_link("https://ducks.example.com", KEY, &secret());
        assert!(link.len() < 100, "{link}");
        // Keys of any other shape keep the general form, and both forms check their signature.
        for other in [
            "images/2026/12/01/my-first-duck/1764622800000-0.png",
            "art/2026/12/01/019ad5f2-3c4e-7abc-8def-0123456789ab/1764622800000-0.png",
            "images/2026/12/02/019ad5f2-3c4e-7abc-8def-0123456789ab/1764622800000-0.png",
            "images/2026/12/01/019AD5F2-3C4E-7ABC-8DEF-0123456789AB/1764622800000-0.png",
        ] {
            let general = super::slug(other, &secret());
            assert!(general.contains('.'), "{other}: {general}");
            assert_eq!(key_of(&general, &secret()), Ok(other.to_owned()));
        }
        let mut forged = URL_SAFE_NO_PAD.decode(&slug).unwrap();
        forged[22] ^= 1;
        assert_eq!(
            key_of(&URL_SAFE_NO_PAD.encode(forged), &secret()),
            Err(LinkError::BadSignature)
        );
    }

    #[test]
    fn a_slug_round_trips_and_is_url_safe() {
        let key = "images/a b/c.png";
        let slug = slug(key, &secret());
        assert!(
            slug.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)),
            "{slug}"
        );
        assert_eq!(key_of(&slug, &secret()), Ok(key.to_owned()));
        assert_eq!(
            permanent_link("https://ducks.example.com/", key, &secret()),
            format!("https://ducks.example.com/i/{slug}")
        );
    }

    #[test]
    fn the_same_key_always_gives_the_same_slug() {
        assert_eq!(slug(KEY, &secret()), slug(KEY, &secret()));
        assert_ne!(slug(KEY, &secret()), slug(KEY, &Secret::new("another key")));
    }

    #[test]
    fn altered_or_foreign_slugs_are_refused() {
        const KEY: &str = "images/not-a-uuid/0.png";
        let good = slug(KEY, &secret());
        let (encoded_key, signature) = good.split_once('.').unwrap();
        let other_key = URL_SAFE_NO_PAD.encode("images/someone-else.png");
        let table = [
            (format!("{other_key}.{signature}"), LinkError::BadSignature),
            (
                slug(KEY, &Secret::new("another key")),
                LinkError::BadSignature,
            ),
            (
                format!("{encoded_key}.{}", &signature[1..]),
                LinkError::Malformed,
            ),
            (encoded_key.to_owned(), LinkError::Malformed),
            (format!(".{signature}"), LinkError::Malformed),
            ("%%%.AAAA".to_owned(), LinkError::Malformed),
            ("a".repeat(MAX_SLUG_CHARS + 1), LinkError::Malformed),
        ];
        for (slug, expect) in table {
            assert_eq!(key_of(&slug, &secret()), Err(expect), "{slug}");
        }
    }
}
