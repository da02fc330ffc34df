//! A backbone as a program: the single description of a network.
//!
//! The networks ([`crate::cifar`], [`crate::torchvision`]) emit their layers once, as a list of
//! nodes (convolution, batch norm, residual add, shortcut, pooling) over activation slots. Two
//! executors run a program: [`crate::exec::eager`] with the [`crate::ops::Backend`] ops and candle's
//! autograd (any device; the reference, and the CUDA path), and [`crate::exec::fused`] as one
//! autograd node with its own backward pass (the CPU training path). A [`Plan`] gives every slot
//! its NHWC dims for one input size.

use candle_core::Var;

use crate::error::{ModelError, Result};
use crate::ops::conv::ConvShape;
use crate::ops::elementwise::{shortcut_dims, Nhwc, Window};

/// An activation slot.
pub(crate) type Slot = usize;

/// A parameter read by a node, with its index in [`Program::params`].
#[derive(Clone)]
pub(crate) struct Param {
    pub var: Var,
    pub index: usize,
}

/// A batch norm: its parameters, the prefix of its buffers and whether a ReLU follows.
pub(crate) struct BnSpec {
    pub gamma: Param,
    pub beta: Param,
    /// `{prefix}.running_mean`, `{prefix}.running_var`, `{prefix}.num_batches_tracked`.
    pub prefix: String,
    pub eps: f64,
    pub relu: bool,
}

/// What a node computes.
pub(crate) enum Op {
    /// Bias-free convolution with a `[C_out, C_in, k, k]` weight.
    Conv { w: Param, stride: usize, pad: usize },
    /// Batch norm (+ ReLU).
    Bn(BnSpec),
    /// `max(x + other, 0)`.
    AddRelu { other: Slot },
    /// Option-A shortcut with `pad` zero channels on each side.
    Shortcut { pad: usize },
    /// Max pooling.
    MaxPool(Window),
    /// Global average pooling.
    AvgPool,
}

impl Op {
    /// The kind an op's forward pass is timed under ([`crate::profile`]), in every executor.
    pub fn kind(&self, train: bool) -> &'static str {
        match self {
            Op::Conv { .. } => "conv",
            Op::Bn(_) if train => "batch norm (train)",
            Op::Bn(_) => "batch norm (eval)",
            Op::AddRelu { .. } => "add + relu",
            Op::Shortcut { .. } => "shortcut",
            Op::MaxPool(_) => "max pool",
            Op::AvgPool => "average pool",
        }
    }

    /// The kind an op's backward pass is timed under ([`crate::profile`]); the fused CPU pass
    /// times a convolution's two gradients separately.
    pub fn backward_kind(&self) -> &'static str {
        match self {
            Op::Conv { .. } => "conv backward",
            Op::Bn(_) => "batch norm backward",
            Op::AddRelu { .. } => "add + relu backward",
            Op::Shortcut { .. } => "shortcut backward",
            Op::MaxPool(_) => "max pool backward",
            Op::AvgPool => "average pool backward",
        }
    }

    /// Whether the op's explicit backward pass reads its input `x` (a residual add reads neither
    /// input: its ReLU's mask comes from its output). Shortcuts and average pooling read only
    /// its dims.
    pub fn backward_reads_input(&self) -> bool {
        !matches!(self, Op::AddRelu { .. })
    }

    /// Whether the op's explicit backward pass reads its output: a ReLU's mask (after a batch
    /// norm or a residual add) or max pooling's chosen positions.
    pub fn backward_reads_output(&self) -> bool {
        match self {
            Op::Bn(bn) => bn.relu,
            Op::AddRelu { .. } | Op::MaxPool(_) => true,
            Op::Conv { .. } | Op::Shortcut { .. } | Op::AvgPool => false,
        }
    }
}

/// One node: `y = op(x[, other])`.
pub(crate) struct Node {
    pub x: Slot,
    pub y: Slot,
    pub op: Op,
}

impl Node {
    /// The slots the node reads.
    pub fn inputs(&self) -> impl Iterator<Item = Slot> {
        let other = match self.op {
            Op::AddRelu { other } => Some(other),
            _ => None,
        };
        std::iter::once(self.x).chain(other)
    }
}

/// A network's feature extractor: nodes in execution order over `slots` slots, from slot
/// `input` (the NHWC image) to slot `output` (the pooled representation).
pub(crate) struct Program {
    pub nodes: Vec<Node>,
    pub slots: usize,
    pub input: Slot,
    pub output: Slot,
    /// Every parameter, in the order the nodes first read them.
    pub params: Vec<Var>,
}

