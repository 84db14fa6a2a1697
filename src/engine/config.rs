//! Settings of the engine and of one question.

use std::path::PathBuf;
use std::time::Duration;

use crate::error::{EngineError, EngineResult};
use crate::kv::StoreConfig;
use crate::retrieval::{LayerSelection, TimeRange};

/// How the engine encodes and answers.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Root of the streams' KV stores: stream `s` keeps its disk tier in
    /// `state_dir/kv/s`.
    pub state_dir: PathBuf,
    /// The recent window W, in frames: each new frame attends to the sinks and the
    /// last W frames (≥ 1). Cost per frame is bounded by it, however long the stream.
    pub window_frames: usize,
    /// At most this many frames per encode batch, over all streams (≥ 1). A question
    /// waits for at most one batch.
    pub batch_frames: usize,
    /// Blocks each layer retrieves when a question does not say (1..=`max_top_k`).
    pub top_k: usize,
    /// The most blocks a question may ask for (per layer when retrieving, in all when
    /// spread uniformly), so that no request loads a whole store (≥ 1).
    pub max_top_k: usize,
    /// Whose scores pick the blocks when a question does not say; a shared layer must
    /// be one of the model's (checked at start).
    pub layer_selection: LayerSelection,
    /// Frames of the recent window a retrieve or recent question attends to when it
    /// does not say (≤ `window_frames`); `None`: the whole window.
    pub recent_frames: Option<usize>,
    /// Answer length when a question does not say.
    pub max_new_tokens: usize,
    /// Upper bound a question may ask for.
    pub max_new_tokens_limit: usize,
    /// Each stream's KV store (a stream may bring its own).
    pub store: StoreConfig,
    /// How often retention runs over the disk tiers.
    pub retention_interval: Duration,
    /// Most answers fed back in one decode step (≥ 1): their linear layers run as one
    /// batch, which on a CPU (bound by reading the weights) costs little more than one.
    pub decode_batch: usize,
    /// The engine thread's time given to answering while frames wait to be encoded, in
    /// (0, 1): answers get this share and encoding the rest (see
    /// [`super::schedule::SharePolicy`]). With no frames waiting, answers take it all.
    /// 0.4 by default: cameras first, with room for the serving work around the engine
    /// (measured: encoding keeps > 0.5 of its idle rate under continuous asking).
    pub answer_share: f64,
}

impl EngineConfig {
    /// Defaults for CPU edge boxes: a window of 8 frames, batches of 4, top-16.
    pub fn new(state_dir: impl Into<PathBuf>, store: StoreConfig) -> Self {
        Self {
            state_dir: state_dir.into(),
            window_frames: 8,
            batch_frames: 4,
            top_k: 16,
            max_top_k: 64,
            layer_selection: LayerSelection::PerLayer,
            recent_frames: None,
            max_new_tokens: 64,
            max_new_tokens_limit: 1024,
            store,
            retention_interval: Duration::from_secs(10),
            answer_share: 0.4,
            decode_batch: 8,
        }
    }

    pub fn validate(&self) -> EngineResult<()> {
        let bad = |m: &str| Err(EngineError::InvalidRequest(format!("engine config: {m}")));
        if self.window_frames == 0 {
            return bad("window_frames must be at least 1");
        }
        if self.batch_frames == 0 {
            return bad("batch_frames must be at least 1");
        }
        if self.top_k == 0 || self.top_k > self.max_top_k {
            return bad("top_k must be in 1..=max_top_k");
        }
        if self.decode_batch == 0 {
            return bad("decode_batch must be at least 1");
        }
        if self.recent_frames.is_some_and(|r| r > self.window_frames) {
            return bad("recent_frames must be at most window_frames");
        }
        if !(self.answer_share > 0.0 && self.answer_share < 1.0) {
            return bad("answer_share must be in (0, 1)");
        }
        if self.max_new_tokens == 0 || self.max_new_tokens > self.max_new_tokens_limit {
            return bad("max_new_tokens must be in 1..=max_new_tokens_limit");
        }
        Ok(())
    }
}

/// What a question gets for what it leaves unset (from [`EngineConfig`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AskDefaults {
    /// Blocks per layer (Retrieve) or in all (Uniform).
    pub top_k: usize,
    /// Retrieve: whose scores pick the blocks.
    pub layer_selection: LayerSelection,
    /// Retrieve and Recent: frames of the recent window; `None`: all of it.
    pub recent_frames: Option<usize>,
}

