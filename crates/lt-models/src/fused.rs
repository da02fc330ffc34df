//! The fused execution path: a whole backbone as one autograd node.
//!
//! Per-op custom ops (see [`crate::ops`]) leave candle's autograd to glue ~5 nodes per residual
//! block, and candle accumulates every node's input gradient by zero-filling a fresh tensor and
//! adding to it. For training, the backbone instead compiles to a [`Program`] (a list of
//! convolution / batch-norm / residual / pooling nodes over activation slots) that this module
//! runs forward and backward itself: buffers come from a [`Pool`] and are reused every step,
//! a ReLU's gradient mask is fused into the op that consumes it, an input gradient is
//! accumulated in place by the convolution kernels, and nothing is allocated for a gradient
//! that nobody needs (the input image's).
//!
//! To candle, the pass is a single custom op anchored on one parameter; the gradients of all
//! the other parameters are returned through [`TrainPass::backward`], which runs candle's
//! backward and adds them to the [`GradStore`].

use std::sync::{Arc, Mutex};

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, CustomOp1, Device, Layout, Shape, Storage, Tensor, TensorId, Var};

use crate::error::{ModelError, Result};
use crate::ops::conv::{self, ConvShape};
use crate::ops::{elementwise, norm};
use crate::params::ParamStore;
use crate::pool::{Buf, Pool};

type CResult<T> = candle_core::Result<T>;

/// One node of a program.
pub(crate) enum Node {
    Conv { x: usize, y: usize, w: Var, shape: ConvShape },
    Bn { x: usize, y: usize, gamma: Var, beta: Var, relu: bool, prefix: String, eps: f64 },
    AddRelu { a: usize, b: usize, y: usize },
    Shortcut { x: usize, y: usize, pad: usize },
    MaxPool { x: usize, y: usize, k: usize, s: usize, p: usize },
    AvgPool { x: usize, y: usize },
}

impl Node {
    fn inputs(&self) -> Vec<usize> {
        match self {
            Node::Conv { x, .. }
            | Node::Bn { x, .. }
            | Node::Shortcut { x, .. }
            | Node::MaxPool { x, .. }
            | Node::AvgPool { x, .. } => vec![*x],
            Node::AddRelu { a, b, .. } => vec![*a, *b],
        }
    }
    fn output(&self) -> usize {
        match self {
            Node::Conv { y, .. }
            | Node::Bn { y, .. }
            | Node::Shortcut { y, .. }
            | Node::MaxPool { y, .. }
            | Node::AvgPool { y, .. }
            | Node::AddRelu { y, .. } => *y,
        }
    }
}

/// A backbone compiled for one input size: nodes over NHWC activation slots.
pub(crate) struct Program {
    pub nodes: Vec<Node>,
    /// NHWC dims of every slot (the pooled output is `[N, 1, 1, C]`).
    pub dims: Vec<[usize; 4]>,
    pub input: usize,
    pub output: usize,
}

/// Builds a [`Program`]; layers emit their nodes through it.
pub(crate) struct ProgramBuilder {
    nodes: Vec<Node>,
    dims: Vec<[usize; 4]>,
}

impl ProgramBuilder {
    pub fn new(input: [usize; 4]) -> (Self, usize) {
        (Self { nodes: Vec::new(), dims: vec![input] }, 0)
    }

    fn slot(&mut self, d: [usize; 4]) -> usize {
        self.dims.push(d);
        self.dims.len() - 1
    }

    pub fn conv(&mut self, x: usize, w: &Var, stride: usize, pad: usize) -> usize {
        let [n, h, wd, cin] = self.dims[x];
        let (cout, k) = (w.dims()[0], w.dims()[2]);
        let shape = ConvShape { n, h, w: wd, cin, cout, k, stride, pad };
        let y = self.slot([n, shape.oh(), shape.ow(), cout]);
        self.nodes.push(Node::Conv { x, y, w: w.clone(), shape });
        y
    }

    pub fn bn(&mut self, x: usize, gamma: &Var, beta: &Var, relu: bool, prefix: &str, eps: f64) -> usize {
        let y = self.slot(self.dims[x]);
        self.nodes.push(Node::Bn {
            x,
            y,
            gamma: gamma.clone(),
            beta: beta.clone(),
            relu,
            prefix: prefix.to_string(),
            eps,
        });
        y
    }