/// Builds a [`Program`]; layers emit their nodes through it.
pub(crate) struct ProgramBuilder {
    nodes: Vec<Node>,
    slots: usize,
    params: Vec<Var>,
}

impl ProgramBuilder {
    /// An empty program and its input slot.
    pub fn new() -> (Self, Slot) {
        (Self { nodes: Vec::new(), slots: 1, params: Vec::new() }, 0)
    }

    fn param(&mut self, var: &Var) -> Param {
        let p = Param { var: var.clone(), index: self.params.len() };
        self.params.push(var.clone());
        p
    }

    fn push(&mut self, x: Slot, op: Op) -> Slot {
        let y = self.slots;
        self.slots += 1;
        self.nodes.push(Node { x, y, op });
        y
    }

    /// A convolution of slot `x`.
    pub fn conv(&mut self, x: Slot, w: &Var, stride: usize, pad: usize) -> Slot {
        let w = self.param(w);
        self.push(x, Op::Conv { w, stride, pad })
    }

    /// A batch norm of slot `x` (+ ReLU).
    pub fn bn(&mut self, x: Slot, (gamma, beta): (&Var, &Var), prefix: &str, eps: f64, relu: bool) -> Slot {
        let (gamma, beta) = (self.param(gamma), self.param(beta));
        self.push(x, Op::Bn(BnSpec { gamma, beta, prefix: prefix.to_string(), eps, relu }))
    }

    /// `max(a + b, 0)`.
    pub fn add_relu(&mut self, a: Slot, b: Slot) -> Slot {
        self.push(a, Op::AddRelu { other: b })
    }

    /// The option-A shortcut of slot `x`.
    pub fn shortcut(&mut self, x: Slot, pad: usize) -> Slot {
        self.push(x, Op::Shortcut { pad })
    }

    /// Max pooling of slot `x`.
    pub fn max_pool(&mut self, x: Slot, k: usize, stride: usize, pad: usize) -> Slot {
        self.push(x, Op::MaxPool(Window { k, stride, pad }))
    }

    /// Global average pooling of slot `x`.
    pub fn avg_pool(&mut self, x: Slot) -> Slot {
        self.push(x, Op::AvgPool)
    }

    /// The program computing slot `output`.
    pub fn finish(self, output: Slot) -> Program {
        let Self { nodes, slots, params } = self;
        Program { nodes, slots, input: 0, output, params }
    }
}

/// A program's geometry for one input size: the NHWC dims of every slot (the pooled output is
/// `[N, 1, 1, C]`) and the shape of every convolution.
pub(crate) struct Plan {
    pub input: Nhwc,
    pub dims: Vec<Nhwc>,
    pub convs: Vec<Option<ConvShape>>,
}

impl Program {
    /// How many nodes read each slot.
    pub fn use_counts(&self) -> Vec<usize> {
        let mut uses = vec![0usize; self.slots];
        for i in self.nodes.iter().flat_map(Node::inputs) {
            uses[i] += 1;
        }
        uses
    }

    /// Which slots the explicit backward passes ([`crate::exec::taped`]) read: every input of an
    /// op that reads its input, every output of an op that reads its output, and the program's
    /// output. The others (a batch norm's output without a ReLU, a shortcut's output: what only
    /// a residual add reads) can go as soon as the forward pass has read them. The fused CPU
    /// pass ([`crate::exec::fused`]) keeps these too; it reads a subset.
    pub fn read_backward(&self) -> Vec<bool> {
        let mut read = vec![false; self.slots];
        for node in &self.nodes {
            read[node.x] |= node.op.backward_reads_input();
            read[node.y] |= node.op.backward_reads_output();
        }
        read[self.output] = true;
        read
    }

    /// The geometry for NHWC input dims `input`; fails when a layer does not fit.
    pub fn plan(&self, input: Nhwc) -> Result<Plan> {
        let mut dims = vec![Nhwc { n: 0, h: 0, w: 0, c: 0 }; self.slots];
        dims[self.input] = input;
        let mut convs = Vec::with_capacity(self.nodes.len());
        for node in &self.nodes {
            let x = dims[node.x];
            let (y, conv) = node_dims(node, x, &dims)?;
            dims[node.y] = y;
            convs.push(conv);
        }
        Ok(Plan { input, dims, convs })
    }
}

fn misfit(what: String) -> ModelError {
    ModelError::Invalid(format!("the network does not fit its input: {what}"))
}

