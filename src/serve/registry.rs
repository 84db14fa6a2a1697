//! The daemon's streams: those of the config file and those created over the API,
//! kept in step with the engine. API streams are persisted in the state directory
//! (`streams.json`) before the call returns, so they come back after a restart; config
//! streams follow the file, re-read on SIGHUP ([`Registry::reload`]).
//!
//! One owner (a tokio mutex in the service) serialises changes; the set of known ids is
//! mirrored in [`KnownStreams`] so request validation never waits on a change in flight.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, RwLock};

use tonic::Status;

use super::convert;
use crate::config::streams::{load_api_streams, save_api_streams};
use crate::config::{Config, StreamEntry};
use crate::engine::{Engine, StreamInfo};
use crate::error::ConfigError;
use crate::metrics as names;

/// Where a stream was declared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Config,
    Api,
}

impl Origin {
    pub fn label(self) -> &'static str {
        match self {
            Origin::Config => "config",
            Origin::Api => "api",
        }
    }
}

/// Stream ids the engine has, readable without the registry's lock.
#[derive(Debug, Default, Clone)]
pub struct KnownStreams(Arc<RwLock<HashSet<String>>>);

impl KnownStreams {
    pub fn contains(&self, id: &str) -> bool {
        self.0.read().is_ok_and(|s| s.contains(id))
    }

    fn set(&self, id: &str, present: bool) {
        if let Ok(mut s) = self.0.write() {
            if present {
                s.insert(id.to_owned());
            } else {
                s.remove(id);
            }
        }
    }
}

pub struct Registry {
    /// Defaults of new streams (the config as last loaded).
    config: Config,
    /// The model's frame size (height, width): that of streams that name none.
    model_size: (u32, u32),
    /// Invariant: every entry here is running in the engine.
    streams: BTreeMap<String, (StreamEntry, Origin)>,
    known: KnownStreams,
}

/// What a reload changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReloadReport {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub restarted: Vec<String>,
    pub failed: Vec<String>,
}

impl Registry {
    pub fn new(config: Config, model_size: (u32, u32), known: KnownStreams) -> Self {
        Self {
            config,
            model_size,
            streams: BTreeMap::new(),
            known,
        }
    }

    pub fn get(&self, id: &str) -> Option<&(StreamEntry, Origin)> {
        self.streams.get(id)
    }

    pub fn ids(&self) -> Vec<String> {
        self.streams.keys().cloned().collect()
    }

    fn publish_gauges(&self) {
        for origin in [Origin::Config, Origin::Api] {
            let n = self.streams.values().filter(|(_, o)| *o == origin).count();
            metrics::gauge!(names::SERVE_STREAMS, "origin" => origin.label()).set(n as f64);
        }
    }

    async fn start(
        &mut self,
        engine: &Engine,
        entry: StreamEntry,
        origin: Origin,
    ) -> Result<StreamInfo, Status> {
        let spec = entry
            .to_spec(&self.config, self.model_size)
            .map_err(|e| super::bounds::invalid(e.to_string()))?;
        let info = engine
            .add_stream(spec)
            .recv()
            .await
            .map_err(|e| convert::status(&e))?;
        tracing::info!(
            stream = %entry.id,
            origin = origin.label(),
            uri = %entry.redacted_uri(),
            blocks_recovered = info.blocks,
            "stream started"
        );
        self.known.set(&entry.id, true);
        self.streams.insert(entry.id.clone(), (entry, origin));
        self.publish_gauges();
        Ok(info)
    }

    async fn stop(&mut self, engine: &Engine, id: &str) -> Result<(), Status> {
        engine
            .remove_stream(id)
            .recv()
            .await
            .map_err(|e| convert::status(&e))?;
        self.streams.remove(id);
        self.known.set(id, false);
        self.publish_gauges();
        tracing::info!(stream = %id, "stream stopped");
        Ok(())
    }

