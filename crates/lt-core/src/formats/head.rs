//! `lt.head` v1: a re-trained classifier.
//!
//! `weight [C, D]` and `bias [C]` are the effective linear classifier (for LWS the scales are folded
//! in, for tau-norm the normalised weights with zero bias, for post-hoc LA the adjusted bias);
//! method-specific tensors ride along as extras (`scales` for LWS; `alpha`, `beta`, `v`, `c` for
//! DisAlign, whose head is not linear). Metadata: [`RunMeta`].

use std::collections::BTreeMap;
use std::path::Path;

use crate::artifact::{Artifact, ArtifactError, ArtifactWriter, Format, Result};
use crate::formats::RunMeta;

/// Artifact kind of a re-trained head.
pub const FORMAT: Format = Format { name: "lt.head", version: 1 };

const WEIGHT: &str = "weight";
const BIAS: &str = "bias";

/// A named extra tensor of a head: shape and values.
pub type Extra = (Vec<usize>, Vec<f32>);

/// A head artifact's content.
#[derive(Clone, Debug, PartialEq)]
pub struct HeadArtifact {
    /// `[C, D]`, row-major.
    pub weight: Vec<f32>,
    /// `[C]`.
    pub bias: Vec<f32>,
    /// Number of classes `C`.
    pub classes: usize,
    /// Representation dimension `D`.
    pub dim: usize,
    /// Method-specific tensors by name.
    pub extras: BTreeMap<String, Extra>,
    /// The run's metadata.
    pub meta: RunMeta,
}

impl HeadArtifact {
    /// Writes the artifact atomically; refuses wrong lengths and non-finite values.
    pub fn write(&self, path: &Path) -> Result<()> {
        let bad = |name: &str, reason: String| ArtifactError::BadValue {
            path: path.to_path_buf(),
            name: name.to_string(),
            reason,
        };
        let mut tensors: Vec<(&str, Vec<usize>, &[f32])> = vec![
            (WEIGHT, vec![self.classes, self.dim], &self.weight),
            (BIAS, vec![self.classes], &self.bias),
        ];
        for (name, (shape, v)) in &self.extras {
            if name == WEIGHT || name == BIAS {
                return Err(bad(name, "an extra tensor may not be named weight or bias".into()));
            }
            tensors.push((name, shape.clone(), v));
        }
        let mut w = ArtifactWriter::new(FORMAT);
        self.meta.write_to(&mut w);
        for (name, shape, v) in tensors {
            let n: usize = shape.iter().product();
            if v.len() != n {
                return Err(bad(name, format!("{} values for shape {shape:?}", v.len())));
            }
            if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                return Err(bad(name, format!("value {i} is {}", v[i])));
            }
            w.push_f32(name, &shape, v);
        }
        w.write(path)
    }

    /// Reads a head artifact (weight and bias checked to fit each other; every other F32 tensor
    /// is an extra).
    pub fn read(path: &Path) -> Result<Self> {
        let a = Artifact::open(path, FORMAT)?;
        let info = a.expect_shape(WEIGHT, &[None, None])?.clone();
        let (classes, dim) = (info.shape[0], info.shape[1]);
        a.expect_shape(BIAS, &[Some(classes)])?;
        let mut extras = BTreeMap::new();
        for name in a.names().filter(|n| *n != WEIGHT && *n != BIAS) {
            extras.insert(name.to_string(), (a.info(name)?.shape.clone(), a.f32(name)?));
        }
        Ok(Self {
            weight: a.f32(WEIGHT)?,
            bias: a.f32(BIAS)?,
            classes,
            dim,
            extras,
            meta: RunMeta::read_from(&a)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_with_extras_and_refusals() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("h.safetensors");
        let mut extras = BTreeMap::new();
        extras.insert("scales".to_string(), (vec![2], vec![1.5, 0.5]));
        let h = HeadArtifact {
            weight: vec![1., 2., 3., 4., 5., 6.],
            bias: vec![0.0, 1.0],
            classes: 2,
            dim: 3,
            extras,
            meta: RunMeta { method: "lws".into(), row: "swa-lws".into(), ..Default::default() },
        };
        h.write(&p).unwrap();
        assert_eq!(HeadArtifact::read(&p).unwrap(), h);
        let short = HeadArtifact { bias: vec![0.0], ..h.clone() };
        let err = short.write(&p).unwrap_err().to_string();
        assert!(err.contains("`bias`") && err.contains("1 values for shape [2]"), "{err}");
        let inf = HeadArtifact { weight: vec![1., 2., f32::INFINITY, 4., 5., 6.], ..h };
        let err = inf.write(&p).unwrap_err().to_string();
        assert!(err.contains("`weight`") && err.contains("value 2 is inf"), "{err}");
    }
}
