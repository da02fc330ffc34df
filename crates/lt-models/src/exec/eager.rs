//! The eager executor: runs a program node by node with the [`Backend`] ops, on tensors, with
//! candle's autograd. It serves every device and both backends: the reference of the fused CPU
//! pass, the stock-candle baseline and the CUDA path (cuDNN through [`Backend::Fast`]), in `f32`
//! or mixed `bf16` ([`Precision`]).

use candle_core::{DType, Tensor, Var};

use super::Mode;
use crate::error::{ModelError, Result};
use crate::ops::Backend;
use crate::params::{fold_running, ParamStore};
use crate::precision::Precision;
use crate::program::{BnSpec, Node, Op, Program};

/// What an eager run needs besides the program and its input.
pub(crate) struct Eager<'a> {
    pub backend: Backend,
    pub store: &'a ParamStore,
    pub mode: Mode,
    /// The activations' type; convolution filters are cast to it, batch norm keeps `f32`
    /// parameters, and pooling and the program's output are `f32`.
    pub precision: Precision,
}

impl Eager<'_> {
    /// A parameter as a graph node (`graph`) or a detached value.
    fn param(&self, v: &Var) -> Tensor {
        if self.mode.graph {
            v.as_tensor().clone()
        } else {
            v.as_detached_tensor()
        }
    }

    /// A convolution filter in the activations' type: a cast that is a node of the graph (its
    /// gradient reaches the `f32` parameter) where the precision is not `f32`.
    fn filter(&self, v: &Var) -> Result<Tensor> {
        Ok(self.param(v).to_dtype(self.precision.activation_dtype())?)
    }

    /// Runs `prog` on the NHWC input `x` (of the precision's activation type); returns the
    /// pooled representation `[N, C]`, `f32`. Every activation is dropped after its last use (the
    /// graph keeps what the backward pass needs).
    pub fn run(&self, prog: &Program, x: Tensor) -> Result<Tensor> {
        let mut uses = prog.use_counts();
        let mut slots: Vec<Option<Tensor>> = vec![None; prog.slots];
        slots[prog.input] = Some(x);
        for node in &prog.nodes {
            let y = self.node(node, &slots)?;
            slots[node.y] = Some(y);
            for i in node.inputs() {
                uses[i] -= 1;
                if uses[i] == 0 && i != prog.output {
                    slots[i] = None;
                }
            }
        }
        let out = slots[prog.output]
            .take()
            .ok_or_else(|| ModelError::Invalid("the program has no output".into()))?;
        // Global average pooling already yields [N, C]; a program ending elsewhere is flattened.
        let out = if out.rank() == 2 { out } else { out.flatten_from(1)? };
        Ok(out.to_dtype(DType::F32)?)
    }

    fn node(&self, node: &Node, slots: &[Option<Tensor>]) -> Result<Tensor> {
        let get = |s: usize| {
            slots[s]
                .as_ref()
                .ok_or_else(|| ModelError::Invalid(format!("slot {s} read before it was computed")))
        };
        let x = get(node.x)?;
        let b = self.backend;
        let run = || -> Result<Tensor> {
            Ok(match &node.op {
                Op::Conv { w, stride, pad } => b.conv2d(x, &self.filter(&w.var)?, *stride, *pad)?,
                Op::Bn(bn) => self.batch_norm(x, bn)?,
                Op::AddRelu { other } => b.add_relu(x, get(*other)?)?,
                Op::Shortcut { pad } => b.shortcut_a(x, *pad)?,
                Op::MaxPool(win) => b.max_pool(x, win.k, win.stride, win.pad)?,
                // In f32: the mean of many bf16 values, and the features the head takes.
                Op::AvgPool => b.avg_pool(&x.to_dtype(DType::F32)?)?,
            })
        };
        crate::profile::time(node.op.kind(self.mode.train), x.device(), run)
    }

    fn batch_norm(&self, x: &Tensor, bn: &BnSpec) -> Result<Tensor> {
        let (g, b) = (self.param(&bn.gamma.var), self.param(&bn.beta.var));
        let buffer = |leaf: &str| {
            let name = format!("{}.{leaf}", bn.prefix);
            self.store.buffer(&name).ok_or(ModelError::MissingBuffer(name))
        };
        if self.mode.train && self.backend.folds_running_statistics(x) {
            // cuDNN folds the batch into the running statistics in its batch-norm call.
            let (mean, var) = (buffer("running_mean")?, buffer("running_var")?);
            let c = x.dim(candle_core::D::Minus1)?;
            let momentum = self.store.bn_momentum(&bn.prefix, x.elem_count() / c.max(1));
            let running = (&mean, &var, momentum);
            let (y, mean, var) =
                match self.backend.batch_norm_train_running(x, (&g, &b), (bn.eps, bn.relu), running) {
                    Ok(r) => r,
                    // Refused (warned once; later calls do not ask): the batch statistics, and the
                    // update with candle's kernels, with this batch's weight.
                    Err(_) => {
                        let (y, s) = self.backend.batch_norm_train(x, &g, &b, bn.eps, bn.relu)?;
                        let (mean, var) = fold_running((&mean, &var), (&s.mean, &s.var, s.count), momentum)?;
                        (y, mean, var)
                    }
                };
            self.store.set_running(&bn.prefix, mean, var)?;
            Ok(y)
        } else if self.mode.train {
            let (y, stats) = self.backend.batch_norm_train(x, &g, &b, bn.eps, bn.relu)?;
            self.store.update_bn(&bn.prefix, &stats.mean, &stats.var, stats.count)?;
            Ok(y)
        } else {
            let (mean, var) = (buffer("running_mean")?, buffer("running_var")?);
            Ok(self.backend.batch_norm_eval(x, (&g, &b), (&mean, &var), bn.eps, bn.relu)?)
        }
    }
}
