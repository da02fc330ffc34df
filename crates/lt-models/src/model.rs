//! [`Model`]: one interface for every backbone.

use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Tensor, Var};

use crate::arch::{Arch, Family};
use crate::cifar::CifarResNet;
use crate::error::{ModelError, Result};
use crate::fused::{Executor, ProgramBuilder, TrainPass};
use crate::layers::{Builder, Ctx, Linear};
use crate::ops::Backend;
use crate::params::ParamStore;
use crate::pool::Pool;
use crate::torchvision::TvResNet;

enum Net {
    Cifar(CifarResNet),
    Torchvision(TvResNet),
}

/// A backbone with its classifier head.
///
/// Inputs are `N x C x H x W` images (as the data loader yields them); internally activations
/// are NHWC. Parameters live in a [`ParamStore`] (a candle-nn `VarMap` plus batch-norm buffers)
/// under PyTorch's names, so that weights load from and save to torchvision/timm files and the
/// SWAG crate can flatten them in sorted-name order.
pub struct Model {
    arch: Arch,
    store: Arc<ParamStore>,
    net: Net,
    backend: Backend,
    pool: Arc<Pool>,
    exec: Mutex<Option<([usize; 4], Arc<Executor>)>>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model").field("arch", &self.arch).field("backend", &self.backend).finish()
    }
}

impl Model {
    /// Builds a model with weights initialised from `seed` (Kaiming normal, as the references).
    pub fn new(arch: Arch, seed: u64, device: &Device) -> Result<Self> {
        let store = Arc::new(ParamStore::new(device));
        let b = Builder::new(&store, seed);
        let net = match arch.family {
            Family::Cifar { depth, width } => {
                if width % 2 != 0 {
                    return Err(ModelError::Invalid(format!("CIFAR ResNet width must be even, got {width}")));
                }
                Net::Cifar(CifarResNet::new(&b, depth, width, arch.in_channels, arch.num_classes)?)
            }
            Family::Torchvision { depth } => {
                Net::Torchvision(TvResNet::new(&b, depth, arch.in_channels, arch.num_classes)?)
            }
        };
        Ok(Self { arch, store, net, backend: Backend::default(), pool: Pool::new(), exec: Mutex::new(None) })
    }

    /// The architecture.
    pub fn arch(&self) -> &Arch {
        &self.arch
    }

    /// The device the parameters live on.
    pub fn device(&self) -> &Device {
        self.store.device()
    }

    /// Parameters and buffers.
    pub fn store(&self) -> &ParamStore {
        &self.store
    }

    /// The op implementation in use.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Chooses the op implementation (the project's kernels or candle's stock ops).
    pub fn set_backend(&mut self, backend: Backend) {
        self.backend = backend;
    }

    /// Number of trainable scalars.
    pub fn num_params(&self) -> usize {
        self.store.num_params()
    }

    /// Dimension of the pooled representation.
    pub fn feature_dim(&self) -> usize {
        self.arch.family.feature_dim()
    }

    fn head_layer(&self) -> &Linear {
        match &self.net {
            Net::Cifar(n) => &n.linear,
            Net::Torchvision(n) => &n.fc,
        }
    }

    /// The classifier head's weight `[C, D]` and bias `[C]` (stage 2 replaces or re-trains them).
    pub fn head(&self) -> (&Var, &Var) {
        let l = self.head_layer();
        (&l.weight, &l.bias)
    }

    /// Names of the head's weight and bias.
    pub fn head_names(&self) -> (&'static str, &'static str) {
        self.arch.family.head_names()
    }

    fn run_features(&self, x: &Tensor, train: bool, grad: bool) -> Result<Tensor> {
        let dims = x.dims();
        if dims.len() != 4 || dims[1] != self.arch.in_channels {
            return Err(ModelError::Invalid(format!(
                "{} expects N x {} x H x W images, got {dims:?}",
                self.arch.family.name(),
                self.arch.in_channels
            )));
        }
        let x = x.to_device(self.device())?.permute((0, 2, 3, 1))?;
        let x = if grad { x } else { x.detach() };
        let ctx = Ctx { train, grad, backend: self.backend, store: &self.store };
        match &self.net {
            Net::Cifar(n) => n.features(&x, ctx),
            Net::Torchvision(n) => n.features(&x, ctx),
        }
    }

