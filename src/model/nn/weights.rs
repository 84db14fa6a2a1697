//! Safetensors checkpoints, single-file or sharded (`model.safetensors.index.json`),
//! read through memory maps and handed out by scoped name, as candle's `VarBuilder`
//! does: `vb.pp("layers").pp(3).get("q_proj.weight", &[out, in])`. Every tensor handed
//! out is checked for shape and recorded, so that at the end the loader can name any
//! tensor the checkpoint holds and the model never used.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Display;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::tensor::{Dtype, TensorInfo};
use safetensors::SafeTensors;
use tch::{Device, Kind, Tensor};

use crate::error::{ModelError, ModelResult};

/// One mapped safetensors file with its parsed header.
struct MappedFile {
    path: PathBuf,
    mmap: Mmap,
    /// Byte offset of the data section (8-byte length + JSON header).
    data_start: usize,
}

struct Entry {
    file: usize,
    info: TensorInfo,
}

/// All tensors of a checkpoint directory, loaded on demand into `dtype` on `device`.
pub struct WeightStore {
    files: Vec<MappedFile>,
    entries: HashMap<String, Entry>,
    /// Names handed out so far (or declared unused on purpose).
    used: RefCell<HashSet<String>>,
    device: Device,
    dtype: Kind,
    /// Trainable mode: tensors are handed out as leaves that require grad, and
    /// recorded by name in `parameters` for the optimiser.
    trainable: bool,
    parameters: RefCell<Vec<(String, Tensor)>>,
}

