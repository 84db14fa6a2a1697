//! Vision towers: pixels → patch features. [`siglip`]: SigLIP (LLaVA-OneVision, and
//! SmolVLM's tower through its own embeddings).

pub mod siglip;
