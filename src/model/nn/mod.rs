//! Layers and state every family shares: weights read from safetensors by scoped name
//! ([`weights`]), rotary embeddings at explicit positions ([`rope`]), and the key/value
//! segments and attention contexts the streaming engine assembles ([`context`]).

pub mod context;
pub mod rope;
pub mod weights;
