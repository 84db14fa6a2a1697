//! Text side of a checkpoint: the `tokenizers` tokenizer from `tokenizer.json` and the
//! Jinja chat template (`chat_template.jinja`, `chat_template.json` or
//! `tokenizer_config.json`), rendered with `minijinja` as `transformers`'
//! `apply_chat_template` renders it, and the expansion of the video placeholder into
//! one token per video feature, as `LlavaOnevisionProcessor` does.

use std::path::Path;

use minijinja::{context, Environment};
use serde_json::Value;
use tokenizers::Tokenizer;

use crate::error::{ModelError, ModelResult};

const TEMPLATE_NAME: &str = "chat";

/// Roles `tokenizer_config.json` may name tokens for (Idefics3/SmolVLM tokenizers).
const NAMED_TOKENS: [&str; 5] = [
    "image_token",
    "fake_image_token",
    "global_image_token",
    "end_of_utterance_token",
    "video_token",
];

/// Tokenizer, chat template and special tokens of one checkpoint.
pub struct TextProcessor {
    tokenizer: Tokenizer,
    /// Compiled chat template, `generation` markers already stripped; `None` for a
    /// family that templates videos itself and whose checkpoint ships none.
    env: Option<Environment<'static>>,
    bos_token: String,
    eos_token: String,
    /// Tokens `tokenizer_config.json` names by role (see [`NAMED_TOKENS`]).
    named_tokens: Vec<(&'static str, String)>,
    /// Id of the video placeholder token (`video_token_index`).
    video_token_id: i64,
}

impl TextProcessor {
    /// The tokenizer and the checkpoint's chat template, which must exist.
    pub fn load(dir: &Path, video_token_id: i64) -> ModelResult<Self> {
        let text = Self::load_optional_template(dir, video_token_id)?;
        if text.env.is_none() {
            return Err(ModelError::MissingFile {
                dir: dir.to_owned(),
                what: "chat template (chat_template.jinja, chat_template.json or tokenizer_config.json)",
            });
        }
        Ok(text)
    }

    /// The tokenizer, and the chat template if the checkpoint has one.
    pub fn load_optional_template(dir: &Path, video_token_id: i64) -> ModelResult<Self> {
        let path = dir.join("tokenizer.json");
        if !path.exists() {
            return Err(ModelError::MissingFile {
                dir: dir.to_owned(),
                what: "tokenizer.json",
            });
        }
        let tokenizer = Tokenizer::from_file(&path)
            .map_err(|e| ModelError::Tokenizer(format!("{}: {e}", path.display())))?;
        let tokenizer_config: Value = {
            let p = dir.join("tokenizer_config.json");
            if p.exists() {
                crate::model::config::read_json(&p)?
            } else {
                Value::Null
            }
        };
        let special = |key: &str| -> String {
            match tokenizer_config.get(key) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Object(o)) => o
                    .get("content")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                _ => String::new(),
            }
        };
        let env = match find_chat_template(dir, &tokenizer_config)? {
            None => None,
            Some(source) => {
                let mut env = Environment::new();
                env.set_unknown_method_callback(
                    minijinja_contrib::pycompat::unknown_method_callback,
                );
                env.add_function(
                    "raise_exception",
                    |msg: String| -> Result<String, minijinja::Error> {
                        Err(minijinja::Error::new(
                            minijinja::ErrorKind::InvalidOperation,
                            msg,
                        ))
                    },
                );
                env.add_template_owned(TEMPLATE_NAME, strip_generation_markers(&source))
                    .map_err(|e| ModelError::Template(e.to_string()))?;
                Some(env)
            }
        };
        let config_token = |key: &str| {
            tokenizer_config
                .get(key)
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        Ok(Self {
            named_tokens: NAMED_TOKENS
                .iter()
                .filter_map(|k| Some((*k, config_token(k)?)))
                .collect(),
            tokenizer,
            env,
            bos_token: special("bos_token"),
            eos_token: special("eos_token"),
            video_token_id,
        })
    }

