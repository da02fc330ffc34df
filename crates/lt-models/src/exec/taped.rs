//! The taped executor: a program's training pass with the backward pass walked by hand.
//!
//! The forward pass is the eager one ([`Eager::node`], the same ops on any device) run without
//! candle's autograd, keeping the activations and whatever else each node's backward pass reads
//! (the [`Tape`]). The backward pass then walks the nodes in reverse and calls each op's explicit
//! backward pass ([`crate::ops`]; the same functions the ops' autograd nodes call).
//!
//! What that saves against candle's autograd, per training step:
//! - candle gives every input of every op its gradient by zero-filling a fresh tensor and adding
//!   the contribution to it: two kernels and two allocations per edge, about 190 edges in a
//!   ResNet-32. Here a gradient is handed on as it is, and summed only where two branches meet
//!   (the residual blocks' inputs). With at most two contributions per activation the sums are
//!   bit for bit candle's (`0 + a + b` is `a + b`).
//! - candle's graph holds every activation until the step ends. Here an activation the backward
//!   pass does not read ([`Program::read_backward`]: a batch norm's output without a ReLU, a
//!   shortcut's, which only a residual add reads) is dropped during the forward pass once read,
//!   and the others as soon as the backward pass is past the node that wrote them, as PyTorch
//!   frees its saved tensors. What stays from the forward pass is what PyTorch's in-place ReLUs
//!   and residual adds keep: for a ResNet-50, about a quarter less than every activation.
//! - In `bf16` a filter's cast is no node of its own: its gradient is cast back once.
//! - On CUDA, candle uploads the dims and strides of every strided copy (a filter's transpose, a
//!   narrowed or padded view) to the device before its kernel; during the passes here those small
//!   uploads are cached by content ([`super::uploads_cached`]) and made once per distinct layout.
//!
//! It runs where every op has an explicit backward pass ([`Backend::has_explicit_backward`]: the
//! fast backend's host and cuDNN routes), for [`crate::Model::train_step`]: by default on CUDA,
//! and wherever [`crate::Model::set_taped`] turns it on. The features become a leaf of candle's
//! graph for the head and the loss; their gradient from `loss.backward()` starts the walk, and
//! the parameters' gradients join the head's in the same `GradStore`.

use candle_core::{DType, Tensor};

use super::eager::{output, Eager, Saved};
use super::uploads_cached;
use crate::error::{ModelError, Result};
use crate::program::{Node, Op, Program, Slot};

/// A forward pass's activations (by slot) and what each node saved for its backward pass.
pub(crate) struct Tape {
    values: Vec<Option<Tensor>>,
    saved: Vec<Saved>,
}

impl Tape {
    /// The slots whose activations the tape holds.
    #[cfg(test)]
    pub fn held(&self) -> Vec<Slot> {
        (0..self.values.len()).filter(|&s| self.values[s].is_some()).collect()
    }
}

/// The taped executor: the eager executor's ops and settings, run without a graph.
pub(crate) struct Taped<'a> {
    /// Its `mode.graph` is ignored: the parameters are read as detached values.
    pub eager: Eager<'a>,
}

