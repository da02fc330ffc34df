//! SGD with momentum, Nesterov and weight decay, with PyTorch's semantics.
//!
//! Per parameter `p` with gradient `g`: `g <- g + wd * p`; momentum buffer `buf <- g` on the
//! first step, then `buf <- mu * buf + g`; Nesterov: `g <- g + mu * buf`, else `g <- buf`;
//! `p <- p - lr * g`. Buffers are stored detached from any autograd graph.

use std::collections::BTreeMap;

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

/// SGD state: hyper-parameters and one momentum buffer per parameter name.
pub struct Sgd {
    /// Momentum `mu`.
    pub momentum: f64,
    /// Nesterov momentum.
    pub nesterov: bool,
    /// Weight decay.
    pub weight_decay: f64,
    buffers: BTreeMap<String, Tensor>,
}

impl Sgd {
    /// A fresh optimizer (no momentum yet).
    pub fn new(momentum: f64, nesterov: bool, weight_decay: f64) -> Self {
        Self { momentum, nesterov, weight_decay, buffers: BTreeMap::new() }
    }

    /// Applies one step with learning rate `lr` to every named parameter that has a gradient.
    pub fn step(&mut self, params: &[(String, Var)], grads: &GradStore, lr: f64) -> candle_core::Result<()> {
        for (name, var) in params {
            let Some(g) = grads.get(var.as_tensor()) else { continue };
            let p = var.as_detached_tensor();
            let mut g = g.detach();
            if self.weight_decay != 0.0 {
                g = (g + p.affine(self.weight_decay, 0.0)?)?;
            }
            if self.momentum != 0.0 {
                let buf = match self.buffers.remove(name) {
                    Some(b) => (b.affine(self.momentum, 0.0)? + &g)?,
                    None => g.clone(),
                }
                .detach();
                g = if self.nesterov { (g + buf.affine(self.momentum, 0.0)?)? } else { buf.clone() };
                self.buffers.insert(name.clone(), buf);
            }
            var.set(&(p - g.affine(lr, 0.0)?)?.detach())?;
        }
        Ok(())
    }

    /// The momentum buffers (for checkpoints).
    pub fn buffers(&self) -> &BTreeMap<String, Tensor> {
        &self.buffers
    }

    /// Restores momentum buffers from a checkpoint (shapes checked against `params`).
    pub fn set_buffers(
        &mut self,
        buffers: BTreeMap<String, Tensor>,
        params: &[(String, Var)],
    ) -> Result<(), String> {
        for (name, b) in &buffers {
            let var = params
                .iter()
                .find(|(n, _)| n == name)
                .ok_or_else(|| format!("momentum buffer for unknown parameter `{name}`"))?;
            if var.1.dims() != b.dims() {
                return Err(format!(
                    "momentum buffer `{name}` has shape {:?}, the parameter {:?}",
                    b.dims(),
                    var.1.dims()
                ));
            }
        }
        self.buffers = buffers;
        Ok(())
    }
}
