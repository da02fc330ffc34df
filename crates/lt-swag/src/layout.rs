//! Flattening a model's parameters in sorted-name order.

use candle_core::{Tensor, Var};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};

use crate::error::{Result, SwagError};

/// Names ending with these are batch-norm statistics, never tracked.
const BUFFER_SUFFIXES: [&str; 3] = ["running_mean", "running_var", "num_batches_tracked"];

/// The parameters SWAG tracks: names (sorted), shapes and offsets in the flat vector.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParamLayout {
    /// Parameter names, sorted.
    pub names: Vec<String>,
    /// Shapes, in name order.
    pub shapes: Vec<Vec<usize>>,
}

impl ParamLayout {
    /// The floating-point parameters of `varmap`, except batch-norm running statistics: names
    /// ending in `running_mean`, `running_var` or `num_batches_tracked` (PyTorch's). A model that
    /// keeps other buffers in its `VarMap` under other names filters them out with
    /// [`ParamLayout::of_filtered`].
    pub fn of(varmap: &VarMap) -> Result<Self> {
        Ok(Self::of_filtered(varmap, |_| true))
    }

    /// The parameters of `varmap` whose names pass `keep` (batch-norm statistics always excluded).
    pub fn of_filtered(varmap: &VarMap, keep: impl Fn(&str) -> bool) -> Self {
        let map = varmap.data().lock().expect("varmap lock");
        let mut entries: Vec<(String, Vec<usize>)> = map
            .iter()
            .filter(|(n, v)| {
                v.dtype().is_float() && keep(n) && !BUFFER_SUFFIXES.iter().any(|s| n.ends_with(s))
            })
            .map(|(n, v)| (n.clone(), v.dims().to_vec()))
            .collect();
        entries.sort();
        let (names, shapes) = entries.into_iter().unzip();
        Self { names, shapes }
    }

    /// Number of tracked scalars.
    pub fn len(&self) -> usize {
        self.shapes.iter().map(|s| s.iter().product::<usize>()).sum()
    }

    /// Whether nothing is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `(name, offset, length)` of every parameter in the flat vector.
    pub fn spans(&self) -> Vec<(&str, usize, usize)> {
        let mut off = 0;
        self.names
            .iter()
            .zip(&self.shapes)
            .map(|(n, s)| {
                let len = s.iter().product::<usize>();
                let span = (n.as_str(), off, len);
                off += len;
                span
            })
            .collect()
    }

    fn vars(&self, varmap: &VarMap) -> Result<Vec<Var>> {
        let map = varmap.data().lock().expect("varmap lock");
        self.names
            .iter()
            .zip(&self.shapes)
            .map(|(n, s)| {
                let v = map
                    .get(n)
                    .ok_or_else(|| SwagError::Mismatch(format!("the model has no parameter `{n}`")))?;
                if v.dims() != s.as_slice() {
                    return Err(SwagError::Mismatch(format!(
                        "parameter `{n}` has shape {:?}, the statistics expect {s:?}",
                        v.dims()
                    )));
                }
                Ok(v.clone())
            })
            .collect()
    }

    /// Checks that `varmap` has exactly this layout's parameters (other names are an error too).
    pub fn check(&self, varmap: &VarMap) -> Result<()> {
        let other = ParamLayout::of(varmap)?;
        if other.names != self.names {
            let missing: Vec<&String> =
                self.names.iter().filter(|n| !other.names.contains(n)).take(3).collect();
            let extra: Vec<&String> =
                other.names.iter().filter(|n| !self.names.contains(n)).take(3).collect();
            return Err(SwagError::Mismatch(format!(
                "the model's parameters differ from the statistics' (missing {missing:?}, unexpected {extra:?})"
            )));
        }
        self.vars(varmap).map(|_| ())
    }

    /// The parameters as one flat `f32` vector, read from the device at once (on a GPU one wait,
    /// not one per parameter).
    pub fn flatten(&self, varmap: &VarMap) -> Result<Vec<f32>> {
        let parts = self
            .vars(varmap)?
            .iter()
            .map(|v| v.as_detached_tensor().to_dtype(candle_core::DType::F32)?.flatten_all())
            .collect::<candle_core::Result<Vec<_>>>()?;
        if parts.is_empty() {
            return Ok(Vec::new());
        }
        Ok(Tensor::cat(&parts, 0)?.to_vec1::<f32>()?)
    }

    /// Writes a flat vector back into the parameters.
    pub fn write_into(&self, varmap: &VarMap, flat: &[f32]) -> Result<()> {
        if flat.len() != self.len() {
            return Err(SwagError::Mismatch(format!("{} values for {} parameters", flat.len(), self.len())));
        }
        let vars = self.vars(varmap)?;
        let mut off = 0;
        for v in vars {
            let n = v.elem_count();
            let t = Tensor::from_slice(&flat[off..off + n], v.dims(), v.device())?.to_dtype(v.dtype())?;
            v.set(&t)?;
            off += n;
        }
        Ok(())
    }
}