impl EngineConfig {
    pub fn ask_defaults(&self) -> AskDefaults {
        AskDefaults {
            top_k: self.top_k,
            layer_selection: self.layer_selection,
            recent_frames: self.recent_frames,
        }
    }
}

/// Which past a question attends to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AskMode {
    /// ReKV: each layer's top-k stored blocks by relevance, plus the recent window.
    #[default]
    Retrieve,
    /// The recent window only (standing questions, alerts).
    Recent,
    /// k blocks spread evenly over the time range (summaries).
    Uniform,
}

impl AskMode {
    pub fn label(self) -> &'static str {
        match self {
            AskMode::Retrieve => "retrieve",
            AskMode::Recent => "recent",
            AskMode::Uniform => "uniform",
        }
    }
}

/// Decoding: greedy when `temperature` is 0, else temperature and nucleus sampling.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// ≥ 0; 0 means greedy.
    pub temperature: f32,
    /// In (0, 1].
    pub top_p: f32,
    /// Seed of the sampler (answers are reproducible for a seed).
    pub seed: u64,
}

impl Default for Sampling {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
        }
    }
}

/// One question about one stream.
#[derive(Debug, Clone, Default)]
pub struct AskRequest {
    pub stream: String,
    pub question: String,
    pub mode: AskMode,
    /// Only blocks seen in this range (the recent window too).
    pub range: TimeRange,
    /// Blocks per layer (Retrieve) or in all (Uniform); the engine's `top_k` if unset.
    pub top_k: Option<usize>,
    /// Retrieve: whose scores pick the blocks; the engine's `layer_selection` if unset.
    pub layer_selection: Option<LayerSelection>,
    /// Frames of the recent window to attend to; the whole window if unset
    /// (Retrieve, Recent), none if unset (Uniform).
    pub recent_frames: Option<usize>,
    /// The engine's default if unset.
    pub max_new_tokens: Option<usize>,
    pub sampling: Sampling,
    /// Generation stops once the answer ends with any of these.
    pub stop: Vec<String>,
}

/// Longest question accepted, in bytes.
pub const MAX_QUESTION_BYTES: usize = 4096;
/// Most stop strings a question may give.
pub const MAX_STOP_STRINGS: usize = 16;
/// Longest stop string, in bytes.
pub const MAX_STOP_BYTES: usize = 256;
/// Highest sampling temperature accepted.
pub const MAX_TEMPERATURE: f32 = 100.0;

impl AskRequest {
    /// Checks what can be checked without the stream.
    pub fn validate(&self, config: &EngineConfig) -> EngineResult<()> {
        let bad = |m: String| Err(EngineError::InvalidRequest(m));
        if self.question.trim().is_empty() {
            return bad("the question is empty".into());
        }
        if self.question.len() > MAX_QUESTION_BYTES {
            return bad(format!(
                "the question is {} bytes, at most {MAX_QUESTION_BYTES}",
                self.question.len()
            ));
        }
        if let Some(k) = self.top_k {
            if k == 0 || k > config.max_top_k {
                return bad(format!("top_k must be in 1..={}", config.max_top_k));
            }
        }
        if let Some(n) = self.max_new_tokens {
            if n == 0 || n > config.max_new_tokens_limit {
                return bad(format!(
                    "max_new_tokens must be in 1..={}",
                    config.max_new_tokens_limit
                ));
            }
        }
        let s = &self.sampling;
        if !(s.temperature.is_finite() && (0.0..=MAX_TEMPERATURE).contains(&s.temperature)) {
            return bad(format!("temperature must be in [0, {MAX_TEMPERATURE}]"));
        }
        if !(s.top_p > 0.0 && s.top_p <= 1.0) {
            return bad("top_p must be in (0, 1]".into());
        }
        if self.range.is_inverted(std::time::SystemTime::now()) {
            return bad("the time range ends before it starts".into());
        }
        if self.stop.len() > MAX_STOP_STRINGS {
            return bad(format!("at most {MAX_STOP_STRINGS} stop strings"));
        }
        if self
            .stop
            .iter()
            .any(|s| s.is_empty() || s.len() > MAX_STOP_BYTES)
        {
            return bad(format!("stop strings must be 1..={MAX_STOP_BYTES} bytes"));
        }
        Ok(())
    }
}
