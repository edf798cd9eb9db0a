//! Named checkpoint tensors, taken one by one as f32 on the training device.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};

use crate::error::{Result, TrainError};

pub struct Weights {
    tensors: BTreeMap<String, Tensor>,
    device: Device,
    dtype: DType,
}

impl Weights {
    /// `tensors` with any of `prefixes` (e.g. `transformer.`) stripped from
    /// their names, so checkpoints saved from the bare model and from the
    /// language-model wrapper read the same.
    pub fn new(tensors: BTreeMap<String, Tensor>, prefixes: &[&str], device: &Device) -> Self {
        let tensors = tensors
            .into_iter()
            .map(|(k, v)| {
                let short = prefixes
                    .iter()
                    .find_map(|p| k.strip_prefix(p))
                    .map(str::to_string);
                (short.unwrap_or(k), v)
            })
            .collect();
        Weights {
            tensors,
            device: device.clone(),
            dtype: DType::F32,
        }
    }

    /// Tensors taken in `dtype` rather than f32 (f64 for gradient checks).
    pub fn with_dtype(mut self, dtype: DType) -> Self {
        self.dtype = dtype;
        self
    }

    /// The tensor `name` as contiguous f32 (or the chosen dtype) on the device.
    pub fn take(&mut self, name: &str) -> Result<Tensor> {
        let w = self
            .tensors
            .remove(name)
            .ok_or_else(|| TrainError::Invalid(format!("the checkpoint has no tensor `{name}`")))?;
        Ok(w.to_dtype(self.dtype)?
            .to_device(&self.device)?
            .contiguous()?)
    }

    /// [`Weights::take`], checking the shape.
    pub fn take_shaped(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let w = self.take(name)?;
        if w.dims() != shape {
            return Err(TrainError::Invalid(format!(
                "tensor `{name}` has shape {:?}, the config implies {shape:?}",
                w.dims()
            )));
        }
        Ok(w)
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}
