//! The fused forward pass over pooled buffers.

use std::sync::Arc;

use candle_core::{Tensor, Var};

use super::PackCache;
use crate::error::{ModelError, Result};
use crate::exec::Mode;
use crate::ops::conv::ConvShape;
use crate::ops::{conv, elementwise, norm};
use crate::params::ParamStore;
use crate::pool::{Buf, Pool};
use crate::program::{BnSpec, Node, Op, Param, Plan, Program, Slot};

/// What a node saved for the backward pass.
pub(super) enum Saved {
    None,
    /// The statistics a batch norm used (batch statistics in training mode, running ones in
    /// eval mode).
    Bn {
        mean: Vec<f32>,
        invstd: Vec<f32>,
        batch_statistics: bool,
    },
    /// The input position of every max-pooling output.
    Argmax(Vec<u32>),
}

/// What the forward pass keeps for the backward pass.
pub(super) struct Tape {
    pub acts: Vec<Option<Buf>>,
    pub saved: Vec<Saved>,
}

/// Host copy of a parameter (`f32`, CPU).
pub(super) fn host(v: &Var) -> Result<Vec<f32>> {
    Ok(v.as_detached_tensor().flatten_all()?.to_vec1::<f32>()?)
}

/// Runs `f` on a parameter's values: borrowed where it is a contiguous `f32` CPU tensor (no
/// copy of a large weight), a host copy otherwise.
pub(super) fn with_host<T>(v: &Var, f: impl FnOnce(&[f32]) -> T) -> Result<T> {
    let t = v.as_tensor();
    {
        let (storage, layout) = t.storage_and_layout();
        if let (candle_core::Storage::Cpu(cs), Some((start, end))) = (&*storage, layout.contiguous_offsets())
        {
            if let Ok(values) = cs.as_slice::<f32>() {
                return Ok(f(&values[start..end]));
            }
        }
    }
    Ok(f(&host(v)?))
}

fn host_buffer(store: &ParamStore, name: String) -> Result<Vec<f32>> {
    let t = store.buffer(&name).ok_or(ModelError::MissingBuffer(name))?;
    Ok(t.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?)
}

/// Eval-mode batch norm from the running statistics: its affine map and the statistics.
struct EvalBn {
    scale: Vec<f32>,
    shift: Vec<f32>,
    mean: Vec<f32>,
    var: Vec<f32>,
}

impl EvalBn {
    fn of(bn: &BnSpec, store: &ParamStore) -> Result<EvalBn> {
        let (g, b) = (host(&bn.gamma.var)?, host(&bn.beta.var)?);
        let mean = host_buffer(store, format!("{}.running_mean", bn.prefix))?;
        let var = host_buffer(store, format!("{}.running_var", bn.prefix))?;
        let (scale, shift) = norm::eval_scale_shift(&g, &b, &mean, &var, bn.eps);
        Ok(EvalBn { scale, shift, mean, var })
    }
}

/// An activation that must have been computed.
pub(super) fn act(acts: &[Option<Buf>], s: Slot) -> Result<&[f32]> {
    acts[s].as_deref().ok_or_else(|| ModelError::Invalid(format!("activation {s} is not available")))
}

/// Runs the forward pass from the NHWC input; returns the output slot's values and, with
/// `mode.graph`, the tape. Without a tape every buffer returns to the pool after its last use.
pub(super) fn run(
    prog: &Program,
    plan: &Plan,
    input: Buf,
    store: &ParamStore,
    pool: &Arc<Pool>,
    packs: &PackCache,
    mode: Mode,
) -> Result<(Vec<f32>, Option<Tape>)> {
    let mut acts: Vec<Option<Buf>> = (0..prog.slots).map(|_| None).collect();
    acts[prog.input] = Some(input);
    let mut uses = prog.use_counts();
    // What the backward pass reads: of these the fused one needs the convolutions' and batch
    // norms' inputs and the ReLUs' outputs (max pooling's positions it saves on the side).
    let keep = prog.read_backward();
    let mut saved = Vec::with_capacity(prog.nodes.len());
    let mut moments = None;
    let mut i = 0;
    while i < prog.nodes.len() {
        let fold = if mode.train || mode.graph { None } else { eval_fold(prog, i, &uses, &acts) };
        let (y, nodes) = match &fold {
            Some(f) => {
                let mut out = pool.take(plan.dims[f.y].len());
                let shape = plan.convs[i]
                    .as_ref()
                    .ok_or_else(|| ModelError::Invalid("convolution without a shape".into()))?;
                let step = || fold_forward(f, shape, &acts, &mut out, store, packs);
                crate::profile::time("conv + batch norm (folded)", &candle_core::Device::Cpu, step)?;
                acts[f.y] = Some(out);
                (f.y, f.nodes)
            }
            None => {
                let ctx = (prog, plan, store, pool);
                let (y, nodes, node_saved) = node_step(ctx, i, (&uses, &mut acts), &mut moments, mode)?;
                saved.push(node_saved);
                (y, nodes)
            }
        };
        // Folded nodes save nothing (there is no backward pass without a graph).
        saved.resize_with(i + nodes, || Saved::None);
        for node in &prog.nodes[i..i + nodes] {
            for s in node.inputs() {
                uses[s] -= 1;
                if uses[s] == 0 && (!mode.graph || !keep[s]) && s != prog.output && s != y {
                    acts[s] = None;
                }
            }
        }
        i += nodes;
    }
    let features = act(&acts, prog.output)?.to_vec();
    Ok((features, mode.graph.then_some(Tape { acts, saved })))
}