impl WeightStore {
    /// Maps `model.safetensors`, or every shard named by `model.safetensors.index.json`.
    pub fn open(dir: &Path, device: Device, dtype: Kind) -> ModelResult<Self> {
        let index = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        let paths: Vec<PathBuf> = if index.exists() {
            #[derive(serde::Deserialize)]
            struct Index {
                weight_map: BTreeMap<String, String>,
            }
            let idx: Index = crate::model::config::read_json(&index)?;
            let mut shards: Vec<String> = idx.weight_map.into_values().collect();
            shards.sort();
            shards.dedup();
            shards.into_iter().map(|s| dir.join(s)).collect()
        } else if single.exists() {
            vec![single]
        } else {
            return Err(ModelError::MissingFile {
                dir: dir.to_owned(),
                what: "weights (model.safetensors or model.safetensors.index.json)",
            });
        };
        let mut files = Vec::with_capacity(paths.len());
        let mut entries = HashMap::new();
        for path in paths {
            let file = File::open(&path).map_err(|e| ModelError::io(&path, e))?;
            // SAFETY: the mapping is read-only; checkpoints are not modified while loaded.
            let mmap = unsafe { Mmap::map(&file) }.map_err(|e| ModelError::io(&path, e))?;
            let (header_len, metadata) =
                SafeTensors::read_metadata(&mmap).map_err(|e| ModelError::Safetensors {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
            let file_idx = files.len();
            for (name, info) in metadata.tensors() {
                let info = info.clone();
                if entries
                    .insert(
                        name.clone(),
                        Entry {
                            file: file_idx,
                            info,
                        },
                    )
                    .is_some()
                {
                    return Err(ModelError::Safetensors {
                        path: path.clone(),
                        message: format!("tensor `{name}` appears in more than one shard"),
                    });
                }
            }
            files.push(MappedFile {
                path,
                mmap,
                data_start: 8 + header_len,
            });
        }
        Ok(Self {
            files,
            entries,
            used: RefCell::new(HashSet::new()),
            device,
            dtype,
            trainable: false,
            parameters: RefCell::new(Vec::new()),
        })
    }

    /// As [`WeightStore::open`], but every tensor handed out requires grad and is
    /// recorded, so a trainer gets the model's parameters by checkpoint name
    /// ([`WeightStore::take_parameters`]) and can write them back under the same names.
    pub fn open_trainable(dir: &Path, device: Device, dtype: Kind) -> ModelResult<Self> {
        let mut store = Self::open(dir, device, dtype)?;
        store.trainable = true;
        Ok(store)
    }

    /// The tensors handed out so far in trainable mode, in load order.
    pub fn take_parameters(&self) -> Vec<(String, Tensor)> {
        std::mem::take(&mut *self.parameters.borrow_mut())
    }

    pub fn root(&self) -> Scope<'_> {
        Scope {
            store: self,
            prefix: String::new(),
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// Elements over all tensors, leaving out those under `exclude` (a tied head).
    pub fn parameter_count(&self, exclude: Option<&str>) -> i64 {
        self.entries
            .iter()
            .filter(|(name, _)| exclude.is_none_or(|p| !name.starts_with(p)))
            .map(|(_, e)| e.info.shape.iter().product::<usize>() as i64)
            .sum()
    }

    /// Marks every tensor under `prefix` as deliberately unused (e.g. vision layers past
    /// the feature layer, a SigLIP pooling head).
    pub fn skip_prefix(&self, prefix: &str) {
        let mut used = self.used.borrow_mut();
        for name in self.entries.keys().filter(|n| n.starts_with(prefix)) {
            used.insert(name.clone());
        }
    }

    /// Errors if the checkpoint holds tensors nothing asked for.
    pub fn finish(&self) -> ModelResult<()> {
        let used = self.used.borrow();
        let mut unknown: Vec<&String> =
            self.entries.keys().filter(|n| !used.contains(*n)).collect();
        unknown.sort();
        match unknown.first() {
            None => Ok(()),
            Some(first) => Err(ModelError::UnknownTensors {
                count: unknown.len(),
                first: (*first).clone(),
            }),
        }
    }

    fn load(&self, name: &str, shape: &[i64]) -> ModelResult<Tensor> {
        let entry = self
            .entries
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor(name.to_owned()))?;
        let found: Vec<i64> = entry.info.shape.iter().map(|&d| d as i64).collect();
        if found != shape {
            return Err(ModelError::ShapeMismatch {
                name: name.to_owned(),
                expected: shape.to_vec(),
                found,
            });
        }
        let kind = match entry.info.dtype {
            Dtype::F32 => Kind::Float,
            Dtype::F16 => Kind::Half,
            Dtype::BF16 => Kind::BFloat16,
            other => {
                return Err(ModelError::UnsupportedDtype {
                    name: name.to_owned(),
                    dtype: format!("{other:?}"),
                })
            }
        };
        let file = &self.files[entry.file];
        let (start, end) = entry.info.data_offsets;
        let bytes = file
            .mmap
            .get(file.data_start + start..file.data_start + end)
            .ok_or_else(|| ModelError::Safetensors {
                path: file.path.clone(),
                message: format!("tensor `{name}` lies past the end of the file"),
            })?;
        let tensor = Tensor::f_from_data_size(bytes, shape, kind)?
            .f_to_kind(self.dtype)?
            .f_to_device(self.device)?;
        // The tensor is a copy: give the mapped pages back now rather than when the store
        // drops, or a load peaks at the checkpoint twice over.
        // SAFETY: a read-only mapping of a file nothing writes; dropped pages are read
        // from the file again if touched.
        let released = unsafe {
            file.mmap.unchecked_advise_range(
                memmap2::UncheckedAdvice::DontNeed,
                file.data_start + start,
                end - start,
            )
        };
        if let Err(e) = released {
            tracing::debug!(error = %e, "could not release mapped checkpoint pages");
        }
        self.used.borrow_mut().insert(name.to_owned());
        if self.trainable {
            let tensor = tensor.f_detach()?.f_set_requires_grad(true)?;
            self.parameters
                .borrow_mut()
                .push((name.to_owned(), tensor.shallow_clone()));
            return Ok(tensor);
        }
        Ok(tensor)
    }
}

/// A name prefix inside a [`WeightStore`].
#[derive(Clone)]
pub struct Scope<'a> {
    store: &'a WeightStore,
    prefix: String,
}

impl<'a> Scope<'a> {
    /// Child scope `prefix.part`.
    pub fn pp(&self, part: impl Display) -> Scope<'a> {
        let prefix = if self.prefix.is_empty() {
            part.to_string()
        } else {
            format!("{}.{}", self.prefix, part)
        };
        Scope {
            store: self.store,
            prefix,
        }
    }