    /// The pooled representation `[N, D]` of images `[N, C, H, W]`, recording the autograd graph;
    /// `train` puts batch norm in training mode (batch statistics, running statistics updated).
    pub fn features(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.run_features(x, train, true)
    }

    /// Logits `[N, classes]`, recording the autograd graph.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let z = self.features(x, train)?;
        self.head_layer().forward(&z, true)
    }

    /// Whether the fused CPU path applies to `x` (fast backend, CPU, `f32`).
    fn fused_ok(&self, x: &Tensor) -> bool {
        self.backend == Backend::Fast
            && self.device().is_cpu()
            && x.device().is_cpu()
            && x.dtype() == DType::F32
    }

    /// The compiled program for inputs of `x`'s size (compiled once per size).
    fn executor(&self, x: &Tensor) -> Result<Arc<Executor>> {
        let (n, c, h, w) = x.dims4()?;
        if c != self.arch.in_channels {
            return Err(ModelError::Invalid(format!(
                "{} expects N x {} x H x W images, got {:?}",
                self.arch.family.name(),
                self.arch.in_channels,
                x.dims()
            )));
        }
        let key = [n, h, w, c];
        let mut guard = self.exec.lock().expect("executor lock");
        if let Some((k, e)) = guard.as_ref() {
            if *k == key {
                return Ok(e.clone());
            }
        }
        let (mut b, input) = ProgramBuilder::new(key);
        let output = match &self.net {
            Net::Cifar(net) => net.emit(&mut b, input),
            Net::Torchvision(net) => net.emit(&mut b, input),
        };
        let e = Arc::new(Executor { program: b.finish(input, output), pool: self.pool.clone() });
        *guard = Some((key, e.clone()));
        Ok(e)
    }

    /// A training-mode forward pass for a training step: use [`TrainPass::backward`] on a loss
    /// built from its logits to get every parameter's gradient. On the CPU with the fast backend
    /// the backbone runs as one fused node (see [`crate::fused`]); otherwise this is
    /// [`Model::forward_t`] with candle's autograd.
    pub fn train_forward(&self, x: &Tensor) -> Result<TrainPass> {
        if self.fused_ok(x) {
            let exec = self.executor(x)?;
            let anchor = self
                .store
                .var(self.first_conv())
                .ok_or_else(|| ModelError::Invalid("no stem convolution".into()))?;
            let (features, side) = exec.train_features(x, &anchor, &self.store, true)?;
            let logits = self.head_layer().forward(&features, true)?;
            Ok(TrainPass { logits, features, side: Some(side) })
        } else {
            let features = self.features(x, true)?;
            let logits = self.head_layer().forward(&features, true)?;
            Ok(TrainPass { logits, features, side: None })
        }
    }

    fn first_conv(&self) -> &'static str {
        "conv1.weight"
    }

    /// Frees the buffers kept for reuse between steps.
    pub fn release_buffers(&self) {
        self.pool.clear();
        *self.exec.lock().expect("executor lock") = None;
    }

    /// Eval-mode representation without an autograd graph (inference, feature extraction).
    pub fn features_eval(&self, x: &Tensor) -> Result<Tensor> {
        if self.fused_ok(x) {
            return self.executor(x)?.infer(x, &self.store);
        }
        self.run_features(x, false, false)
    }

    /// Eval-mode `(features, logits)` without an autograd graph.
    pub fn infer(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let z = self.features_eval(x)?;
        let logits = self.head_layer().forward(&z, false)?;
        Ok((z, logits))
    }

    /// Training-mode forward without gradients (batch norm recalibration passes): running
    /// statistics are updated from the batch.
    pub fn forward_train_no_grad(&self, x: &Tensor) -> Result<Tensor> {
        self.run_features(x, true, false)
    }

    /// Applies the head to given representations (no graph).
    pub fn head_logits(&self, z: &Tensor) -> Result<Tensor> {
        self.head_layer().forward(z, false)
    }
}
