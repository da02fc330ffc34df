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

    /// Applies one step with learning rate `lr` to every named parameter.
    ///
    /// # Errors
    /// A parameter without a gradient in `grads` is an error (nothing is updated): a step must
    /// never leave part of a model untrained without a word. Pass only the parameters to train.
    pub fn step(&mut self, params: &[(String, Var)], grads: &GradStore, lr: f64) -> candle_core::Result<()> {
        if let Some((name, _)) = params.iter().find(|(_, v)| grads.get(v.as_tensor()).is_none()) {
            candle_core::bail!(
                "SGD step: parameter `{name}` has no gradient (is it part of the loss's graph?)"
            );
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn a_parameter_without_a_gradient_is_an_error_and_nothing_moves() {
        let a = Var::new(&[1f32, 2.0], &Device::Cpu).unwrap();
        let b = Var::new(&[3f32], &Device::Cpu).unwrap();
        let grads = a.as_tensor().sum_all().unwrap().backward().unwrap();
        let mut opt = Sgd::new(0.0, false, 0.0);
        let both = [("a".to_string(), a.clone()), ("b".to_string(), b.clone())];
        let err = opt.step(&both, &grads, 0.5).unwrap_err();
        assert!(err.to_string().contains("`b` has no gradient"), "{err}");
        assert_eq!(a.as_tensor().to_vec1::<f32>().unwrap(), [1.0, 2.0]);
        opt.step(&both[..1], &grads, 0.5).unwrap();
        // p - lr * 1
        assert_eq!(a.as_tensor().to_vec1::<f32>().unwrap(), [0.5, 1.5]);
    }
}