    /// Renders the chat template over `messages` (the `transformers` message format:
    /// `{"role", "content": [{"type": "video"} | {"type": "text", "text"}]}`).
    pub fn render(&self, messages: &Value, add_generation_prompt: bool) -> ModelResult<String> {
        let env = self
            .env
            .as_ref()
            .ok_or_else(|| ModelError::Template("the checkpoint has no chat template".into()))?;
        let template = env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| ModelError::Template(e.to_string()))?;
        template
            .render(context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => self.bos_token,
                eos_token => self.eos_token,
            })
            .map_err(|e| ModelError::Template(e.to_string()))
    }

    /// The templated prompt of one user turn holding one video and then `text`, with
    /// the generation prompt, as `LlavaOnevisionProcessor.apply_chat_template` makes it.
    pub fn video_user_turn(&self, text: &str) -> ModelResult<String> {
        let messages = serde_json::json!([{
            "role": "user",
            "content": [{"type": "video"}, {"type": "text", "text": text}],
        }]);
        self.render(&messages, true)
    }

    /// The templated ids of one user turn holding a video then `question`, split around
    /// the video placeholder: (before, after). The streaming layout of a family whose
    /// chat template places the video: the part before is the sinks, the part after
    /// follows the frames.
    pub fn split_video_turn(&self, question: &str) -> ModelResult<(Vec<i64>, Vec<i64>)> {
        let ids = self.encode(&self.video_user_turn(question)?)?;
        let mut at = ids
            .iter()
            .enumerate()
            .filter(|(_, &i)| i == self.video_token_id)
            .map(|(p, _)| p);
        match (at.next(), at.next()) {
            (Some(p), None) => Ok((ids[..p].to_vec(), ids[p + 1..].to_vec())),
            _ => Err(ModelError::BadPrompt(
                "the question must not contain the video placeholder token".into(),
            )),
        }
    }

    /// Token ids of `text` (special tokens written in the text are recognised), with
    /// the tokenizer's own added tokens (a BOS) as a whole prompt gets them.
    pub fn encode(&self, text: &str) -> ModelResult<Vec<i64>> {
        self.encode_with(text, true)
    }

    /// Token ids of a piece of a prompt: no added tokens.
    pub fn encode_piece(&self, text: &str) -> ModelResult<Vec<i64>> {
        self.encode_with(text, false)
    }

    fn encode_with(&self, text: &str, add_special: bool) -> ModelResult<Vec<i64>> {
        let encoding = self
            .tokenizer
            .encode(text, add_special)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        Ok(encoding.get_ids().iter().map(|&id| i64::from(id)).collect())
    }

    /// A token `tokenizer_config.json` names under `key` (`image_token`,
    /// `fake_image_token`, …), else `default`.
    pub fn named_token<'a>(&'a self, key: &str, default: &'a str) -> &'a str {
        self.named_tokens
            .iter()
            .find(|(k, _)| *k == key)
            .map_or(default, |(_, v)| v.as_str())
    }

    /// Replaces each video placeholder with `video_tokens` copies of it, as the
    /// processor does with the string before tokenising.
    pub fn expand_video(&self, ids: &[i64], video_tokens: usize) -> ModelResult<Vec<i64>> {
        let placeholders = ids.iter().filter(|&&t| t == self.video_token_id).count();
        if placeholders != 1 {
            return Err(ModelError::InvalidInput(format!(
                "prompt holds {placeholders} video placeholders, expected exactly 1"
            )));
        }
        let mut out = Vec::with_capacity(ids.len() + video_tokens);
        for &id in ids {
            if id == self.video_token_id {
                out.extend(std::iter::repeat_n(id, video_tokens));
            } else {
                out.push(id);
            }
        }
        Ok(out)
    }

    pub fn decode(&self, ids: &[i64], skip_special: bool) -> ModelResult<String> {
        let ids: Vec<u32> = ids
            .iter()
            .map(|&i| u32::try_from(i))
            .collect::<Result<_, _>>()
            .map_err(|_| ModelError::InvalidInput("negative token id".into()))?;
        self.tokenizer
            .decode(&ids, skip_special)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))
    }

    pub fn video_token_id(&self) -> i64 {
        self.video_token_id
    }

    pub fn token_id(&self, token: &str) -> Option<i64> {
        self.tokenizer.token_to_id(token).map(i64::from)
    }
}

/// `chat_template.jinja` (transformers 5), `chat_template.json` (processors), or the
/// `chat_template` entry of `tokenizer_config.json` (a string, or a list of named
/// templates of which `default` is taken).
fn find_chat_template(dir: &Path, tokenizer_config: &Value) -> ModelResult<Option<String>> {
    let jinja = dir.join("chat_template.jinja");
    if jinja.exists() {
        return std::fs::read_to_string(&jinja)
            .map(Some)
            .map_err(|e| ModelError::io(&jinja, e));
    }
    let json = dir.join("chat_template.json");
    if json.exists() {
        let value: Value = crate::model::config::read_json(&json)?;
        if let Some(t) = value.get("chat_template").and_then(Value::as_str) {
            return Ok(Some(t.to_owned()));
        }
    }
    match tokenizer_config.get("chat_template") {
        Some(Value::String(t)) => return Ok(Some(t.clone())),
        Some(Value::Array(list)) => {
            let named = list
                .iter()
                .find(|t| t.get("name") == Some(&Value::from("default")));
            if let Some(t) = named
                .and_then(|t| t.get("template"))
                .and_then(Value::as_str)
            {
                return Ok(Some(t.to_owned()));
            }
        }
        _ => {}
    }
    Ok(None)
}

/// `{% generation %}` / `{% endgeneration %}` are a `transformers` extension marking
/// assistant text for training masks; they render nothing, so they are dropped.
fn strip_generation_markers(source: &str) -> String {
    let mut out = source.to_owned();
    for tag in ["generation", "endgeneration"] {
        for (open, close) in [("{%", "%}"), ("{%-", "-%}"), ("{%-", "%}"), ("{%", "-%}")] {
            out = out.replace(&format!("{open} {tag} {close}"), "");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::strip_generation_markers;

    #[test]
    fn generation_markers_are_removed() {
        let src = "a{% generation %}b{%- endgeneration -%}c";
        assert_eq!(strip_generation_markers(src), "abc");
    }
}
