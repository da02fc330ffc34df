//! [`Model`]: one interface for every backbone.

use std::sync::{Arc, Mutex};

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, ModuleT, Tensor, Var};

use crate::arch::{Arch, Family};
use crate::cifar::CifarResNet;
use crate::error::{ModelError, Result};
use crate::exec::eager::Eager;
use crate::exec::fused::{Fused, PackCache};
use crate::exec::taped::Taped;
use crate::exec::Mode;
use crate::layers::{Builder, Linear, Listing};
use crate::ops::elementwise::Nhwc;
use crate::ops::Backend;
use crate::params::ParamStore;
use crate::pool::Pool;
use crate::precision::Precision;
use crate::program::{Plan, Program, ProgramBuilder};
use crate::torchvision::TvResNet;

/// A backbone with its classifier head.
///
/// Inputs are `N x C x H x W` images (as the data loader yields them); internally activations
/// are NHWC. Parameters live in a [`ParamStore`] (a candle-nn `VarMap` plus batch-norm buffers)
/// under PyTorch's names, so that weights load from and save to torchvision/timm files and the
/// SWAG crate can flatten them in sorted-name order.
///
/// The forward entry points: [`ModuleT::forward_t`] (logits with the autograd graph: a
/// `loss.backward()` gives every parameter its gradient), [`Model::train_step`] (forward, loss,
/// backward, and a check that every parameter got its gradient), [`Model::infer`] (eval-mode
/// features and logits, no graph) and [`Model::update_bn_stats`] (a training-mode pass without a
/// graph, for batch-norm recalibration).
pub struct Model {
    arch: Arch,
    store: Arc<ParamStore>,
    program: Arc<Program>,
    head: Linear,
    backend: Backend,
    precision: Precision,
    fused: bool,
    taped: bool,
    pool: Arc<Pool>,
    packs: Arc<PackCache>,
    plan: Mutex<Option<Arc<Plan>>>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("arch", &self.arch)
            .field("backend", &self.backend)
            .field("precision", &self.precision)
            .finish()
    }
}

/// The names and shapes of a network's parameters and buffers ([`Model::shapes`]), under
/// PyTorch's names, in the order the network makes them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shapes {
    /// Trainable parameters: name and shape.
    pub params: Vec<(String, Vec<usize>)>,
    /// Buffers (batch-norm statistics and counters): name and shape.
    pub buffers: Vec<(String, Vec<usize>)>,
}

/// A network's layers, before they are emitted into a program.
enum Net {
    Cifar(CifarResNet),
    Tv(TvResNet),
}

/// Makes (or, with a listing builder, lists) the layers of `arch`.
fn construct(arch: &Arch, b: &Builder) -> Result<Net> {
    Ok(match arch.family {
        Family::Cifar { depth, width } => {
            if width % 2 != 0 {
                return Err(ModelError::Invalid(format!("CIFAR ResNet width must be even, got {width}")));
            }
            Net::Cifar(CifarResNet::new(b, depth, width, arch.in_channels, arch.num_classes)?)
        }
        Family::Torchvision { depth } => {
            Net::Tv(TvResNet::new(b, depth, arch.in_channels, arch.num_classes)?)
        }
    })
}

/// One training step's results (see [`Model::train_step`]).
pub struct TrainStep {
    /// Logits `[N, classes]`.
    pub logits: Tensor,
    /// The loss the closure built from the logits.
    pub loss: Tensor,
    /// The gradients of the loss; every trainable parameter of the model has one.
    pub grads: GradStore,
}

impl Model {
    /// The names and shapes of the parameters and buffers of `arch`, listed without making them;
    /// an error naming the parameter at which they outgrow the memory this process may use (the
    /// machine's, or its container's limit).
    pub fn shapes(arch: &Arch) -> Result<Shapes> {
        let listing = Listing::new();
        construct(arch, &Builder::listing(&listing))?;
        Ok(listing.into_parts())
    }