    pub fn name(&self, leaf: &str) -> String {
        if self.prefix.is_empty() {
            leaf.to_owned()
        } else {
            format!("{}.{}", self.prefix, leaf)
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The tensor `prefix.leaf`, which must have exactly `shape`.
    pub fn get(&self, leaf: &str, shape: &[i64]) -> ModelResult<Tensor> {
        self.store.load(&self.name(leaf), shape)
    }

    pub fn contains(&self, leaf: &str) -> bool {
        self.store.contains(&self.name(leaf))
    }

    /// `weight` [out, in] and, if `bias`, `bias` [out] of a linear layer.
    pub fn linear(&self, input: i64, output: i64, bias: bool) -> ModelResult<Linear> {
        Ok(Linear {
            weight: self.get("weight", &[output, input])?,
            bias: if bias {
                Some(self.get("bias", &[output])?)
            } else {
                None
            },
        })
    }

    /// `weight` [dim] of an RMSNorm.
    pub fn rms_norm(&self, dim: i64, eps: f64) -> ModelResult<RmsNorm> {
        Ok(RmsNorm {
            weight: self.get("weight", &[dim])?,
            eps,
        })
    }

    /// `gate_proj`, `up_proj` ([hidden, dim]) and `down_proj` ([dim, hidden]) of a
    /// SwiGLU MLP.
    pub fn gated_mlp(&self, dim: i64, hidden: i64, bias: bool) -> ModelResult<GatedMlp> {
        Ok(GatedMlp {
            gate_proj: self.pp("gate_proj").linear(dim, hidden, bias)?,
            up_proj: self.pp("up_proj").linear(dim, hidden, bias)?,
            down_proj: self.pp("down_proj").linear(hidden, dim, bias)?,
        })
    }

    /// `weight` and `bias` [dim] of a LayerNorm.
    pub fn layer_norm(&self, dim: i64, eps: f64) -> ModelResult<LayerNorm> {
        Ok(LayerNorm {
            weight: self.get("weight", &[dim])?,
            bias: self.get("bias", &[dim])?,
            eps,
        })
    }
}

/// `y = x Wᵀ + b`.
#[derive(Debug)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.linear(&self.weight, self.bias.as_ref())
    }
}

#[derive(Debug)]
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub eps: f64,
}

impl LayerNorm {
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let dim = self.weight.size()[0];
        x.layer_norm([dim], Some(&self.weight), Some(&self.bias), self.eps, false)
    }
}

/// Root-mean-square norm computed in fp32 and cast back before the weight, as
/// `Qwen2RMSNorm`, `LlamaRMSNorm` and Qwen2.5-VL's vision norms do.
#[derive(Debug)]
pub struct RmsNorm {
    pub weight: Tensor,
    pub eps: f64,
}

impl RmsNorm {
    pub fn forward(&self, x: &Tensor) -> ModelResult<Tensor> {
        let dtype = x.kind();
        let h = x.f_to_kind(Kind::Float)?;
        let variance = h
            .f_pow_tensor_scalar(2)?
            .f_mean_dim(-1, true, Kind::Float)?;
        let h = h.f_mul(&variance.f_add_scalar(self.eps)?.f_rsqrt()?)?;
        Ok(self.weight.f_mul(&h.f_to_kind(dtype)?)?)
    }
}

/// SwiGLU MLP: `down(silu(gate(x)) · up(x))` (Llama, Qwen2, Qwen2.5-VL's vision blocks).
#[derive(Debug)]
pub struct GatedMlp {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
}

impl GatedMlp {
    pub fn forward(&self, x: &Tensor) -> ModelResult<Tensor> {
        let gate = self.gate_proj.forward(x).f_silu()?;
        Ok(self
            .down_proj
            .forward(&gate.f_mul(&self.up_proj.forward(x))?))
    }
}