/// Runs node `i`, not folded (with the residual add after it when a batch norm takes that in,
/// see [`residual_add`]), into a pooled buffer; returns the slot written, the nodes run and what
/// the node saved. `moments` carries a convolution's output moments to the batch norm after it.
fn node_step(
    (prog, plan, store, pool): (&Program, &Plan, &ParamStore, &Arc<Pool>),
    i: usize,
    (uses, acts): (&[usize], &mut [Option<Buf>]),
    moments: &mut Option<(Slot, norm::Moments)>,
    mode: Mode,
) -> Result<(Slot, usize, Saved)> {
    let node = &prog.nodes[i];
    // A batch norm and the residual add after it write the add's output in one pass.
    let (y, nodes, then, kind) = match (&node.op, residual_add(prog, i, uses, acts)) {
        (Op::Bn(_), Some((residual, y))) => {
            let kind =
                if mode.train { "batch norm + add + relu (train)" } else { "batch norm + add + relu (eval)" };
            (y, 2, Some(residual), kind)
        }
        _ => (node.y, 1, None, node.op.kind(mode.train)),
    };
    let mut out = pool.take(plan.dims[y].len());
    // A training-mode convolution whose output a batch norm reads next summarises it for that
    // batch norm as it writes it.
    let next_reads_y = |n: &Node| matches!(n.op, Op::Bn(_)) && n.x == node.y;
    let summarise = mode.train && prog.nodes.get(i + 1).is_some_and(next_reads_y);
    let step = || -> Result<Saved> {
        let residual = then.map(|r| act(acts, r)).transpose()?;
        let mut carry = Carry { residual, moments: moments.take(), summarise };
        let shape = plan.convs[i].as_ref();
        let saved = node_forward(node, shape, plan, acts, &mut carry, &mut out, store, mode)?;
        *moments = carry.moments;
        Ok(saved)
    };
    let saved = crate::profile::time(kind, &candle_core::Device::Cpu, step)?;
    acts[y] = Some(out);
    Ok((y, nodes, saved))
}

/// A convolution, the batch norm that alone reads its output and, when that batch norm has no
/// ReLU and alone feeds a residual add whose other input is ready, that add: in eval mode they
/// run as one convolution with the batch norm folded into its weights and bias (see
/// [`conv::Fuse`]).
struct Fold<'a> {
    x: Slot,
    w: &'a Param,
    bn: &'a BnSpec,
    /// The residual add's other input.
    residual: Option<Slot>,
    /// Where the result goes: the batch norm's output, or the add's.
    y: Slot,
    /// Nodes folded: 2 or 3.
    nodes: usize,
}

/// The fold starting at node `i`, if there is one (see [`Fold`]).
fn eval_fold<'a>(prog: &'a Program, i: usize, uses: &[usize], acts: &[Option<Buf>]) -> Option<Fold<'a>> {
    let conv = &prog.nodes[i];
    let Op::Conv { w, .. } = &conv.op else { return None };
    let bn_node = prog.nodes.get(i + 1)?;
    let Op::Bn(bn) = &bn_node.op else { return None };
    if bn_node.x != conv.y || uses[conv.y] != 1 || conv.y == prog.output {
        return None;
    }
    let mut f = Fold { x: conv.x, w, bn, residual: None, y: bn_node.y, nodes: 2 };
    if let Some((residual, y)) = residual_add(prog, i + 1, uses, acts) {
        (f.residual, f.y, f.nodes) = (Some(residual), y, 3);
    }
    Some(f)
}

/// When node `i` is a batch norm without ReLU whose output only the residual add after it
/// reads, and that add's other input is ready: the other input and the add's output slot.
fn residual_add(prog: &Program, i: usize, uses: &[usize], acts: &[Option<Buf>]) -> Option<(Slot, Slot)> {
    let bn_node = prog.nodes.get(i)?;
    let (Op::Bn(bn), Some(Node { x, y, op: Op::AddRelu { other } })) = (&bn_node.op, prog.nodes.get(i + 1))
    else {
        return None;
    };
    let residual = if *x == bn_node.y { *other } else { *x };
    let reads_bn = *x == bn_node.y || *other == bn_node.y;
    let ready = residual != bn_node.y && acts[residual].is_some();
    (!bn.relu && uses[bn_node.y] == 1 && reads_bn && ready && bn_node.y != prog.output)
        .then_some((residual, *y))
}