impl Taped<'_> {
    /// Runs `prog` forward on the NHWC input `x` (detached): the features `[N, C]`, `f32`, and
    /// the tape for [`Taped::backward`], which holds the activations the backward pass reads.
    pub fn forward(&self, prog: &Program, x: Tensor) -> Result<(Tensor, Tape)> {
        let _uploads = uploads_cached(x.device());
        let mut mode = self.eager.mode;
        mode.graph = false;
        mode.taped = true;
        let eager = Eager { mode, ..self.eager };
        let read_backward = prog.read_backward();
        let mut uses = prog.use_counts();
        let mut values: Vec<Option<Tensor>> = vec![None; prog.slots];
        // Contiguous once here: the first convolution reads it forward and backward.
        values[prog.input] = Some(x.detach().contiguous()?);
        let mut saved = Vec::with_capacity(prog.nodes.len());
        for node in &prog.nodes {
            let (y, s) = eager.node(node, &values)?;
            values[node.y] = Some(y);
            saved.push(s);
            for i in node.inputs() {
                uses[i] -= 1;
                if uses[i] == 0 && !read_backward[i] {
                    values[i] = None;
                }
            }
        }
        let features = output(values[prog.output].clone())?;
        Ok((features, Tape { values, saved }))
    }

    /// The parameters' gradients (`f32`, indexed like [`Program::params`]; `None` for one no
    /// gradient reached) from the gradient `dz` of the features [`Taped::forward`] returned.
    /// Each activation is dropped once the walk is past the node that wrote it.
    pub fn backward(&self, prog: &Program, tape: Tape, dz: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let _uploads = uploads_cached(dz.device());
        let Tape { mut values, saved } = tape;
        if saved.len() != prog.nodes.len() {
            return Err(ModelError::Invalid("the tape was recorded for another program".into()));
        }
        let out = values[prog.output].as_ref().ok_or_else(|| missing(prog.output))?;
        let mut grads: Vec<Option<Tensor>> = vec![None; prog.slots];
        grads[prog.output] = Some(dz.reshape(out.dims())?.to_dtype(out.dtype())?);
        let mut params: Vec<Option<Tensor>> = vec![None; prog.params.len()];
        for (node, saved) in prog.nodes.iter().zip(saved).rev() {
            // `None` where the forward pass dropped it (the backward pass does not read it).
            let y = values[node.y].take();
            // No gradient reaches this node's output: nothing flows back through it.
            let Some(dy) = grads[node.y].take() else { continue };
            let step = Step { prog, node, values: &values, y: y.as_ref(), dy: &dy };
            let run = || self.node_backward(step, saved, &mut params);
            for (slot, g) in crate::profile::time(node.op.backward_kind(), dy.device(), run)? {
                accumulate(&mut grads[slot], g)?;
            }
        }
        Ok(params)
    }

    /// One node's backward pass: the gradients of its input slots (none for the program's
    /// input), its parameters' gradients added to `params`.
    fn node_backward(
        &self,
        Step { prog, node, values, y, dy }: Step,
        saved: Saved,
        params: &mut [Option<Tensor>],
    ) -> Result<Vec<(Slot, Tensor)>> {
        let b = self.eager.backend;
        let x = || values[node.x].as_ref().ok_or_else(|| missing(node.x));
        let y = || y.ok_or_else(|| missing(node.y));
        let want_dx = node.x != prog.input;
        let mut param = |index: usize, g: Tensor| accumulate(&mut params[index], g.to_dtype(DType::F32)?);
        let dx = match (&node.op, saved) {
            (Op::Conv { w, stride, pad }, Saved::Filter(filter)) => {
                let (dx, dw) = b.conv2d_backward((x()?, &filter, dy), (*stride, *pad), want_dx)?;
                param(w.index, dw)?;
                dx
            }
            (Op::Conv { w, stride, pad }, Saved::Prepared(filter)) => {
                let (dx, dw) = b.conv2d_backward_prepared((x()?, &filter, dy), (*stride, *pad), want_dx)?;
                param(w.index, dw)?;
                dx
            }
            (Op::Bn(bn), saved) => {
                let gamma = bn.gamma.var.as_detached_tensor();
                // The output only for the ReLU's mask.
                let y = if bn.relu { Some(y()?) } else { None };
                let (xy, f) = ((x()?, y, dy), (bn.eps, bn.relu));
                let (dx, dg, db) = match saved {
                    Saved::Bn(Some(s)) => b.batch_norm_train_backward(&s, xy, &gamma, f, want_dx)?,
                    Saved::BnEval { mean, var } => {
                        b.batch_norm_eval_backward(xy, &gamma, (&mean, &var), f, want_dx)?
                    }
                    _ => return Err(mismatch(node)),
                };
                param(bn.gamma.index, dg)?;
                param(bn.beta.index, db)?;
                dx
            }
            (Op::AddRelu { other }, Saved::Nothing) => {
                let g = b.add_relu_backward(y()?, dy)?;
                let mut out = Vec::with_capacity(2);
                if *other != prog.input {
                    out.push((*other, g.clone()));
                }
                if want_dx {
                    out.push((node.x, g));
                }
                return Ok(out);
            }
            (Op::Shortcut { pad }, Saved::Nothing) if want_dx => {
                Some(b.shortcut_backward(x()?.dims(), dy, *pad)?)
            }
            (Op::MaxPool(win), Saved::Nothing) if want_dx => {
                Some(b.max_pool_backward((x()?, y()?, dy), *win)?)
            }
            (Op::AvgPool, Saved::Nothing) if want_dx => {
                let x = x()?;
                let dx = b.avg_pool_backward(x.dims(), &dy.to_dtype(DType::F32)?)?;
                Some(dx.to_dtype(x.dtype())?)
            }
            (Op::Shortcut { .. } | Op::MaxPool(_) | Op::AvgPool, Saved::Nothing) => None,
            _ => return Err(mismatch(node)),
        };
        Ok(dx.map(|g| vec![(node.x, g)]).unwrap_or_default())
    }
}

/// What one node's backward pass reads.
#[derive(Clone, Copy)]
struct Step<'a> {
    prog: &'a Program,
    node: &'a Node,
    values: &'a [Option<Tensor>],
    /// The node's output, where the forward pass kept it ([`Program::read_backward`]).
    y: Option<&'a Tensor>,
    /// Its gradient.
    dy: &'a Tensor,
}

/// Adds `g` to the gradient in `slot` (or puts it there).
fn accumulate(slot: &mut Option<Tensor>, g: Tensor) -> Result<()> {
    *slot = Some(match slot.take() {
        None => g,
        Some(sum) => (sum + g)?,
    });
    Ok(())
}

fn missing(slot: Slot) -> ModelError {
    ModelError::Invalid(format!("taped backward pass: slot {slot} has no value"))
}

fn mismatch(node: &Node) -> ModelError {
    ModelError::Invalid(format!(
        "taped backward pass: what the {} node saved does not match it",
        node.op.kind(true)
    ))
}
