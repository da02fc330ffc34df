//! Layers of the backbones: convolution and batch norm (+ ReLU), which hold their parameters
//! (registered in a [`ParamStore`]) and emit themselves into a program, and the linear head.

use candle_core::{Tensor, Var};

use crate::error::Result;
use crate::init::{draw, Init};
use crate::params::ParamStore;
use crate::program::{ProgramBuilder, Slot};

/// Builds parameters with names under a prefix, drawing initial values from the seeded RNG.
pub(crate) struct Builder<'a> {
    pub store: &'a ParamStore,
    pub seed: u64,
    pub prefix: String,
}

impl<'a> Builder<'a> {
    pub fn new(store: &'a ParamStore, seed: u64) -> Self {
        Self { store, seed, prefix: String::new() }
    }

    pub fn push(&self, part: impl std::fmt::Display) -> Builder<'a> {
        let prefix =
            if self.prefix.is_empty() { part.to_string() } else { format!("{}.{part}", self.prefix) };
        Builder { store: self.store, seed: self.seed, prefix }
    }

    pub fn name(&self, leaf: &str) -> String {
        if self.prefix.is_empty() {
            leaf.to_string()
        } else {
            format!("{}.{leaf}", self.prefix)
        }
    }

    pub fn param(&self, leaf: &str, shape: &[usize], init: Init) -> Result<Var> {
        let name = self.name(leaf);
        self.store.room_for(&name, shape)?;
        let t = draw(init, shape, self.seed, &name, self.store.device())?;
        self.store.add_param(&name, t)
    }
}

/// A bias-free convolution (`{prefix}.weight`, `[C_out, C_in, k, k]`).
pub(crate) struct Conv {
    pub weight: Var,
    pub stride: usize,
    pub pad: usize,
}

/// How convolution weights are initialised.
#[derive(Clone, Copy)]
pub(crate) enum ConvInit {
    /// Kaiming normal over the fan-in (the CIFAR ResNet reference).
    FanIn,
    /// Kaiming normal over the fan-out (torchvision).
    FanOut,
}

impl Conv {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        b: &Builder,
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        pad: usize,
        init: ConvInit,
    ) -> Result<Self> {
        let fan = match init {
            ConvInit::FanIn => cin * k * k,
            ConvInit::FanOut => cout * k * k,
        };
        let weight = b.param("weight", &[cout, cin, k, k], Init::KaimingNormal { fan })?;
        Ok(Self { weight, stride, pad })
    }

    pub fn emit(&self, p: &mut ProgramBuilder, x: Slot) -> Slot {
        p.conv(x, &self.weight, self.stride, self.pad)
    }
}

/// Batch norm over the channel (last) dimension with PyTorch's parameters and buffers.
pub(crate) struct BatchNorm {
    pub prefix: String,
    pub weight: Var,
    pub bias: Var,
    pub eps: f64,
}

impl BatchNorm {
    pub fn new(b: &Builder, c: usize) -> Result<Self> {
        let weight = b.param("weight", &[c], Init::Const(1.0))?;
        let bias = b.param("bias", &[c], Init::Const(0.0))?;
        let dev = b.store.device();
        b.store.set_buffer(&b.name("running_mean"), Tensor::zeros(c, candle_core::DType::F32, dev)?)?;
        b.store.set_buffer(&b.name("running_var"), Tensor::ones(c, candle_core::DType::F32, dev)?)?;
        b.store.set_buffer(&b.name("num_batches_tracked"), Tensor::new(0i64, dev)?)?;
        Ok(Self { prefix: b.prefix.clone(), weight, bias, eps: 1e-5 })
    }

    /// Emits the batch norm of slot `x`, followed by a ReLU when `relu`.
    pub fn emit(&self, p: &mut ProgramBuilder, x: Slot, relu: bool) -> Slot {
        p.bn(x, (&self.weight, &self.bias), &self.prefix, self.eps, relu)
    }
}

/// The linear classifier head: `logits = z W^T + b`.
pub(crate) struct Linear {
    pub weight: Var,
    pub bias: Var,
}

impl Linear {
    /// `kaiming`: Kaiming-normal weight (CIFAR reference); otherwise PyTorch's default uniform.
    pub fn new(b: &Builder, din: usize, dout: usize, kaiming: bool) -> Result<Self> {
        let bound = 1.0 / (din as f64).sqrt();
        let winit = if kaiming { Init::KaimingNormal { fan: din } } else { Init::Uniform { bound } };
        let weight = b.param("weight", &[dout, din], winit)?;
        let bias = b.param("bias", &[dout], Init::Uniform { bound })?;
        Ok(Self { weight, bias })
    }

    pub fn forward(&self, z: &Tensor, grad: bool) -> Result<Tensor> {
        let (w, b) = if grad {
            (self.weight.as_tensor().clone(), self.bias.as_tensor().clone())
        } else {
            (self.weight.as_detached_tensor(), self.bias.as_detached_tensor())
        };
        Ok(z.matmul(&w.t()?)?.broadcast_add(&b)?)
    }
}
