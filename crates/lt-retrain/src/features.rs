//! Reading the features artifact (`lt.features`) without loading it whole.

use std::path::Path;

use half::f16;
use lt_core::artifact::ElemType;
use lt_core::{Artifact, Format};
use serde::Deserialize;

use crate::error::{Result, RetrainError};

/// Artifact kind of the features (written by `lt extract`).
pub const FEATURES_FORMAT: Format = Format { name: "lt.features", version: 1 };

#[derive(Clone, Debug, Deserialize)]
struct SampleInfo {
    kind: String,
}

/// A memory-mapped features artifact: per split, labels and `[S, N, D]` representations.
pub struct FeatureSet {
    art: Artifact,
    classes: usize,
    dim: usize,
    kinds: Vec<String>,
    counts: Vec<usize>,
}

impl FeatureSet {
    /// Opens and validates a features artifact: shapes agree between splits, labels are in
    /// range, heads fit the class count.
    pub fn open(path: &Path) -> Result<Self> {
        let art = Artifact::open(path, FEATURES_FORMAT)?;
        let classes: usize = art.meta_parse("num_classes")?;
        let dim: usize = art.meta_parse("feature_dim")?;
        let infos: Vec<SampleInfo> = art.meta_json("samples")?;
        let kinds: Vec<String> = infos.into_iter().map(|s| s.kind).collect();
        let s = kinds.len();
        for split in ["train", "test"] {
            if !art.contains(&format!("{split}.features")) {
                return Err(RetrainError::Invalid(format!(
                    "{}: no `{split}.features` tensor",
                    path.display()
                )));
            }
        }
        for split in ["train", "test", "val"] {
            let f = format!("{split}.features");
            if !art.contains(&f) {
                continue;
            }
            let info = art.expect_shape(&f, &[Some(s), None, Some(dim)])?;
            if !matches!(info.dtype, ElemType::F32 | ElemType::F16) {
                return Err(RetrainError::Invalid(format!(
                    "{}: `{f}` must be F32 or F16, is {}",
                    path.display(),
                    info.dtype.as_str()
                )));
            }
            let n = info.shape[1];
            let labels = art.indices(&format!("{split}.labels"), classes)?;
            if labels.len() != n {
                return Err(RetrainError::Invalid(format!(
                    "{}: `{split}.labels` has {} entries for {n} feature rows",
                    path.display(),
                    labels.len()
                )));
            }
        }
        for kind in ["sgd", "swa"] {
            art.expect_shape(&format!("head.{kind}.weight"), &[Some(classes), Some(dim)])?;
            art.expect_shape(&format!("head.{kind}.bias"), &[Some(classes)])?;
        }
        let counts: Vec<usize> = art.indices("class_counts", usize::MAX)?;
        if counts.len() != classes {
            return Err(RetrainError::Invalid(format!(
                "{}: {} class counts for {classes} classes",
                path.display(),
                counts.len()
            )));
        }
        let train_labels = art.indices("train.labels", classes)?;
        let mut from_labels = vec![0usize; classes];
        for y in train_labels {
            from_labels[y] += 1;
        }
        if from_labels != counts {
            return Err(RetrainError::Invalid(format!(
                "{}: `class_counts` disagrees with `train.labels`",
                path.display()
            )));
        }
        Ok(Self { art, classes, dim, kinds, counts })
    }

    /// The artifact's metadata value.
    pub fn meta(&self, key: &str) -> Option<&str> {
        self.art.meta_opt(key)
    }

    /// The file.
    pub fn path(&self) -> &Path {
        self.art.path()
    }

    /// Number of classes.
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// Feature dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Training samples per class.
    pub fn class_counts(&self) -> &[usize] {
        &self.counts
    }

    /// Backbones on the `S` axis (`sgd`, `swa`, `swag`, ...).
    pub fn kinds(&self) -> &[String] {
        &self.kinds
    }

    /// Index of the SGD (`sgd`) or SWA (`swa`) backbone.
    pub fn index_of(&self, kind: &str) -> Result<usize> {
        self.kinds
            .iter()
            .position(|k| k == kind)
            .ok_or_else(|| RetrainError::Invalid(format!("{}: no `{kind}` backbone", self.path().display())))
    }

    /// Indices of the SWAG samples.
    pub fn swag_indices(&self) -> Vec<usize> {
        self.kinds.iter().enumerate().filter(|(_, k)| *k == "swag").map(|(i, _)| i).collect()
    }

    /// Whether the split exists.
    pub fn has_split(&self, split: &str) -> bool {
        self.art.contains(&format!("{split}.features"))
    }

    fn need(&self, split: &str) -> Result<()> {
        if self.has_split(split) {
            Ok(())
        } else {
            Err(RetrainError::Invalid(format!(
                "{}: the `{split}` split was requested but the artifact has none",
                self.path().display()
            )))
        }
    }

    /// Rows in a split.
    pub fn len(&self, split: &str) -> Result<usize> {
        self.need(split)?;
        Ok(self.art.info(&format!("{split}.features"))?.shape[1])
    }

    /// Labels of a split.
    pub fn labels(&self, split: &str) -> Result<Vec<u32>> {
        self.need(split)?;
        Ok(self
            .art
            .indices(&format!("{split}.labels"), self.classes)?
            .into_iter()
            .map(|y| y as u32)
            .collect())
    }

    /// Representations of backbone `sample` for rows `idx` of `split`, `idx.len() x D` f32.
    /// Non-finite values are an error naming the row.
    pub fn rows(&self, split: &str, sample: usize, idx: &[usize]) -> Result<Vec<f32>> {
        self.need(split)?;
        let name = format!("{split}.features");
        let info = self.art.info(&name)?.clone();
        let (s, n, d) = (info.shape[0], info.shape[1], info.shape[2]);
        if sample >= s {
            return Err(RetrainError::Invalid(format!("backbone index {sample} out of 0..{s}")));
        }
        let bytes = self.art.bytes(&name)?;
        let es = info.dtype.size();
        let mut out = Vec::with_capacity(idx.len() * d);
        for &i in idx {
            if i >= n {
                return Err(RetrainError::Invalid(format!("row {i} of `{name}` out of 0..{n}")));
            }
            let start = (sample * n + i) * d * es;
            let row = &bytes[start..start + d * es];
            let before = out.len();
            match info.dtype {
                ElemType::F16 => {
                    out.extend(row.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()))
                }
                _ => out.extend(row.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
            }
            if out[before..].iter().any(|v| !v.is_finite()) {
                return Err(RetrainError::Invalid(format!(
                    "{}: `{name}` backbone {sample} ({}) row {i} holds NaN or infinite values",
                    self.path().display(),
                    self.kinds[sample]
                )));
            }
        }
        Ok(out)
    }

    /// All rows of a split for one backbone.
    pub fn all(&self, split: &str, sample: usize) -> Result<Vec<f32>> {
        let n = self.len(split)?;
        self.rows(split, sample, &(0..n).collect::<Vec<_>>())
    }

    /// The stage-1 head of the `sgd` or `swa` backbone: `(weight [C x D], bias [C])`.
    pub fn head(&self, kind: &str) -> Result<(Vec<f32>, Vec<f32>)> {
        Ok((self.art.f32(&format!("head.{kind}.weight"))?, self.art.f32(&format!("head.{kind}.bias"))?))
    }
}