    /// Builds a model with weights initialised from `seed` (Kaiming normal, as the references).
    /// A network larger than the memory this process may use is refused before any value is drawn.
    pub fn new(arch: Arch, seed: u64, device: &Device) -> Result<Self> {
        Self::shapes(&arch)?;
        let store = Arc::new(ParamStore::new(device));
        let b = Builder::new(&store, seed);
        let (mut pb, input) = ProgramBuilder::new();
        let (output, head) = match construct(&arch, &b)? {
            Net::Cifar(net) => (net.emit(&mut pb, input), net.linear),
            Net::Tv(net) => (net.emit(&mut pb, input), net.fc),
        };
        let program = Arc::new(pb.finish(output));
        Ok(Self {
            arch,
            store,
            program,
            head,
            backend: Backend::default(),
            precision: Precision::default(),
            fused: true,
            taped: device.is_cuda(),
            pool: Pool::new(),
            packs: Arc::default(),
            plan: Mutex::new(None),
        })
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

    /// The arithmetic of the backbone's passes.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Chooses the arithmetic of the backbone's passes (see [`Precision`]); the parameters stay
    /// `f32`. [`Precision::Bf16`] is for CUDA, where cuDNN runs it; on the CPU it runs candle's
    /// stock ops in `bf16`, which is slower than `f32` on the project's kernels.
    pub fn set_precision(&mut self, precision: Precision) {
        self.precision = precision;
    }

    /// Whether the CPU fast backend runs the backbone as one fused node (the default; see
    /// [`crate::ops`]). Off, it runs op by op with candle's autograd: the same values, slower;
    /// the reference the fused pass is tested against.
    pub fn set_fused(&mut self, fused: bool) {
        self.fused = fused;
    }

    /// Whether the CPU fast backend runs the backbone as one fused node ([`Model::set_fused`]).
    pub fn fused(&self) -> bool {
        self.fused
    }

    /// Whether [`Model::train_step`] walks the backward pass by hand with the ops' explicit
    /// backward passes (the taped executor) instead of through candle's autograd: the same
    /// gradients with fewer kernels, fewer allocations and activations freed as the pass goes,
    /// for the fast backend on CUDA (cuDNN) and on the CPU. On by default for a model on CUDA,
    /// off on the CPU, where the fused pass ([`Model::set_fused`]) is faster and is used when
    /// both are on; the taped executor runs there with the fused pass off (its tests do that).
    pub fn set_taped(&mut self, taped: bool) {
        self.taped = taped;
    }

    /// Whether training steps use the taped executor where it applies ([`Model::set_taped`]).
    pub fn taped(&self) -> bool {
        self.taped
    }

    /// Whether a training step on images of this model's device and type runs on the taped
    /// executor: enabled, every op with an explicit backward pass on this device in this
    /// precision (the fast backend; on CUDA `f32` and `bf16`, on the CPU `f32`), and on the CPU
    /// the fused pass off.
    pub fn taped_active(&self) -> bool {
        self.taped
            && !self.fused_applies()
            && self.backend.has_explicit_backward(self.device(), self.precision.activation_dtype())
    }

    /// Replaces evaluation's packed-weight cache ([`Model::freeze`] gives its copy a frozen one).
    pub(crate) fn set_pack_cache(&mut self, packs: Arc<PackCache>) {
        self.packs = packs;
    }

    /// Number of trainable scalars.
    pub fn num_params(&self) -> usize {
        self.store.num_params()
    }

    /// Dimension of the pooled representation.
    pub fn feature_dim(&self) -> usize {
        self.arch.family.feature_dim()
    }

    /// The classifier head's weight `[C, D]` and bias `[C]` (stage 2 replaces or re-trains them).
    pub fn head(&self) -> (&Var, &Var) {
        (&self.head.weight, &self.head.bias)
    }

    /// Names of the head's weight and bias.
    pub fn head_names(&self) -> (&'static str, &'static str) {
        self.arch.family.head_names()
    }

    fn check_input(&self, x: &Tensor) -> Result<Nhwc> {
        match *x.dims() {
            [n, c, h, w] if c == self.arch.in_channels => Ok(Nhwc { n, h, w, c }),
            _ => Err(ModelError::Invalid(format!(
                "{} expects N x {} x H x W images, got {:?}",
                self.arch.family.name(),
                self.arch.in_channels,
                x.dims()
            ))),
        }
    }

    /// Whether the fused CPU pass applies to this model: on, fast backend, CPU, `f32` arithmetic.
    fn fused_applies(&self) -> bool {
        self.fused
            && self.backend == Backend::Fast
            && self.precision == Precision::F32
            && self.device().is_cpu()
    }

    /// Whether the fused CPU pass applies to a pass on `x`: [`Model::fused_applies`], a CPU `f32`
    /// input, and no gradient wanted for the input itself (the fused pass computes none).
    fn fused_ok(&self, x: &Tensor, mode: Mode) -> bool {
        self.fused_applies()
            && x.device().is_cpu()
            && x.dtype() == DType::F32
            && !(mode.graph && x.track_op())
    }

    /// The program's geometry for inputs of this size (computed once per size).
    fn plan(&self, input: Nhwc) -> Result<Arc<Plan>> {
        let mut guard = self.plan.lock().map_err(|_| ModelError::Invalid("poisoned plan cache".into()))?;
        if let Some(p) = guard.as_ref().filter(|p| p.input == input) {
            return Ok(p.clone());
        }
        let p = Arc::new(self.program.plan(input)?);
        *guard = Some(p.clone());
        Ok(p)
    }

    /// Whether a training step on `x` runs on the taped executor: [`Model::taped_active`] (which
    /// leaves the model to the fused CPU pass where that applies), and no gradient wanted for the
    /// input.
    fn taped_ok(&self, x: &Tensor) -> bool {
        self.taped_active() && !x.track_op()
    }

    /// The images `[N, C, H, W]` as the executors take them: NHWC, on the model's device, in the
    /// precision's activation type.
    fn nhwc_input(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.to_device(self.device())?.permute((0, 2, 3, 1))?;
        Ok(x.to_dtype(self.precision.activation_dtype())?)
    }

    fn eager(&self, mode: Mode) -> Eager<'_> {
        Eager {
            backend: self.backend,
            store: &self.store,
            mode,
            precision: self.precision,
            packs: &self.packs,
        }
    }