/// Runs a [`Fold`]: `max(conv(x, w * scale) + shift [+ residual], 0)` with eval batch norm's
/// `scale` and `shift` (ReLU when the batch norm has one or an add is folded).
fn fold_forward(
    f: &Fold,
    shape: &ConvShape,
    acts: &[Option<Buf>],
    out: &mut [f32],
    store: &ParamStore,
    packs: &PackCache,
) -> Result<()> {
    let EvalBn { scale, shift, .. } = EvalBn::of(f.bn, store)?;
    let residual = f.residual.map(|r| act(acts, r)).transpose()?;
    let fuse =
        conv::Fuse { scale: None, bias: Some(&shift), residual, relu: f.bn.relu || residual.is_some() };
    let x = act(acts, f.x)?;
    let packed = with_host(&f.w.var, |w| packs.get(f.w.index, w, shape, &scale))??;
    conv::forward_packed(x, &packed, shape, &fuse, out);
    Ok(())
}

/// What a node hands the next one, or takes from the one before.
struct Carry<'a> {
    /// The residual add folded into a batch norm (see [`residual_add`]).
    residual: Option<&'a [f32]>,
    /// The moments of a slot (a convolution's output), for the batch norm that reads it.
    moments: Option<(Slot, norm::Moments)>,
    /// Whether a convolution should summarise its output into `moments`.
    summarise: bool,
}

/// Runs one node.
#[allow(clippy::too_many_arguments)]
fn node_forward(
    node: &Node,
    shape: Option<&ConvShape>,
    plan: &Plan,
    acts: &[Option<Buf>],
    carry: &mut Carry,
    out: &mut [f32],
    store: &ParamStore,
    mode: Mode,
) -> Result<Saved> {
    let x = act(acts, node.x)?;
    let dims = plan.dims[node.x];
    match &node.op {
        Op::Conv { w, .. } => {
            let shape = shape.ok_or_else(|| ModelError::Invalid("convolution without a shape".into()))?;
            if carry.summarise {
                let m = with_host(&w.var, |w| conv::forward_with_moments(x, w, shape, out))?;
                carry.moments = Some((node.y, m));
            } else {
                with_host(&w.var, |w| conv::forward(x, w, shape, out))?;
            }
        }
        Op::Bn(bn) => {
            let then = match carry.residual {
                Some(r) => norm::Then::AddRelu(r),
                None => norm::Then::relu_if(bn.relu),
            };
            let moments = carry.moments.take().filter(|(s, _)| *s == node.x).map(|(_, m)| m);
            return batch_norm(x, bn, (dims.c, dims.w), (moments.as_ref(), then), out, store, mode);
        }
        Op::AddRelu { other } => elementwise::add_relu(x, act(acts, *other)?, out),
        Op::Shortcut { pad } => elementwise::shortcut_forward(x, dims, *pad, out),
        Op::MaxPool(win) if mode.graph => {
            let mut argmax = vec![0u32; out.len()];
            elementwise::max_pool_forward(x, dims, *win, out, &mut argmax);
            return Ok(Saved::Argmax(argmax));
        }
        Op::MaxPool(win) => elementwise::max_pool_values(x, dims, *win, out),
        Op::AvgPool => elementwise::avg_pool_forward(x, dims.n, dims.h * dims.w, dims.c, out),
    }
    Ok(Saved::None)
}

fn batch_norm(
    x: &[f32],
    bn: &BnSpec,
    (c, width): (usize, usize),
    (moments, then): (Option<&norm::Moments>, norm::Then),
    out: &mut [f32],
    store: &ParamStore,
    mode: Mode,
) -> Result<Saved> {
    if mode.train {
        let (g, b) = (host(&bn.gamma.var)?, host(&bn.beta.var)?);
        let stats = norm::forward_train(x, (c, width), (&g, &b), bn.eps, (moments, then), out);
        let dev = store.device();
        let var: Vec<f32> = stats.var.iter().map(|&v| v as f32).collect();
        let (mean_t, var_t) = (Tensor::new(stats.mean.as_slice(), dev)?, Tensor::new(var.as_slice(), dev)?);
        store.update_bn(&bn.prefix, &mean_t, &var_t, x.len() / c)?;
        Ok(if mode.graph {
            Saved::Bn { mean: stats.mean, invstd: stats.invstd, batch_statistics: true }
        } else {
            Saved::None
        })
    } else {
        let EvalBn { scale, shift, mean: rm, var: rv } = EvalBn::of(bn, store)?;
        norm::apply(x, c, (&scale, &shift), then, out);
        if !mode.graph {
            return Ok(Saved::None);
        }
        let invstd = rv.iter().map(|&v| norm::invstd(v as f64, bn.eps)).collect();
        Ok(Saved::Bn { mean: rm, invstd, batch_statistics: false })
    }
}
