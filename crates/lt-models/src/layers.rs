//! Layers of the backbones: convolution and batch norm (+ ReLU), which hold their parameters
//! (registered in a [`ParamStore`]) and emit themselves into a program, and the linear head.

use std::cell::{Cell, RefCell};

use candle_core::{DType, Device, Tensor, Var};

use crate::error::{ModelError, Result};
use crate::init::{draw, Init};
use crate::model::Shapes;
use crate::params::ParamStore;
use crate::program::{ProgramBuilder, Slot};

/// Builds parameters with names under a prefix, drawing initial values from the seeded RNG, or
/// (a [`Listing`]) only lists their names and shapes.
#[derive(Clone)]
pub(crate) struct Builder<'a> {
    target: Target<'a>,
    pub seed: u64,
    pub prefix: String,
}

#[derive(Clone, Copy)]
enum Target<'a> {
    Store(&'a ParamStore),
    Listing(&'a Listing),
}

impl<'a> Builder<'a> {
    pub fn new(store: &'a ParamStore, seed: u64) -> Self {
        Self { target: Target::Store(store), seed, prefix: String::new() }
    }

    /// A builder that makes nothing and lists every parameter and buffer in `listing`.
    pub fn listing(listing: &'a Listing) -> Self {
        Self { target: Target::Listing(listing), seed: 0, prefix: String::new() }
    }

    pub fn push(&self, part: impl std::fmt::Display) -> Builder<'a> {
        let prefix =
            if self.prefix.is_empty() { part.to_string() } else { format!("{}.{part}", self.prefix) };
        Builder { prefix, ..self.clone() }
    }

    pub fn name(&self, leaf: &str) -> String {
        if self.prefix.is_empty() {
            leaf.to_string()
        } else {
            format!("{}.{leaf}", self.prefix)
        }
    }

    /// A trainable parameter (listed: an empty stand-in).
    pub fn param(&self, leaf: &str, shape: &[usize], init: Init) -> Result<Var> {
        let name = self.name(leaf);
        match self.target {
            Target::Store(store) => {
                store.add_param(&name, draw(init, shape, self.seed, &name, store.device())?)
            }
            Target::Listing(l) => {
                l.add(name, shape, true)?;
                Ok(Var::zeros(0, DType::F32, &Device::Cpu)?)
            }
        }
    }

    /// A buffer of `shape` and `dtype`, all zeros or (`ones`) all ones.
    pub fn buffer(&self, leaf: &str, shape: &[usize], dtype: DType, ones: bool) -> Result<()> {
        let name = self.name(leaf);
        match self.target {
            Target::Store(store) => {
                let make = if ones { Tensor::ones } else { Tensor::zeros };
                store.set_buffer(&name, make(shape, dtype, store.device())?)
            }
            Target::Listing(l) => l.add(name, shape, false),
        }
    }
}

/// The names and shapes of a network's parameters and buffers, listed without making them, and
/// refused as soon as they outgrow the memory this process may use (`lt_core::memory::total_mib`;
/// or `usize`).
pub(crate) struct Listing {
    params: RefCell<Vec<(String, Vec<usize>)>>,
    buffers: RefCell<Vec<(String, Vec<usize>)>>,
    elements: Cell<usize>,
    limit: Option<usize>,
}

impl Listing {
    pub fn new() -> Self {
        let limit = lt_core::memory::total_mib().map(|m| (m * (1u64 << 20) as f64) as usize);
        Self { params: RefCell::default(), buffers: RefCell::default(), elements: Cell::new(0), limit }
    }

    /// The parameters' and the buffers' names and shapes, in the order the network made them.
    pub fn into_parts(self) -> Shapes {
        Shapes { params: self.params.into_inner(), buffers: self.buffers.into_inner() }
    }

    fn add(&self, name: String, shape: &[usize], param: bool) -> Result<()> {
        let elements = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
        let total = elements.and_then(|n| n.checked_add(self.elements.get()));
        let too_large = |values, memory| ModelError::TooLarge {
            path: None,
            name: name.clone(),
            shape: shape.to_vec(),
            values,
            memory,
        };
        let Some((total, bytes)) = total.and_then(|t| Some((t, t.checked_mul(std::mem::size_of::<f32>())?)))
        else {
            return Err(too_large(None, None));
        };
        if let Some(limit) = self.limit.filter(|&limit| bytes > limit) {
            return Err(too_large(Some(total), Some(limit)));
        }
        self.elements.set(total);
        let list = if param { &self.params } else { &self.buffers };
        list.borrow_mut().push((name, shape.to_vec()));
        Ok(())
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
        // Saturating: a count too large for memory is refused by the parameter's check, not here.
        let fan = match init {
            ConvInit::FanIn => cin.saturating_mul(k * k),
            ConvInit::FanOut => cout.saturating_mul(k * k),
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
        b.buffer("running_mean", &[c], DType::F32, false)?;
        b.buffer("running_var", &[c], DType::F32, true)?;
        b.buffer("num_batches_tracked", &[], DType::I64, false)?;
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