    /// The pooled representation `[N, D]` of images `[N, C, H, W]`.
    fn features(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let dims = self.check_input(x)?;
        if self.fused_ok(x, mode) {
            let fused = Fused {
                program: self.program.clone(),
                plan: self.plan(dims)?,
                pool: self.pool.clone(),
                packs: self.packs.clone(),
            };
            return fused.features(x, &self.store, mode);
        }
        let x = self.nhwc_input(x)?;
        let x = if mode.graph { x } else { x.detach() };
        self.eager(mode).run(&self.program, x)
    }

    /// A training step on the taped executor: the logits, the loss and every parameter's
    /// gradient (the head's from candle's autograd, the backbone's from the walk that starts
    /// from the features' gradient).
    fn taped_step(
        &self,
        x: &Tensor,
        mode: Mode,
        loss: impl FnOnce(&Tensor) -> candle_core::Result<Tensor>,
    ) -> Result<(Tensor, Tensor, GradStore)> {
        self.check_input(x)?;
        let taped = Taped { eager: self.eager(mode) };
        let (z, tape) = taped.forward(&self.program, self.nhwc_input(x)?)?;
        let leaf = Var::from_tensor(&z)?;
        // The head and the autograd pass through it and the loss upload their kernels' dims and
        // strides once per distinct layout, as the backbone's passes do. Not the caller's loss:
        // the cache also keeps every small upload of host data made under it, by content, which
        // would grow at every step with a loss that uploads new values each time.
        let uploads = crate::exec::uploads_cached(x.device());
        let logits = self.head.forward(leaf.as_tensor(), true)?;
        drop(uploads);
        let loss = loss(&logits)?;
        let uploads = crate::exec::uploads_cached(x.device());
        let mut grads = loss.backward()?;
        drop(uploads);
        // A loss that does not reach the features leaves the backbone without gradients, which
        // the caller reports.
        if let Some(dz) = grads.remove(leaf.as_tensor()) {
            for (var, g) in self.program.params.iter().zip(taped.backward(&self.program, tape, &dz)?) {
                if let Some(g) = g {
                    grads.insert(var.as_tensor(), g);
                }
            }
        }
        Ok((logits, loss, grads))
    }