    pub fn add_relu(&mut self, a: usize, b: usize) -> usize {
        let y = self.slot(self.dims[a]);
        self.nodes.push(Node::AddRelu { a, b, y });
        y
    }

    pub fn shortcut(&mut self, x: usize, pad: usize) -> usize {
        let [n, h, w, c] = self.dims[x];
        let y = self.slot([n, h.div_ceil(2), w.div_ceil(2), c + 2 * pad]);
        self.nodes.push(Node::Shortcut { x, y, pad });
        y
    }

    pub fn max_pool(&mut self, x: usize, k: usize, s: usize, p: usize) -> usize {
        let [n, h, w, c] = self.dims[x];
        let y = self.slot([n, (h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1, c]);
        self.nodes.push(Node::MaxPool { x, y, k, s, p });
        y
    }

    pub fn avg_pool(&mut self, x: usize) -> usize {
        let [n, _, _, c] = self.dims[x];
        let y = self.slot([n, 1, 1, c]);
        self.nodes.push(Node::AvgPool { x, y });
        y
    }

    pub fn finish(self, input: usize, output: usize) -> Program {
        Program { nodes: self.nodes, dims: self.dims, input, output }
    }
}

fn numel(d: [usize; 4]) -> usize {
    d.iter().product()
}

/// Host copy of a parameter (`f32`, CPU).
fn host(v: &Var) -> CResult<Vec<f32>> {
    v.as_detached_tensor().flatten_all()?.to_vec1::<f32>()
}

/// What the forward pass keeps for the backward pass.
struct Tape {
    acts: Vec<Option<Buf>>,
    bn: Vec<Option<(Vec<f32>, Vec<f32>)>>,
    argmax: Vec<Option<Vec<u32>>>,
}

/// Runs the forward pass. `train`: batch-norm batch statistics (running statistics updated in
/// `store`) and a tape for the backward pass; otherwise running statistics and buffers freed as
/// soon as they are consumed.
fn forward(
    prog: &Program,
    x_nhwc: Buf,
    train: bool,
    store: &ParamStore,
    pool: &Arc<Pool>,
) -> Result<(Vec<f32>, Option<Tape>)> {
    let nslots = prog.dims.len();
    let mut acts: Vec<Option<Buf>> = (0..nslots).map(|_| None).collect();
    acts[prog.input] = Some(x_nhwc);
    // Remaining forward uses of each slot, and whether the backward pass needs it.
    let mut uses = vec![0usize; nslots];
    let mut keep = vec![false; nslots];
    for n in &prog.nodes {
        for i in n.inputs() {
            uses[i] += 1;
        }
        match n {
            Node::Conv { x, .. } | Node::Bn { x, .. } => keep[*x] = true,
            _ => {}
        }
        match n {
            Node::Bn { y, relu: true, .. } | Node::AddRelu { y, .. } => keep[*y] = true,
            _ => {}
        }
    }
    let mut bn_saved: Vec<Option<(Vec<f32>, Vec<f32>)>> = (0..prog.nodes.len()).map(|_| None).collect();
    let mut argmax: Vec<Option<Vec<u32>>> = (0..prog.nodes.len()).map(|_| None).collect();
    for (ni, node) in prog.nodes.iter().enumerate() {
        let out_len = numel(prog.dims[node.output()]);
        let mut out = pool.take(out_len);
        {
            let get = |s: usize| -> &[f32] { acts[s].as_deref().expect("slot computed before use") };
            match node {
                Node::Conv { x, w, shape, .. } => conv::forward(get(*x), &host(w)?, shape, &mut out),
                Node::Bn { x, gamma, beta, relu, prefix, eps, .. } => {
                    let c = prog.dims[*x][3];
                    let (g, b) = (host(gamma)?, host(beta)?);
                    if train {
                        let (mean, invstd, var) =
                            norm::forward_train(get(*x), c, &g, &b, *eps, *relu, &mut out);
                        let count = out_len / c;
                        let dev = store.device();
                        store.update_bn(
                            prefix,
                            &Tensor::new(mean.as_slice(), dev)?,
                            &Tensor::new(var.iter().map(|&v| v as f32).collect::<Vec<_>>().as_slice(), dev)?,
                            count,
                        )?;
                        bn_saved[ni] = Some((mean, invstd));
                    } else {
                        let rm = host_buffer(store, &format!("{prefix}.running_mean"))?;
                        let rv = host_buffer(store, &format!("{prefix}.running_var"))?;
                        let scale: Vec<f32> =
                            (0..c).map(|k| g[k] / ((rv[k] as f64 + eps).sqrt() as f32)).collect();
                        let shift: Vec<f32> = (0..c).map(|k| b[k] - rm[k] * scale[k]).collect();
                        norm::affine(get(*x), c, &scale, &shift, *relu, &mut out);
                    }
                }
                Node::AddRelu { a, b, .. } => elementwise::add_relu(get(*a), get(*b), &mut out),
                Node::Shortcut { x, pad, .. } => {
                    let [n, h, w, c] = prog.dims[*x];
                    elementwise::shortcut_forward(get(*x), n, h, w, c, *pad, &mut out);
                }
                Node::MaxPool { x, k, s, p, .. } => {
                    let [n, h, w, c] = prog.dims[*x];
                    let mut am = vec![0u32; out_len];
                    elementwise::max_pool_forward(get(*x), n, h, w, c, *k, *s, *p, &mut out, &mut am);
                    if train {
                        argmax[ni] = Some(am);
                    }
                }
                Node::AvgPool { x, .. } => {
                    let [n, h, w, c] = prog.dims[*x];
                    elementwise::avg_pool_forward(get(*x), n, h * w, c, &mut out);
                }
            }
        }
        acts[node.output()] = Some(out);
        for i in node.inputs() {
            uses[i] -= 1;
            if uses[i] == 0 && (!train || !keep[i]) && i != prog.output {
                acts[i] = None;
            }
        }
    }
    let features = acts[prog.output].as_deref().expect("output computed").to_vec();
    let tape = train.then_some(Tape { acts, bn: bn_saved, argmax });
    Ok((features, tape))
}

fn host_buffer(store: &ParamStore, name: &str) -> CResult<Vec<f32>> {
    store
        .buffer(name)
        .ok_or_else(|| candle_core::Error::Msg(format!("missing buffer {name}")))?
        .to_dtype(candle_core::DType::F32)?
        .to_vec1::<f32>()
}

/// Gradient buffers of the backward pass: several slots may share one buffer (a residual
/// add's two inputs receive the same gradient).
struct Grads {
    slot: Vec<Option<usize>>,
    bufs: Vec<Option<Buf>>,
}

impl Grads {
    fn get(&self, s: usize) -> Option<&[f32]> {
        self.slot[s].and_then(|b| self.bufs[b].as_deref())
    }
    fn set(&mut self, s: usize, buf: Buf) {
        self.bufs.push(Some(buf));
        self.slot[s] = Some(self.bufs.len() - 1);
    }
    fn alias(&mut self, s: usize, from: usize) {
        self.slot[s] = self.slot[from];
    }
    fn take_mut(&mut self, s: usize) -> Option<&mut Buf> {
        self.slot[s].and_then(move |b| self.bufs[b].as_mut())
    }
}

/// Runs the backward pass from the gradient of the output slot; returns `(parameter, gradient)`
/// pairs. `needs_input` says whether the input slot's gradient is wanted.
fn backward(
    prog: &Program,
    mut tape: Tape,
    d_out: &[f32],
    pool: &Arc<Pool>,
    needs_input: bool,
) -> Result<Vec<(Var, Vec<f32>)>> {
    let nslots = prog.dims.len();
    let mut g = Grads { slot: vec![None; nslots], bufs: Vec::new() };
    let mut first = pool.take(d_out.len());
    first.copy_from_slice(d_out);
    g.set(prog.output, first);
    let mut params = Vec::new();
    let act = |tape: &Tape, s: usize| -> CResult<*const [f32]> {
        tape.acts[s].as_deref().map(|a| a as *const [f32]).ok_or_else(|| {
            candle_core::Error::Msg(format!("activation {s} was not kept for the backward pass"))
        })
    };
    for (ni, node) in prog.nodes.iter().enumerate().rev() {
        let y = node.output();
        let Some(dy) = g.get(y).map(|d| d as *const [f32]) else { continue };
        // SAFETY: the gradient and activation buffers read through these pointers are not
        // written during this node's step (writes go to other slots' buffers, see below).
        let dy: &[f32] = unsafe { &*dy };
        match node {
            Node::AvgPool { x, .. } => {
                let [n, h, w, c] = prog.dims[*x];
                let mut dx = pool.take(n * h * w * c);
                elementwise::avg_pool_backward(dy, n, h * w, c, &mut dx);
                g.set(*x, dx);
            }
            Node::AddRelu { a, b, .. } => {
                // SAFETY: the output activation is only read.
                let out = unsafe { &*act(&tape, y)? };
                let mut m = pool.take(dy.len());
                elementwise::relu_backward(out, dy, &mut m);
                g.set(*a, m);
                g.alias(*b, *a);
            }
            Node::Shortcut { x, pad, .. } => {
                let [n, h, w, c] = prog.dims[*x];
                match g.take_mut(*x) {
                    Some(acc) => {
                        let mut tmp = pool.take(n * h * w * c);
                        elementwise::shortcut_backward(dy, n, h, w, c, *pad, &mut tmp);
                        for (a, t) in acc.iter_mut().zip(tmp.iter()) {
                            *a += t;
                        }
                    }
                    None => {
                        let mut dx = pool.take(n * h * w * c);
                        elementwise::shortcut_backward(dy, n, h, w, c, *pad, &mut dx);
                        g.set(*x, dx);
                    }
                }
            }
            Node::Bn { x, gamma, beta, relu, .. } => {
                let c = prog.dims[*x][3];
                let (mean, invstd) = tape.bn[ni].take().expect("batch statistics saved");
                // SAFETY: activations are only read.
                let xv = unsafe { &*act(&tape, *x)? };
                let yv = if *relu { Some(unsafe { &*act(&tape, y)? }) } else { None };
                let gv = host(gamma)?;
                let mut dx = pool.take(xv.len());
                let (dg, db) = norm::backward_train(xv, yv, dy, c, &gv, &mean, &invstd, Some(&mut dx));
                g.set(*x, dx);
                params.push((gamma.clone(), dg));
                params.push((beta.clone(), db));
            }
            Node::Conv { x, w, shape, .. } => {
                // SAFETY: the input activation is only read.
                let xv = unsafe { &*act(&tape, *x)? };
                let wv = host(w)?;
                let mut dw = vec![0f32; shape.weight_len()];
                conv::backward_weight(xv, dy, shape, &mut dw);
                params.push((w.clone(), dw));
                if *x != prog.input || needs_input {
                    match g.take_mut(*x) {
                        Some(acc) => conv::backward_input_acc(dy, &wv, shape, acc),
                        None => {
                            let mut dx = pool.take(shape.input_len());
                            conv::backward_input(dy, &wv, shape, &mut dx);
                            g.set(*x, dx);
                        }
                    }
                }
            }
            Node::MaxPool { x, .. } => {
                let [n, h, w, c] = prog.dims[*x];
                let am = tape.argmax[ni].take().expect("argmax saved");
                let mut dx = pool.take(n * h * w * c);
                let out_per = numel(prog.dims[y]) / n;
                elementwise::max_pool_backward(dy, &am, n, h * w * c, out_per, &mut dx);
                g.set(*x, dx);
            }
        }
        // The output's gradient and activation are no longer needed; a gradient buffer shared
        // with another slot (a residual add's other input) stays until that slot is done.
        if let Some(b) = g.slot[y].take() {
            if !g.slot.contains(&Some(b)) {
                g.bufs[b] = None;
            }
        }
        tape.acts[y] = None;
    }
    Ok(params)
}

/// A program with the pool its buffers come from.
pub(crate) struct Executor {
    pub program: Program,
    pub pool: Arc<Pool>,
}

impl Executor {
    fn input_buffer(&self, x: &Tensor) -> Result<Buf> {
        let nhwc = x.permute((0, 2, 3, 1))?.contiguous()?;
        let mut b = self.pool.take(nhwc.elem_count());
        let (st, l) = nhwc.storage_and_layout();
        match &*st {
            Storage::Cpu(cs) => {
                let (a, e) = l.contiguous_offsets().expect("contiguous");
                b.copy_from_slice(&cs.as_slice::<f32>()?[a..e]);
            }
            _ => return Err(ModelError::Invalid("the fused path runs on the CPU".into())),
        }
        Ok(b)
    }

