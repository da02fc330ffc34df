//! [`Frozen`]: a model's snapshot for inference.
//!
//! Evaluation keeps each convolution's weights folded with its batch norm and packed for the
//! kernels between calls ([`crate::exec::fused::PackCache`]); since a [`Model`]'s variables can
//! change between two calls (an optimiser step, a loaded file, a SWAG sample), every call
//! fingerprints the weights to check that the packed ones are still theirs. That read of every
//! weight is a tenth of a ResNet-50 batch-1 forward pass. A `Frozen` model owns a copy of the
//! variables that nothing else can reach, so its packed weights stay valid and it skips the
//! check; the model it was made from is free to go on changing.

use std::sync::Arc;

use candle_core::{Module, Tensor};

use crate::arch::Arch;
use crate::error::{ModelError, Result};
use crate::exec::fused::PackCache;
use crate::model::Model;

/// A snapshot of a [`Model`]'s weights and running statistics for inference (see the module
/// docs): later changes to the model do not reach it.
#[derive(Debug)]
pub struct Frozen {
    model: Model,
}

impl Model {
    /// A [`Frozen`] snapshot of this model (a copy of every parameter and buffer, on the same
    /// device, with the same backend).
    pub fn freeze(&self) -> Result<Frozen> {
        let mut copy = Model::new(*self.arch(), 0, self.device())?;
        copy.set_backend(self.backend());
        copy.set_fused(self.fused());
        copy.set_precision(self.precision());
        // `Var::set` copies the values into the copy's own storage.
        for ((name, dst), (src_name, src)) in
            copy.store().named_params().into_iter().zip(self.store().named_params())
        {
            if name != src_name {
                return Err(ModelError::Invalid(format!("freezing: parameter {src_name} met {name}")));
            }
            dst.set(src.as_tensor())?;
        }
        for (name, value) in self.store().named_buffers() {
            copy.store().set_buffer(&name, value.copy()?)?;
        }
        copy.set_pack_cache(Arc::new(PackCache::frozen()));
        Ok(Frozen { model: copy })
    }
}

impl Frozen {
    /// The architecture.
    pub fn arch(&self) -> &Arch {
        self.model.arch()
    }

    /// Dimension of the pooled representation.
    pub fn feature_dim(&self) -> usize {
        self.model.feature_dim()
    }

    /// Eval-mode `(features, logits)` of images `[N, C, H, W]`, as [`Model::infer`] gave when
    /// the snapshot was taken.
    pub fn infer(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        self.model.infer(x)
    }
}

impl Module for Frozen {
    /// Eval-mode logits `[N, classes]` of images `[N, C, H, W]`.
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        self.infer(xs).map(|(_, logits)| logits).map_err(candle_core::Error::wrap)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;
    use crate::golden::frozen::check_frozen;
    use crate::Precision;

    #[test]
    fn a_snapshot_infers_as_the_model_did_and_ignores_later_changes() {
        let checks =
            check_frozen("cifar-resnet8x8", 5, [3, 3, 12, 12], &Device::Cpu, Precision::F32).unwrap();
        assert_eq!(checks.len(), 4);
        for c in &checks {
            // The same kernels on the same values: bit for bit.
            assert_eq!(c.relative_error, 0.0, "{}", c.what);
        }
    }

    /// As a candle `Module`, a snapshot gives the logits of `infer`, and it describes the model
    /// it was taken from.
    #[test]
    fn a_snapshot_is_a_module_of_its_models_logits() {
        use candle_core::Module;
        let arch = Arch::new("cifar-resnet8x8", 5, 3).unwrap();
        let model = Model::new(arch, 7, &Device::Cpu).unwrap();
        let frozen = model.freeze().unwrap();
        assert_eq!((*frozen.arch(), frozen.feature_dim()), (arch, model.feature_dim()));
        let x = Tensor::randn(0f32, 1.0, (2, 3, 12, 12), &Device::Cpu).unwrap();
        let logits = frozen.forward(&x).unwrap();
        assert_eq!(logits.dims(), [2, 5]);
        let (_, want) = frozen.infer(&x).unwrap();
        let diff = (logits - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(diff, 0.0);
        // A wrong input is the model's error, through candle's.
        let bad = Tensor::zeros((2, 5, 12, 12), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert!(frozen.forward(&bad).is_err());
    }
}