    /// At start: the config's streams, then the persisted API ones. A stream that
    /// fails to start is logged and left out; the daemon goes on.
    pub async fn start_all(&mut self, engine: &Engine) -> Result<(), ConfigError> {
        let api = load_api_streams(&self.config.state_dir)?;
        let from_config = self.config.streams.clone();
        let total = from_config.len() + api.len();
        let entries = from_config
            .into_iter()
            .map(|e| (e, Origin::Config))
            .chain(api.into_iter().map(|e| (e, Origin::Api)));
        for (i, (entry, origin)) in entries.enumerate() {
            super::systemd::status(&format!(
                "recovering stream {} ({}/{total})",
                entry.id,
                i + 1
            ));
            if self.streams.contains_key(&entry.id) {
                tracing::warn!(stream = %entry.id, "declared twice (config and API); the config's wins");
                continue;
            }
            let id = entry.id.clone();
            if let Err(e) = self.start(engine, entry, origin).await {
                tracing::error!(stream = %id, error = %e.message(), "stream not started");
            }
        }
        Ok(())
    }

    /// CreateStream: starts and persists an API stream.
    pub async fn create(
        &mut self,
        engine: &Engine,
        entry: StreamEntry,
    ) -> Result<StreamInfo, Status> {
        if self.streams.contains_key(&entry.id) {
            return Err(Status::already_exists(format!(
                "stream `{}` already exists",
                entry.id
            )));
        }
        let id = entry.id.clone();
        let info = self.start(engine, entry, Origin::Api).await?;
        if let Err(e) = self.persist() {
            // Not persisted means not created: undo, so the caller can retry.
            let _ = self.stop(engine, &id).await;
            return Err(Status::internal(format!("persisting the stream list: {e}")));
        }
        Ok(info)
    }

    /// DeleteStream: API streams only; `purge` deletes its stored frames too.
    pub async fn delete(&mut self, engine: &Engine, id: &str, purge: bool) -> Result<(), Status> {
        match self.streams.get(id) {
            None => return Err(Status::not_found(format!("unknown stream `{id}`"))),
            Some((_, Origin::Config)) => {
                return Err(Status::failed_precondition(format!(
                    "stream `{id}` comes from the config file: remove it there and reload (SIGHUP)"
                )))
            }
            Some((_, Origin::Api)) => {}
        }
        self.stop(engine, id).await?;
        self.persist()
            .map_err(|e| Status::internal(format!("persisting the stream list: {e}")))?;
        if purge {
            let dir = self.config.state_dir.join("kv").join(id);
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    return Err(Status::internal(format!("purging {}: {e}", dir.display())));
                }
            }
        }
        Ok(())
    }

    fn persist(&self) -> Result<(), ConfigError> {
        let api: Vec<StreamEntry> = self
            .streams
            .values()
            .filter(|(_, o)| *o == Origin::Api)
            .map(|(e, _)| e.clone())
            .collect();
        save_api_streams(&self.config.state_dir, &api)
    }

    /// SIGHUP: the config file's streams become `new`'s: added, removed, restarted when
    /// their entry changed. API streams are untouched; a config stream whose id an API
    /// stream holds is refused (logged).
    pub async fn reload(&mut self, engine: &Engine, new: Config) -> ReloadReport {
        let mut report = ReloadReport::default();
        let wanted: BTreeMap<String, StreamEntry> = new
            .streams
            .iter()
            .map(|e| (e.id.clone(), e.clone()))
            .collect();
        self.config = new;
        let current: Vec<(String, StreamEntry)> = self
            .streams
            .iter()
            .filter(|(_, (_, o))| *o == Origin::Config)
            .map(|(id, (e, _))| (id.clone(), e.clone()))
            .collect();
        for (id, entry) in &current {
            let keep = wanted.get(id).is_some_and(|w| w == entry);
            if keep {
                continue;
            }
            match self.stop(engine, id).await {
                Ok(()) if wanted.contains_key(id) => report.restarted.push(id.clone()),
                Ok(()) => report.removed.push(id.clone()),
                Err(e) => {
                    tracing::error!(stream = %id, error = %e.message(), "stopping on reload");
                    report.failed.push(id.clone());
                }
            }
        }
        for (id, entry) in wanted {
            if self.streams.contains_key(&id) {
                if self
                    .streams
                    .get(&id)
                    .is_some_and(|(_, o)| *o == Origin::Api)
                {
                    tracing::warn!(stream = %id, "the config names a stream created over the API; left as it is");
                }
                continue;
            }
            let restarted = report.restarted.contains(&id);
            match self.start(engine, entry, Origin::Config).await {
                Ok(_) if restarted => {}
                Ok(_) => report.added.push(id),
                Err(e) => {
                    tracing::error!(stream = %id, error = %e.message(), "starting on reload");
                    report.failed.push(id);
                }
            }
        }
        report
    }
}