    /// Eval-mode features `[N, D]` (no graph).
    pub fn infer(&self, x: &Tensor, store: &ParamStore) -> Result<Tensor> {
        let input = self.input_buffer(x)?;
        let (f, _) = forward(&self.program, input, false, store, &self.pool)?;
        let [n, _, _, c] = self.program.dims[self.program.output];
        Ok(Tensor::from_vec(f, (n, c), &Device::Cpu)?)
    }

    /// Training-mode features with the autograd hook (see [`TrainPass`]); `train` selects the
    /// batch-norm mode.
    pub fn train_features(
        self: &Arc<Self>,
        x: &Tensor,
        anchor: &Var,
        store: &ParamStore,
        train: bool,
    ) -> Result<(Tensor, SideGrads)> {
        let input = self.input_buffer(x)?;
        if !train {
            return Err(ModelError::Invalid(
                "the fused backward pass needs batch statistics (train = true)".into(),
            ));
        }
        let (features, tape) = forward(&self.program, input, true, store, &self.pool)?;
        let [n, _, _, c] = self.program.dims[self.program.output];
        let side: SideGrads = Arc::new(Mutex::new(Vec::new()));
        let op = FusedOp {
            exec: self.clone(),
            features: Mutex::new(Some(features)),
            tape: Mutex::new(tape),
            side: side.clone(),
            anchor: anchor.as_tensor().id(),
            shape: (n, c),
        };
        let out = anchor.as_tensor().apply_op1(op)?;
        Ok((out, side))
    }
}

/// Parameter gradients computed by the fused backward pass, keyed by tensor id.
pub(crate) type SideGrads = Arc<Mutex<Vec<(TensorId, Tensor)>>>;

struct FusedOp {
    exec: Arc<Executor>,
    features: Mutex<Option<Vec<f32>>>,
    tape: Mutex<Option<Tape>>,
    side: SideGrads,
    anchor: TensorId,
    shape: (usize, usize),
}

impl CustomOp1 for FusedOp {
    fn name(&self) -> &'static str {
        "lt-fused-backbone"
    }
    fn cpu_fwd(&self, _s: &CpuStorage, _l: &Layout) -> CResult<(CpuStorage, Shape)> {
        let f = self
            .features
            .lock()
            .expect("features lock")
            .take()
            .ok_or_else(|| candle_core::Error::Msg("fused forward ran twice".into()))?;
        Ok((CpuStorage::F32(f), Shape::from(self.shape)))
    }
    fn bwd(&self, anchor: &Tensor, _res: &Tensor, grad: &Tensor) -> CResult<Option<Tensor>> {
        let tape = self.tape.lock().expect("tape lock").take().ok_or_else(|| {
            candle_core::Error::Msg("the fused backward pass can run only once per forward pass".into())
        })?;
        let d = grad.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let params = backward(&self.exec.program, tape, &d, &self.exec.pool, false)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let mut anchor_grad = None;
        let mut side = self.side.lock().expect("side lock");
        for (var, g) in params {
            let t = Tensor::from_vec(g, var.dims(), &Device::Cpu)?;
            if var.as_tensor().id() == self.anchor {
                anchor_grad = Some(t);
            } else {
                side.push((var.as_tensor().id(), t));
            }
        }
        debug_assert_eq!(anchor.id(), self.anchor);
        Ok(anchor_grad)
    }
}

/// A training forward pass whose backward pass goes through [`TrainPass::backward`].
pub struct TrainPass {
    /// Logits `[N, classes]` (part of candle's graph).
    pub logits: Tensor,
    /// Pooled features `[N, D]`.
    pub features: Tensor,
    pub(crate) side: Option<SideGrads>,
}

impl TrainPass {
    /// Runs the backward pass of `loss` (built from [`TrainPass::logits`]) and returns the
    /// gradients of every parameter, including those the fused backbone computed itself.
    pub fn backward(&self, loss: &Tensor) -> Result<GradStore> {
        let mut grads = loss.backward()?;
        if let Some(side) = &self.side {
            for (id, g) in side.lock().expect("side lock").drain(..) {
                grads.insert_id(id, g);
            }
        }
        Ok(grads)
    }
}
