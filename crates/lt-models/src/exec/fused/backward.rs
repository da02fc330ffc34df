//! The fused backward pass: from the output gradient to every parameter's gradient.

use std::sync::Arc;

use candle_core::Device;

use super::forward::{act, host, with_host, Saved, Tape};
use crate::error::{ModelError, Result};
use crate::ops::conv::ConvShape;
use crate::ops::{conv, elementwise, norm};
use crate::pool::{Buf, Pool};
use crate::program::{BnSpec, Node, Op, Param, Plan, Program, Slot};

/// Gradient buffers: several slots may share one buffer (a residual add's two inputs receive the
/// same gradient).
struct Grads {
    slot: Vec<Option<usize>>,
    bufs: Vec<Option<Buf>>,
}

impl Grads {
    fn set(&mut self, s: Slot, buf: Buf) {
        self.bufs.push(Some(buf));
        self.slot[s] = Some(self.bufs.len() - 1);
    }

    /// The gradient buffer of slot `s`, when it has one.
    fn get_mut(&mut self, s: Slot) -> Option<&mut Buf> {
        self.slot[s].and_then(move |b| self.bufs[b].as_mut())
    }

    /// Writes the gradient of slot `s` with `write(dst, accumulate)`: added into the gradient
    /// it has (`accumulate` true), or into a new buffer of `len` from `pool` that becomes it.
    fn write(&mut self, s: Slot, len: usize, pool: &Arc<Pool>, write: impl FnOnce(&mut [f32], bool)) {
        match self.get_mut(s) {
            Some(acc) => write(acc, true),
            None => {
                let mut buf = pool.take(len);
                write(&mut buf, false);
                self.set(s, buf);
            }
        }
    }

    /// Adds `buf` to the gradient of slot `s`, or makes it that gradient.
    fn add_or_set(&mut self, s: Slot, buf: Buf) {
        match self.get_mut(s) {
            Some(acc) => acc.iter_mut().zip(buf.iter()).for_each(|(a, b)| *a += b),
            None => self.set(s, buf),
        }
    }
}

/// What every node's backward step reads.
struct Step<'a> {
    plan: &'a Plan,
    acts: &'a [Option<Buf>],
    pool: &'a Arc<Pool>,
    /// The program's input slot (the image: no gradient).
    input: Slot,
}

/// The gradient of every parameter of a program ([`Program::params`] order), `None` until a
/// node gives it one.
type ParamGrads = Vec<Option<Vec<f32>>>;

/// Makes `g` the gradient of parameter `p`, or adds it to the one it has (a parameter read by
/// several nodes).
fn add_param(grads: &mut ParamGrads, p: &Param, g: Vec<f32>) {
    match &mut grads[p.index] {
        Some(acc) => acc.iter_mut().zip(&g).for_each(|(a, b)| *a += b),
        slot => *slot = Some(g),
    }
}

/// Runs the backward pass from the gradient of the output slot; returns the gradient of every
/// parameter (see [`Program::params`]), each allocated as its node's step runs (zeros for a
/// parameter no node gave one).
pub(super) fn run(
    prog: &Program,
    plan: &Plan,
    mut tape: Tape,
    d_out: &[f32],
    pool: &Arc<Pool>,
) -> Result<Vec<Vec<f32>>> {
    let mut g = Grads { slot: vec![None; prog.slots], bufs: Vec::new() };
    let mut first = pool.take(d_out.len());
    first.copy_from_slice(d_out);
    g.set(prog.output, first);
    let mut params: ParamGrads = vec![None; prog.params.len()];
    for (ni, node) in prog.nodes.iter().enumerate().rev() {
        let Some(bi) = g.slot[node.y] else { continue };
        if node.inputs().any(|i| g.slot[i] == Some(bi)) {
            return Err(ModelError::Invalid(format!(
                "node {ni} reads a slot that shares its output's gradient"
            )));
        }
        // The output gradient is taken out of the store for the step (the step writes other
        // slots' gradients) and put back if another slot still shares it.
        let dy = g.bufs[bi].take().ok_or_else(|| ModelError::Invalid(format!("gradient {bi} is gone")))?;
        let saved = std::mem::replace(&mut tape.saved[ni], Saved::None);
        let step = Step { plan, acts: &tape.acts, pool, input: prog.input };
        let run = || step.node(node, plan.convs[ni].as_ref(), saved, &dy, &mut g, &mut params);
        match backward_kind(&node.op) {
            // A convolution times its two gradients itself.
            None => run()?,
            Some(kind) => crate::profile::time(kind, &Device::Cpu, run)?,
        }
        g.slot[node.y] = None;
        if g.slot.contains(&Some(bi)) {
            g.bufs[bi] = Some(dy);
        }
        tape.acts[node.y] = None;
    }
    Ok(params
        .into_iter()
        .zip(&prog.params)
        .map(|(g, v)| g.unwrap_or_else(|| vec![0.0; v.elem_count()]))
        .collect())
}

/// The op kind a backward node is timed under; `None` for a convolution, which times its weight
/// and input gradients separately.
fn backward_kind(op: &Op) -> Option<&'static str> {
    match op {
        Op::Conv { .. } => None,
        op => Some(op.backward_kind()),
    }
}