    fn logits(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let z = self.features(x, mode)?;
        self.head.forward(&z, mode.graph)
    }

    /// A training step: training-mode logits, `loss(&logits)`, and its backward pass. Fails if
    /// any trainable parameter got no gradient, so that a step can never silently leave part of
    /// the model untrained.
    pub fn train_step(
        &self,
        x: &Tensor,
        loss: impl FnOnce(&Tensor) -> candle_core::Result<Tensor>,
    ) -> Result<TrainStep> {
        self.train_step_bn(x, true, loss)
    }

    /// [`Model::train_step`] with the choice of batch norm's mode: `batch_statistics` false
    /// normalises with the running statistics and leaves them unchanged (frozen batch norm, for
    /// fine-tuning a pretrained backbone on small batches); the affine parameters still train.
    pub fn train_step_bn(
        &self,
        x: &Tensor,
        batch_statistics: bool,
        loss: impl FnOnce(&Tensor) -> candle_core::Result<Tensor>,
    ) -> Result<TrainStep> {
        let mode = Mode { train: batch_statistics, graph: true, taped: false };
        let (logits, loss, grads) = if self.taped_ok(x) {
            self.taped_step(x, mode, loss)?
        } else {
            let logits = self.logits(x, mode)?;
            let loss = loss(&logits)?;
            let grads = loss.backward()?;
            (logits, loss, grads)
        };
        if let Some((name, _)) =
            self.store.named_params().into_iter().find(|(_, v)| grads.get(v.as_tensor()).is_none())
        {
            return Err(ModelError::MissingGradient(name));
        }
        Ok(TrainStep { logits, loss, grads })
    }

    /// Eval-mode `(features, logits)` without an autograd graph (inference, feature extraction).
    pub fn infer(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let mode = Mode { train: false, graph: false, taped: false };
        let z = self.features(x, mode)?;
        let logits = self.head.forward(&z, false)?;
        Ok((z, logits))
    }

    /// A training-mode forward pass without a graph: updates the batch-norm running statistics
    /// from the batch (see [`ParamStore::set_bn_update`]; batch-norm recalibration).
    pub fn update_bn_stats(&self, x: &Tensor) -> Result<()> {
        self.features(x, Mode { train: true, graph: false, taped: false }).map(drop)
    }
}

impl ModuleT for Model {
    /// Logits `[N, classes]` of images `[N, C, H, W]` with the autograd graph; `train` puts batch
    /// norm in training mode (batch statistics, running statistics updated).
    fn forward_t(&self, xs: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        self.logits(xs, Mode { train, graph: true, taped: false }).map_err(|e| match e {
            ModelError::Candle(e) => e,
            e => candle_core::Error::wrap(e),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::program::Op;

    #[test]
    fn a_taped_forward_pass_keeps_only_what_its_backward_pass_reads() {
        let dev = Device::Cpu;
        let m = Model::new(Arch::new("resnet20", 3, 3).unwrap(), 0, &dev).unwrap();
        let x = Tensor::randn(0f32, 1.0, (2, 3, 8, 8), &dev).unwrap();
        let taped = Taped { eager: m.eager(Mode { train: true, graph: true, taped: true }) };
        let (_, tape) = taped.forward(&m.program, m.nhwc_input(&x).unwrap()).unwrap();
        let prog = &m.program;
        let read = prog.read_backward();
        assert_eq!(tape.held(), (0..prog.slots).filter(|&s| read[s]).collect::<Vec<_>>());
        // ResNet-20: 9 blocks, each with a batch norm without a ReLU before its add, and 2 option-A
        // shortcuts; only the add reads their outputs.
        let dropped: Vec<_> = prog
            .nodes
            .iter()
            .filter(|n| matches!(&n.op, Op::Bn(bn) if !bn.relu) || matches!(n.op, Op::Shortcut { .. }))
            .map(|n| n.y)
            .collect();
        assert_eq!((dropped.len(), tape.held().len()), (11, prog.slots - 11));
        assert!(dropped.iter().all(|s| !read[*s]));
    }
}