/// Output dims of `node` for input dims `x` (and the convolution shape of a convolution).
fn node_dims(node: &Node, x: Nhwc, dims: &[Nhwc]) -> Result<(Nhwc, Option<ConvShape>)> {
    Ok(match &node.op {
        Op::Conv { w, stride, pad } => {
            let &[cout, cin, k, k2] = w.var.dims() else {
                return Err(misfit(format!("weight {:?}", w.var.dims())));
            };
            let s = ConvShape { n: x.n, h: x.h, w: x.w, cin, cout, k, stride: *stride, pad: *pad };
            if cin != x.c || k != k2 || !s.fits() {
                return Err(misfit(format!("convolution {:?} over {x:?}", w.var.dims())));
            }
            (Nhwc { n: x.n, h: s.oh(), w: s.ow(), c: cout }, Some(s))
        }
        Op::Bn(bn) => {
            if bn.gamma.var.dims() != [x.c] {
                return Err(misfit(format!(
                    "batch norm {} of {:?} over {x:?}",
                    bn.prefix,
                    bn.gamma.var.dims()
                )));
            }
            (x, None)
        }
        Op::AddRelu { other } => {
            if dims[*other] != x {
                return Err(misfit(format!("residual add of {x:?} and {:?}", dims[*other])));
            }
            (x, None)
        }
        Op::Shortcut { pad } => {
            let (h, w, c) = shortcut_dims(x.h, x.w, x.c, *pad);
            (Nhwc { n: x.n, h, w, c }, None)
        }
        Op::MaxPool(win) => {
            (win.output(x).ok_or_else(|| misfit(format!("max pool {win:?} over {x:?}")))?, None)
        }
        Op::AvgPool => (Nhwc { h: 1, w: 1, ..x }, None),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Tensor};

    fn var(shape: &[usize]) -> Var {
        Var::from_tensor(&Tensor::zeros(shape, DType::F32, &Device::Cpu).unwrap()).unwrap()
    }

    #[test]
    fn plans_give_every_slot_its_dims() {
        let (mut b, x) = ProgramBuilder::new();
        let (w1, g, be, w2) = (var(&[8, 3, 3, 3]), var(&[8]), var(&[8]), var(&[16, 8, 3, 3]));
        let h = b.conv(x, &w1, 1, 1);
        let h = b.bn(h, (&g, &be), "bn", 1e-5, true);
        let p = b.max_pool(h, 3, 2, 1);
        let s = b.shortcut(p, 4);
        let c = b.conv(p, &w2, 2, 1);
        let y = b.add_relu(c, s);
        let out = b.avg_pool(y);
        let prog = b.finish(out);
        assert_eq!(prog.params.iter().map(|v| v.elem_count()).sum::<usize>(), 8 * 27 + 16 + 16 * 72);
        assert_eq!(prog.use_counts()[p], 2);
        // Read backward: the convolutions' and the batch norm's inputs, the ReLU's outputs
        // (batch norm's and the add's), max pooling's input and output, the pooled output; not
        // the shortcut's or the second convolution's outputs, which only the add reads.
        let read = prog.read_backward();
        let kept: Vec<Slot> = (0..prog.slots).filter(|&s| read[s]).collect();
        assert_eq!(kept, [x, 1, h, p, y, out], "slots read backward");
        assert!(!read[s] && !read[c]);
        // What only the outputs keep: a ReLU's (batch norm's, the add's) and max pooling's.
        for relu in [false, true] {
            let (mut b, x) = ProgramBuilder::new();
            let h = b.bn(x, (&g, &be), "bn", 1e-5, relu);
            let p = b.max_pool(x, 3, 2, 1);
            let y = b.add_relu(h, p);
            let out = b.avg_pool(y);
            let read = b.finish(out).read_backward();
            assert_eq!((read[h], read[p], read[y]), (relu, true, true), "relu {relu}");
        }
        let plan = prog.plan(Nhwc { n: 2, h: 9, w: 7, c: 3 }).unwrap();
        // max pool 3/2/1: (9 + 2 - 3) / 2 + 1 = 5, (7 + 2 - 3) / 2 + 1 = 4; conv 3/2/1 over 5x4: 3x2;
        // shortcut: ceil(5/2) x ceil(4/2) = 3x2 with 8 + 2 * 4 channels.
        let d = |s: Slot| plan.dims[s].dims();
        assert_eq!((d(p), d(s), d(c), d(out)), ([2, 5, 4, 8], [2, 3, 2, 16], [2, 3, 2, 16], [2, 1, 1, 16]));
        assert!(prog.plan(Nhwc { n: 2, h: 9, w: 7, c: 4 }).is_err(), "wrong channel count accepted");
    }
}