impl Step<'_> {
    fn node(
        &self,
        node: &Node,
        shape: Option<&ConvShape>,
        saved: Saved,
        dy: &[f32],
        g: &mut Grads,
        params: &mut ParamGrads,
    ) -> Result<()> {
        let dims = self.plan.dims[node.x];
        match &node.op {
            Op::AvgPool => {
                let mut dx = self.pool.take(dims.len());
                elementwise::avg_pool_backward(dy, dims.n, dims.h * dims.w, dims.c, &mut dx);
                g.add_or_set(node.x, dx);
            }
            Op::AddRelu { other } => self.add_relu(node, *other, dy, g)?,
            // Added where the shortcut read (a quarter of the pixels), not as a whole pass.
            Op::Shortcut { pad } => g.write(node.x, dims.len(), self.pool, |dx, acc| {
                if acc {
                    elementwise::shortcut_backward_acc(dy, dims, *pad, dx)
                } else {
                    elementwise::shortcut_backward(dy, dims, *pad, dx)
                }
            }),
            Op::Bn(bn) => self.batch_norm(node, bn, saved, dy, g, params)?,
            Op::Conv { w, .. } => {
                let shape = shape.ok_or_else(|| ModelError::Invalid("convolution without a shape".into()))?;
                self.conv(node, w, shape, dy, g, params)?;
            }
            Op::MaxPool(_) => {
                let Saved::Argmax(argmax) = saved else {
                    return Err(ModelError::Invalid("max pool without its argmax".into()));
                };
                let mut dx = self.pool.take(dims.len());
                let out_per_image = self.plan.dims[node.y].len() / dims.n;
                elementwise::max_pool_backward(
                    dy,
                    &argmax,
                    dims.n,
                    dims.len() / dims.n,
                    out_per_image,
                    &mut dx,
                );
                g.add_or_set(node.x, dx);
            }
        }
        Ok(())
    }

    /// `d(max(a + b, 0)) = dy * (y > 0)` for both inputs: one buffer shared by both when neither
    /// has a gradient yet.
    fn add_relu(&self, node: &Node, other: Slot, dy: &[f32], g: &mut Grads) -> Result<()> {
        let mut m = self.pool.take(dy.len());
        elementwise::relu_backward(act(self.acts, node.y)?, dy, &mut m);
        if node.x == other {
            return Err(ModelError::Invalid("a residual add of a slot with itself".into()));
        }
        if g.slot[node.x].is_none() && g.slot[other].is_none() {
            g.set(node.x, m);
            g.slot[other] = g.slot[node.x];
        } else {
            let mut copy = self.pool.take(m.len());
            copy.copy_from_slice(&m);
            g.add_or_set(node.x, m);
            g.add_or_set(other, copy);
        }
        Ok(())
    }

    fn batch_norm(
        &self,
        node: &Node,
        bn: &BnSpec,
        saved: Saved,
        dy: &[f32],
        g: &mut Grads,
        params: &mut ParamGrads,
    ) -> Result<()> {
        let Saved::Bn { mean, invstd, batch_statistics } = saved else {
            return Err(ModelError::Invalid(format!("batch norm {} without its statistics", bn.prefix)));
        };
        let x = act(self.acts, node.x)?;
        let gamma = host(&bn.gamma.var)?;
        // With batch statistics, the forward's affine map is rebuilt exactly from what it was
        // made of (the statistics saved, the parameters not yet stepped), and the ReLU's mask
        // recomputed from `x` without reading the output; with running statistics (frozen batch
        // norm) the mask is read from the output.
        let affine = if bn.relu && batch_statistics {
            Some(norm::train_scale_shift(&gamma, &host(&bn.beta.var)?, &mean, &invstd))
        } else {
            None
        };
        let relu = match &affine {
            Some((scale, shift)) => norm::Relu::Affine(scale, shift),
            None if bn.relu => norm::Relu::Output(act(self.acts, node.y)?),
            None => norm::Relu::None,
        };
        let b = norm::BnBackward { x, relu, gamma: &gamma, mean: &mean, invstd: &invstd, batch_statistics };
        let mut dx = self.pool.take(x.len());
        let (dg, db) = b.run(dy, Some(&mut dx));
        g.add_or_set(node.x, dx);
        add_param(params, &bn.gamma, dg);
        add_param(params, &bn.beta, db);
        Ok(())
    }

    fn conv(
        &self,
        node: &Node,
        w: &Param,
        shape: &ConvShape,
        dy: &[f32],
        g: &mut Grads,
        params: &mut ParamGrads,
    ) -> Result<()> {
        let x = act(self.acts, node.x)?;
        if conv::fuses_gradients(shape) && node.x != self.input {
            // Both gradients in one pass over `dy` (see `conv::pointwise_backward_both`).
            return crate::profile::time("conv backward (weight + input, pointwise)", &Device::Cpu, || {
                let mut dw = vec![0f32; shape.weight_len()];
                with_host(&w.var, |wv| {
                    g.write(node.x, shape.input_len(), self.pool, |dx, acc| {
                        conv::pointwise_backward_both(x, dy, wv, shape, &mut dw, dx, acc)
                    })
                })?;
                add_param(params, w, dw);
                Ok(())
            });
        }
        crate::profile::time("conv backward (weight)", &Device::Cpu, || -> Result<()> {
            let mut dw = vec![0f32; shape.weight_len()];
            conv::backward_weight(x, dy, shape, &mut dw);
            add_param(params, w, dw);
            Ok(())
        })?;
        if node.x == self.input {
            return Ok(());
        }
        let kind = if shape.stride == 1 { "conv backward (input)" } else { "conv backward (input, strided)" };
        crate::profile::time(kind, &Device::Cpu, || {
            with_host(&w.var, |wv| {
                g.write(node.x, shape.input_len(), self.pool, |dx, acc| {
                    if acc {
                        conv::backward_input_acc(dy, wv, shape, dx)
                    } else {
                        conv::backward_input(dy, wv, shape, dx)
                    }
                })
            })
        })
    }
}
