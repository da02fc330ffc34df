//! The CIFAR ResNet family (He et al. 2016) with option-A shortcuts, as in the LDAM-DRW code.

use crate::arch::Family;
use crate::error::{ModelError, Result};
use crate::layers::{BatchNorm, Builder, Conv, ConvInit, Linear};
use crate::program::{ProgramBuilder, Slot};

struct BasicBlock {
    conv1: Conv,
    bn1: BatchNorm,
    conv2: Conv,
    bn2: BatchNorm,
    /// Channel padding (each side) of the option-A shortcut when the block downsamples.
    shortcut_pad: Option<usize>,
}

impl BasicBlock {
    fn new(b: &Builder, cin: usize, planes: usize, stride: usize) -> Result<Self> {
        let shortcut_pad = if stride != 1 || cin != planes {
            if !planes.is_multiple_of(4) || cin + 2 * (planes / 4) != planes {
                return Err(ModelError::Invalid(format!(
                    "option-A shortcut cannot map {cin} to {planes} channels (the width must be a multiple of 2)"
                )));
            }
            Some(planes / 4)
        } else {
            None
        };
        Ok(Self {
            conv1: Conv::new(&b.push("conv1"), cin, planes, 3, stride, 1, ConvInit::FanIn)?,
            bn1: BatchNorm::new(&b.push("bn1"), planes)?,
            conv2: Conv::new(&b.push("conv2"), planes, planes, 3, 1, 1, ConvInit::FanIn)?,
            bn2: BatchNorm::new(&b.push("bn2"), planes)?,
            shortcut_pad,
        })
    }

    fn emit(&self, p: &mut ProgramBuilder, x: Slot) -> Slot {
        // The shortcut first, so that it is ready when the second batch norm and the add run
        // as one pass.
        let sc = match self.shortcut_pad {
            Some(pad) => p.shortcut(x, pad),
            None => x,
        };
        let h = self.conv1.emit(p, x);
        let h = self.bn1.emit(p, h, true);
        let h = self.conv2.emit(p, h);
        let h = self.bn2.emit(p, h, false);
        p.add_relu(h, sc)
    }
}

/// CIFAR ResNet: `conv3x3 -> BN -> ReLU`, three stages of basic blocks (widths `w, 2w, 4w`,
/// strides 1, 2, 2), global average pooling, linear head.
pub(crate) struct CifarResNet {
    conv1: Conv,
    bn1: BatchNorm,
    blocks: Vec<BasicBlock>,
    pub linear: Linear,
}

impl CifarResNet {
    pub fn new(
        b: &Builder,
        depth: usize,
        width: usize,
        in_channels: usize,
        num_classes: usize,
    ) -> Result<Self> {
        let n = (depth - 2) / 6;
        let (stem, k) = Family::Cifar { depth, width }.stem();
        let conv1 = Conv::new(&b.push("conv1"), in_channels, stem, k, 1, k / 2, ConvInit::FanIn)?;
        let bn1 = BatchNorm::new(&b.push("bn1"), stem)?;
        let mut blocks = Vec::new();
        let mut cin = stem;
        for (stage, (planes, stride)) in [(width, 1), (2 * width, 2), (4 * width, 2)].into_iter().enumerate()
        {
            for i in 0..n {
                let s = if i == 0 { stride } else { 1 };
                blocks.push(BasicBlock::new(&b.push(format!("layer{}.{i}", stage + 1)), cin, planes, s)?);
                cin = planes;
            }
        }
        let linear = Linear::new(&b.push("linear"), 4 * width, num_classes, true)?;
        Ok(Self { conv1, bn1, blocks, linear })
    }

    /// Emits the nodes computing the pooled representation of slot `x`.
    pub fn emit(&self, p: &mut ProgramBuilder, x: Slot) -> Slot {
        let h = self.conv1.emit(p, x);
        let mut h = self.bn1.emit(p, h, true);
        for blk in &self.blocks {
            h = blk.emit(p, h);
        }
        p.avg_pool(h)
    }
}
