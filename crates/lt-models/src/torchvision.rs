//! torchvision's ResNet-18/34/50 (v1.5: the stride of a bottleneck sits on its 3x3 convolution),
//! with torchvision's parameter names.

use crate::arch::Family;
use crate::error::Result;
use crate::layers::{BatchNorm, Builder, Conv, ConvInit, Linear};
use crate::program::{ProgramBuilder, Slot};

struct Downsample {
    conv: Conv,
    bn: BatchNorm,
}

enum Block {
    Basic {
        conv1: Conv,
        bn1: BatchNorm,
        conv2: Conv,
        bn2: BatchNorm,
        down: Option<Downsample>,
    },
    Bottleneck {
        conv1: Conv,
        bn1: BatchNorm,
        conv2: Conv,
        bn2: BatchNorm,
        conv3: Conv,
        bn3: BatchNorm,
        down: Option<Downsample>,
    },
}

impl Block {
    fn new(b: &Builder, bottleneck: bool, cin: usize, planes: usize, stride: usize) -> Result<Self> {
        let expansion = if bottleneck { 4 } else { 1 };
        let out = planes * expansion;
        let down = if stride != 1 || cin != out {
            let d = b.push("downsample");
            Some(Downsample {
                conv: Conv::new(&d.push(0), cin, out, 1, stride, 0, ConvInit::FanOut)?,
                bn: BatchNorm::new(&d.push(1), out)?,
            })
        } else {
            None
        };
        let f = ConvInit::FanOut;
        Ok(if bottleneck {
            Block::Bottleneck {
                conv1: Conv::new(&b.push("conv1"), cin, planes, 1, 1, 0, f)?,
                bn1: BatchNorm::new(&b.push("bn1"), planes)?,
                conv2: Conv::new(&b.push("conv2"), planes, planes, 3, stride, 1, f)?,
                bn2: BatchNorm::new(&b.push("bn2"), planes)?,
                conv3: Conv::new(&b.push("conv3"), planes, out, 1, 1, 0, f)?,
                bn3: BatchNorm::new(&b.push("bn3"), out)?,
                down,
            }
        } else {
            Block::Basic {
                conv1: Conv::new(&b.push("conv1"), cin, planes, 3, stride, 1, f)?,
                bn1: BatchNorm::new(&b.push("bn1"), planes)?,
                conv2: Conv::new(&b.push("conv2"), planes, planes, 3, 1, 1, f)?,
                bn2: BatchNorm::new(&b.push("bn2"), planes)?,
                down,
            }
        })
    }

    fn emit(&self, p: &mut ProgramBuilder, x: Slot) -> Slot {
        let (out, down) = match self {
            Block::Basic { conv1, bn1, conv2, bn2, down } => {
                let h = conv1.emit(p, x);
                let h = bn1.emit(p, h, true);
                let h = conv2.emit(p, h);
                (bn2.emit(p, h, false), down)
            }
            Block::Bottleneck { conv1, bn1, conv2, bn2, conv3, bn3, down } => {
                let h = conv1.emit(p, x);
                let h = bn1.emit(p, h, true);
                let h = conv2.emit(p, h);
                let h = bn2.emit(p, h, true);
                let h = conv3.emit(p, h);
                (bn3.emit(p, h, false), down)
            }
        };
        let id = match down {
            Some(d) => {
                let h = d.conv.emit(p, x);
                d.bn.emit(p, h, false)
            }
            None => x,
        };
        p.add_relu(out, id)
    }
}

/// torchvision ResNet: 7x7/2 stem, 3x3/2 max pool, four stages, global average pooling, `fc`.
pub(crate) struct TvResNet {
    conv1: Conv,
    bn1: BatchNorm,
    layers: Vec<Block>,
    pub fc: Linear,
}

impl TvResNet {
    pub fn new(b: &Builder, depth: usize, in_channels: usize, num_classes: usize) -> Result<Self> {
        let (bottleneck, counts) = match depth {
            18 => (false, [2, 2, 2, 2]),
            34 => (false, [3, 4, 6, 3]),
            _ => (true, [3, 4, 6, 3]),
        };
        let expansion = if bottleneck { 4 } else { 1 };
        let (stem, k) = Family::Torchvision { depth }.stem();
        let conv1 = Conv::new(&b.push("conv1"), in_channels, stem, k, 2, k / 2, ConvInit::FanOut)?;
        let bn1 = BatchNorm::new(&b.push("bn1"), stem)?;
        let mut layers = Vec::new();
        let mut cin = stem;
        for (stage, (&n, planes)) in counts.iter().zip([64, 128, 256, 512]).enumerate() {
            for i in 0..n {
                let stride = if i == 0 && stage > 0 { 2 } else { 1 };
                layers.push(Block::new(
                    &b.push(format!("layer{}.{i}", stage + 1)),
                    bottleneck,
                    cin,
                    planes,
                    stride,
                )?);
                cin = planes * expansion;
            }
        }
        let fc = Linear::new(&b.push("fc"), 512 * expansion, num_classes, false)?;
        Ok(Self { conv1, bn1, layers, fc })
    }

    /// Emits the nodes computing the pooled representation of slot `x`.
    pub fn emit(&self, p: &mut ProgramBuilder, x: Slot) -> Slot {
        let h = self.conv1.emit(p, x);
        let h = self.bn1.emit(p, h, true);
        let mut h = p.max_pool(h, 3, 2, 1);
        for blk in &self.layers {
            h = blk.emit(p, h);
        }
        p.avg_pool(h)
    }
}
