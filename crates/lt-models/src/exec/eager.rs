//! The eager executor: runs a program node by node with the [`Backend`] ops, on tensors, with
//! candle's autograd. It serves every device and both backends: the reference of the fused CPU
//! pass, the stock-candle baseline and the CUDA path (cuDNN through [`Backend::Fast`]), in `f32`
//! or mixed `bf16` ([`Precision`]).

use candle_core::{DType, Tensor, Var};

use super::Mode;
use crate::error::{ModelError, Result};
use crate::exec::fused::PackCache;
use crate::ops::{Backend, BnSaved};
use crate::params::{fold_running, ParamStore};
use crate::precision::Precision;
use crate::program::{BnSpec, Node, Op, Param, Program};

/// What an eager run needs besides the program and its input.
pub(crate) struct Eager<'a> {
    pub backend: Backend,
    pub store: &'a ParamStore,
    pub mode: Mode,
    /// The activations' type; convolution filters are cast to it, batch norm keeps `f32`
    /// parameters, and pooling and the program's output are `f32`.
    pub precision: Precision,
    /// Evaluation's cache: a frozen model's prepared filters ([`PackCache::prepared`]).
    pub packs: &'a PackCache,
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
        let _uploads = super::uploads_cached(x.device());
        let mut uses = prog.use_counts();
        let mut slots: Vec<Option<Tensor>> = vec![None; prog.slots];
        slots[prog.input] = Some(x);
        for node in &prog.nodes {
            let (y, _) = self.node(node, &slots)?;
            slots[node.y] = Some(y);
            for i in node.inputs() {
                uses[i] -= 1;
                if uses[i] == 0 && i != prog.output {
                    slots[i] = None;
                }
            }
        }
        output(slots[prog.output].take())
    }

    /// Runs one node on the computed `slots`: its output, and what its explicit backward pass
    /// needs besides the slots ([`Saved`], for [`crate::exec::taped`]).
    pub fn node(&self, node: &Node, slots: &[Option<Tensor>]) -> Result<(Tensor, Saved)> {
        let get = |s: usize| {
            slots[s]
                .as_ref()
                .ok_or_else(|| ModelError::Invalid(format!("slot {s} read before it was computed")))
        };
        let x = get(node.x)?;
        let b = self.backend;
        let run = || -> Result<(Tensor, Saved)> {
            Ok(match &node.op {
                Op::Conv { w, stride, pad } => {
                    if let Some(y) = self.prepared_conv(x, w, (*stride, *pad))? {
                        return Ok((y, Saved::Nothing));
                    }
                    let w = self.filter(&w.var)?;
                    // Without a graph (the taped executor), a filter cuDNN takes channels-last is
                    // transposed once, and kept for the backward pass.
                    if !self.mode.graph {
                        if let Some(prepared) = b.prepared_filter(&w)? {
                            let backward = self.mode.taped;
                            if let Some(y) = b.conv2d_prepared(x, &prepared, (*stride, *pad), backward)? {
                                return Ok((y, Saved::Prepared(prepared)));
                            }
                        }
                    }
                    (b.conv2d(x, &w, *stride, *pad)?, Saved::Filter(w))
                }
                Op::Bn(bn) => self.batch_norm(x, bn)?,
                Op::AddRelu { other } => (b.add_relu(x, get(*other)?)?, Saved::Nothing),
                Op::Shortcut { pad } => (b.shortcut_a(x, *pad)?, Saved::Nothing),
                Op::MaxPool(win) => (b.max_pool(x, win.k, win.stride, win.pad)?, Saved::Nothing),
                // In f32: the mean of many bf16 values, and the features the head takes.
                Op::AvgPool => (b.avg_pool(&x.to_dtype(DType::F32)?)?, Saved::Nothing),
            })
        };
        crate::profile::time(node.op.kind(self.mode.train), x.device(), run)
    }

    /// The convolution with the frozen model's prepared filter, without a graph (evaluation of a
    /// [`crate::Frozen`] model on CUDA); `None` for anything else. A model that trains has no
    /// frozen cache, so its passes never come here.
    fn prepared_conv(&self, x: &Tensor, w: &Param, (stride, pad): (usize, usize)) -> Result<Option<Tensor>> {
        if self.mode.graph {
            return Ok(None);
        }
        let b = self.backend;
        match self.packs.prepared(w.index, || Ok(b.prepared_filter(&self.filter(&w.var)?)?))? {
            Some(filter) => Ok(b.conv2d_prepared(x, &filter, (stride, pad), false)?),
            None => Ok(None),
        }
    }

    fn batch_norm(&self, x: &Tensor, bn: &BnSpec) -> Result<(Tensor, Saved)> {
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
            let affine = (&g, &b);
            let (y, (mean, var), saved) =
                match self.backend.batch_norm_train_running(x, affine, (bn.eps, bn.relu), running) {
                    Ok((y, new, saved)) => (y, new, Some(saved)),
                    // Refused (warned once; later calls do not ask) or out of memory (warned, the
                    // pool's kept memory released, asked again next time): the batch statistics,
                    // and the update with candle's kernels, with this batch's weight.
                    Err(_) => {
                        let (y, s, saved) =
                            self.backend.batch_norm_train_saved(x, affine, (bn.eps, bn.relu))?;
                        (y, fold_running((&mean, &var), (&s.mean, &s.var, s.count), momentum)?, saved)
                    }
                };
            self.store.set_running(&bn.prefix, mean, var)?;
            Ok((y, Saved::Bn(saved)))
        } else if self.mode.train {
            let (y, stats, saved) = self.backend.batch_norm_train_saved(x, (&g, &b), (bn.eps, bn.relu))?;
            self.store.update_bn(&bn.prefix, &stats.mean, &stats.var, stats.count)?;
            Ok((y, Saved::Bn(saved)))
        } else {
            let (mean, var) = (buffer("running_mean")?, buffer("running_var")?);
            let y = self.backend.batch_norm_eval(x, (&g, &b), (&mean, &var), bn.eps, bn.relu)?;
            Ok((y, Saved::BnEval { mean, var }))
        }
    }
}

/// A program's features from its output slot: `[N, C]` (global average pooling yields that; a
/// program ending elsewhere is flattened), `f32`.
pub(crate) fn output(out: Option<Tensor>) -> Result<Tensor> {
    let out = out.ok_or_else(|| ModelError::Invalid("the program has no output".into()))?;
    let out = if out.rank() == 2 { out } else { out.flatten_from(1)? };
    Ok(out.to_dtype(DType::F32)?)
}

/// What a node's explicit backward pass ([`crate::exec::taped`]) needs besides the activations:
/// the filter in the type it ran in, or a batch norm's statistics.
pub(crate) enum Saved {
    /// Nothing beyond the activations.
    Nothing,
    /// A convolution's filter, cast to the activations' type.
    Filter(Tensor),
    /// A convolution's filter as [`crate::ops::Backend::prepared_filter`] gave it (cuDNN's
    /// channels-last layout), in the activations' type.
    Prepared(Tensor),
    /// A training-mode batch norm's batch statistics (`None` on the stock route).
    Bn(Option<BnSaved>),
    /// The running statistics an eval-mode batch norm normalised with.
    BnEval { mean: Tensor, var: Tensor },
}
