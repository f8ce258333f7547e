//! The PNG that goes to S3, its key, and the generation parameters it carries.

use ducks_contract::time::civil_from_days;
use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

/// Everything needed to reproduce an image, as written into the PNG and the object metadata.
#[derive(Clone, Debug, PartialEq)]
pub struct Parameters {
    pub prompt: String,
    pub negative_prompt: String,
    pub steps: u32,
    pub sampler: String,
    pub guidance: f32,
    pub seed: u64,
    pub width: u32,
    pub height: u32,
    pub model: String,
}

impl Parameters {
    /// The `parameters` text in the format Stable Diffusion tools read (AUTOMATIC1111's):
    /// the prompt, a `Negative prompt:` line, then one line of `Key: value` pairs.
    pub fn text(&self) -> String {
        let mut text = self.prompt.clone();
        if !self.negative_prompt.is_empty() {
            text.push_str("\nNegative prompt: ");
            text.push_str(&self.negative_prompt);
        }
        text.push_str(&format!(
            "\nSteps: {}, Sampler: {}, CFG scale: {}, Seed: {}, Size: {}x{}, Model: {}",
            self.steps, self.sampler, self.guidance, self.seed, self.width, self.height, self.model
        ));
        text
    }

    /// S3 object metadata (`x-amz-meta-*`). Header values must be printable ASCII, so other
    /// characters of the prompts are percent-encoded.
    pub fn metadata(&self) -> HashMap<String, String> {
        HashMap::from([
            ("prompt".into(), percent_encode(&self.prompt)),
            (
                "negative-prompt".into(),
                percent_encode(&self.negative_prompt),
            ),
            ("steps".into(), self.steps.to_string()),
            ("sampler".into(), self.sampler.clone()),
            ("guidance".into(), self.guidance.to_string()),
            ("seed".into(), self.seed.to_string()),
            ("size".into(), format!("{}x{}", self.width, self.height)),
            ("model".into(), self.model.clone()),
        ])
    }
}

fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if (0x20..0x7f).contains(&byte) && byte != b'%' {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// An RGB8 PNG with the parameters in a `tEXt` chunk named `parameters`. The same pixels and
/// parameters always give the same bytes.
pub fn encode_png(
    width: u32,
    height: u32,
    rgb: &[u8],
    parameters: &Parameters,
) -> Result<Vec<u8>, png::EncodingError> {
    let mut bytes = Vec::new();
    let mut encoder = png::Encoder::new(&mut bytes, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    // tEXt is Latin-1; iTXt carries UTF-8. Tools read either under the same keyword.
    let text = parameters.text();
    if text.is_ascii() {
        encoder.add_text_chunk("parameters".into(), text)?;
    } else {
        encoder.add_itxt_chunk("parameters".into(), text)?;
    }
    let mut writer = encoder.write_header()?;
    writer.write_image_data(rgb)?;
    writer.finish()?;
    Ok(bytes)
}

/// `<prefix>/<yyyy>/<mm>/<dd>/<job-id>/<run-ms>-<n>.png`, dated in UTC. The run's start time
/// (Unix milliseconds) keeps every run's images apart: a later job that reuses an id (after its
/// status expired, say) never overwrites an earlier image, so a permanent link always shows the
/// image it was made for.
pub fn image_key(prefix: &str, run_started: SystemTime, job_id: &str, n: usize) -> String {
    let since_epoch = run_started.duration_since(UNIX_EPOCH).unwrap_or_default();
    let (year, month, day) = civil_from_days((since_epoch.as_secs() / 86_400) as i64);
    format!(
        "{}/{year:04}/{month:02}/{day:02}/{job_id}/{}-{n}.png",
        prefix.trim_end_matches('/'),
        since_epoch.as_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn parameters() -> Parameters {
        Parameters {
            prompt: "a duck".into(),
            negative_prompt: "blurry".into(),
            steps: 20,
            sampler: "DDIM".into(),
            guidance: 7.5,
            seed: 42,
            width: 8,
            height: 8,
            model: "tiny-sd".into(),
        }
    }

    #[test]
    fn parameters_read_like_stable_diffusion_tools_write_them() {
        assert_eq!(
            parameters().text(),
            "a duck\nNegative prompt: blurry\nSteps: 20, Sampler: DDIM, CFG scale: 7.5, Seed: 42, Size: 8x8, Model: tiny-sd"
        );
    }

    #[test]
    fn metadata_is_ascii() {
        let mut p = parameters();
        p.prompt = "une canne à 100% \n".into();
        assert_eq!(p.metadata()["prompt"], "une canne %C3%A0 100%25 %0A");
    }

    #[test]
    fn png_carries_the_parameters_and_is_deterministic() {
        let rgb = vec![7u8; 8 * 8 * 3];
        let a = encode_png(8, 8, &rgb, &parameters()).unwrap();
        assert_eq!(a, encode_png(8, 8, &rgb, &parameters()).unwrap());
        let decoder = png::Decoder::new(std::io::Cursor::new(&a));
        let reader = decoder.read_info().unwrap();
        let info = reader.info();
        assert_eq!((info.width, info.height), (8, 8));
        let text = &info.uncompressed_latin1_text[0];
        assert_eq!(
            (text.keyword.as_str(), text.text.as_str()),
            ("parameters", parameters().text().as_str())
        );
    }

    #[test]
    fn keys_are_dated_in_utc() {
        let table = [
            (0, "1970/01/01"),
            (951_782_400, "2000/02/29"),
            (1_795_931_042, "2026/11/29"),
        ];
        for (secs, date) in table {
            let now = UNIX_EPOCH + Duration::from_secs(secs);
            assert_eq!(
                image_key("images/", now, "job", 1),
                format!("images/{date}/job/{}-1.png", secs * 1000)
            );
        }
    }
}
