//! `lt.features` v1: the stochastic representations of a stage-1 run.
//!
//! For each split (train, test and, when the data set has one, val) the artifact holds the labels
//! and an `[S, N, D]` block of representations of `S = 2 + M` backbones: index 0 the SGD
//! backbone, 1 the SWA backbone, `2..` SWAG samples. Also the training class counts and the
//! stage-1 heads of the SGD and SWA backbones. See `docs/artifacts.md`.
//!
//! [`FeaturesWriter`] streams each split's block from a callback; [`Features`] memory-maps the
//! file and decodes only the rows asked for.

use std::io::{self, Write};
use std::path::Path;

use candle_core::Tensor;
use half::f16;
use serde::{Deserialize, Serialize};

use crate::artifact::{
    Artifact, ArtifactError, ArtifactWriter, ElemType, Format, Result, KEY_DATASET, KEY_FINGERPRINT,
};

pub use super::samples::{SampleInfo, SampleKind};

/// Artifact kind of the features.
pub const FORMAT: Format = Format { name: "lt.features", version: 1 };

/// A data split.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// The long-tailed training set.
    Train,
    /// The (balanced) test set.
    Test,
    /// The (balanced) validation set, when the data set has one.
    Val,
}

impl Split {
    /// Every split, in artifact order.
    pub const ALL: [Split; 3] = [Split::Train, Split::Test, Split::Val];

    /// The split's name (`train`, `test`, `val`).
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "test",
            Split::Val => "val",
        }
    }

    fn features_key(self) -> String {
        format!("{}.features", self.as_str())
    }

    fn labels_key(self) -> String {
        format!("{}.labels", self.as_str())
    }
}

impl std::fmt::Display for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The metadata of a features artifact.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FeaturesMeta {
    /// Number of classes `C`.
    pub num_classes: usize,
    /// Representation dimension `D`.
    pub feature_dim: usize,
    /// The `S` backbones, in order.
    pub samples: Vec<SampleInfo>,
    /// SWAG scale of the draws.
    pub scale: f64,
    /// Whether the blocks are stored as F16 (otherwise F32).
    pub half: bool,
    /// Data set name.
    pub dataset: String,
    /// Backbone architecture.
    pub arch: String,
    /// Class names.
    pub class_names: Vec<String>,
    /// The extraction configuration (JSON).
    pub extract_config: serde_json::Value,
    /// Fingerprint of the extraction.
    pub fingerprint: String,
    /// Fingerprint of the stage-1 run.
    pub run_fingerprint: String,
    /// Fingerprint of the split.
    pub split_fingerprint: String,
}

const KEY_CLASSES: &str = "num_classes";
const KEY_DIM: &str = "feature_dim";
const KEY_SAMPLES: &str = "samples";
const KEY_SCALE: &str = "scale";
const KEY_DTYPE: &str = "dtype";
const KEY_ARCH: &str = "arch";
const KEY_CLASS_NAMES: &str = "class_names";
const KEY_EXTRACT_CONFIG: &str = "extract_config";
const KEY_RUN_FINGERPRINT: &str = "run_fingerprint";
const KEY_SPLIT_FINGERPRINT: &str = "split_fingerprint";
const CLASS_COUNTS: &str = "class_counts";

fn head_keys(kind: SampleKind) -> (String, String) {
    (format!("head.{}.weight", kind.as_str()), format!("head.{}.bias", kind.as_str()))
}

impl FeaturesMeta {
    /// The element type of the blocks.
    pub fn elem(&self) -> ElemType {
        if self.half {
            ElemType::F16
        } else {
            ElemType::F32
        }
    }

    fn write_to(&self, w: &mut ArtifactWriter<'_>) {
        w.meta(KEY_FINGERPRINT, &self.fingerprint)
            .meta(KEY_RUN_FINGERPRINT, &self.run_fingerprint)
            .meta(KEY_SPLIT_FINGERPRINT, &self.split_fingerprint)
            .meta(KEY_DATASET, &self.dataset)
            .meta(KEY_ARCH, &self.arch)
            .meta(KEY_CLASSES, self.num_classes.to_string())
            .meta(KEY_DIM, self.feature_dim.to_string())
            .meta(KEY_DTYPE, if self.half { "f16" } else { "f32" })
            .meta(KEY_SCALE, self.scale.to_string())
            .meta_json(KEY_SAMPLES, &self.samples)
            .meta_json(KEY_CLASS_NAMES, &self.class_names)
            .meta_json(KEY_EXTRACT_CONFIG, &self.extract_config);
    }

    fn read_from(a: &Artifact) -> Result<Self> {
        let half = match a.meta(KEY_DTYPE)? {
            "f16" => true,
            "f32" => false,
            _ => return Err(a.bad_meta(KEY_DTYPE, "expected f16 or f32")),
        };
        let opt_text = |k: &str| a.meta_opt(k).unwrap_or("").to_string();
        let meta = Self {
            num_classes: a.meta_parse(KEY_CLASSES)?,
            feature_dim: a.meta_parse(KEY_DIM)?,
            samples: a.meta_json(KEY_SAMPLES)?,
            scale: a.meta_parse(KEY_SCALE)?,
            half,
            dataset: opt_text(KEY_DATASET),
            arch: opt_text(KEY_ARCH),
            class_names: if a.meta_opt(KEY_CLASS_NAMES).is_some() {
                a.meta_json(KEY_CLASS_NAMES)?
            } else {
                Vec::new()
            },
            extract_config: if a.meta_opt(KEY_EXTRACT_CONFIG).is_some() {
                a.meta_json(KEY_EXTRACT_CONFIG)?
            } else {
                serde_json::Value::Null
            },
            fingerprint: opt_text(KEY_FINGERPRINT),
            run_fingerprint: opt_text(KEY_RUN_FINGERPRINT),
            split_fingerprint: opt_text(KEY_SPLIT_FINGERPRINT),
        };
        if meta.num_classes == 0 {
            return Err(a.bad_meta(KEY_CLASSES, "expected at least one class"));
        }
        if meta.feature_dim == 0 {
            return Err(a.bad_meta(KEY_DIM, "expected a representation dimension of at least 1"));
        }
        if meta.samples.is_empty() {
            return Err(a.bad_meta(KEY_SAMPLES, "expected at least one backbone"));
        }
        // The rule `lt extract` holds the scale to when it writes one.
        if let Err(e) = crate::check::non_negative(KEY_SCALE, meta.scale) {
            return Err(a.bad_meta(KEY_SCALE, format!("expected {} (the SWAG sampling scale)", e.expected)));
        }
        Ok(meta)
    }
}

/// Writes a features artifact; each split's block is streamed from a callback during
/// [`FeaturesWriter::write`].
pub struct FeaturesWriter<'a> {
    meta: FeaturesMeta,
    w: ArtifactWriter<'a>,
}

impl<'a> FeaturesWriter<'a> {
    /// A writer for `meta` with the training class counts.
    pub fn new(meta: FeaturesMeta, class_counts: &[usize]) -> Self {
        let mut w = ArtifactWriter::new(FORMAT);
        meta.write_to(&mut w);
        let counts: Vec<i64> = class_counts.iter().map(|&c| c as i64).collect();
        w.push_i64(CLASS_COUNTS, &[counts.len()], counts);
        Self { meta, w }
    }

    /// Adds a split: its labels and its `[S, N, D]` block, which `fill` writes (little-endian,
    /// sample-major, in the element type of [`FeaturesMeta::elem`]) during the write.
    pub fn split<F>(&mut self, split: Split, labels: &[u32], fill: F) -> &mut Self
    where
        F: FnOnce(&mut dyn Write) -> io::Result<()> + 'a,
    {
        let n = labels.len();
        let shape = [self.meta.samples.len(), n, self.meta.feature_dim];
        self.w.push_u32(&split.labels_key(), &[n], labels.to_vec());
        self.w.push_lazy(&split.features_key(), self.meta.elem(), &shape, fill);
        self
    }

    /// Adds the stage-1 head (`weight [C, D]`, `bias [C]`) of the SGD or SWA backbone.
    pub fn head(&mut self, kind: SampleKind, weight: &Tensor, bias: &Tensor) -> Result<&mut Self> {
        let (wk, bk) = head_keys(kind);
        self.w.push_tensor(&wk, weight)?;
        self.w.push_tensor(&bk, bias)?;
        Ok(self)
    }

    /// Writes the artifact atomically.
    pub fn write(self, path: &Path) -> Result<()> {
        self.w.write(path)
    }
}

/// Writes representations in the artifact's element type (F16 when `half`).
pub fn write_values(w: &mut dyn Write, v: &[f32], half: bool) -> io::Result<()> {
    if half {
        for x in v {
            w.write_all(&f16::from_f32(*x).to_le_bytes())?;
        }
    } else {
        for x in v {
            w.write_all(&x.to_le_bytes())?;
        }
    }
    Ok(())
}

/// A memory-mapped features artifact, validated when opened.
pub struct Features {
    art: Artifact,
    meta: FeaturesMeta,
    counts: Vec<usize>,
}

impl std::fmt::Debug for Features {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Features").field("path", &self.art.path()).field("meta", &self.meta).finish()
    }
}

impl Features {
    /// Opens and validates a features artifact: the train and test splits exist, every block is
    /// `[S, N, D]` in F32 or F16 with `N` labels in range, the heads fit `[C, D]`, and the class
    /// counts agree with the training labels.
    pub fn open(path: &Path) -> Result<Self> {
        let art = Artifact::open(path, FORMAT)?;
        let meta = FeaturesMeta::read_from(&art)?;
        let (classes, dim, s) = (meta.num_classes, meta.feature_dim, meta.samples.len());
        for split in [Split::Train, Split::Test] {
            art.info(&split.features_key())?;
        }
        for split in Split::ALL {
            let key = split.features_key();
            if !art.contains(&key) {
                continue;
            }
            let info = art.expect_shape(&key, &[Some(s), None, Some(dim)])?;
            if info.dtype != meta.elem() {
                return Err(ArtifactError::DType {
                    path: path.to_path_buf(),
                    name: key,
                    expected: meta.elem().as_str().into(),
                    found: info.dtype.as_str().into(),
                });
            }
            let n = info.shape[1];
            let labels = art.indices(&split.labels_key(), classes)?;
            if labels.len() != n {
                return Err(art.bad_value(
                    &split.labels_key(),
                    format!("{} entries for {n} feature rows", labels.len()),
                ));
            }
        }
        for kind in [SampleKind::Sgd, SampleKind::Swa] {
            let (wk, bk) = head_keys(kind);
            art.expect_shape(&wk, &[Some(classes), Some(dim)])?;
            art.expect_shape(&bk, &[Some(classes)])?;
        }
        let counts = art.indices(CLASS_COUNTS, usize::MAX)?;
        if counts.len() != classes {
            return Err(art.bad_value(CLASS_COUNTS, format!("{} counts for {classes} classes", counts.len())));
        }
        let mut from_labels = vec![0usize; classes];
        for y in art.indices(&Split::Train.labels_key(), classes)? {
            from_labels[y] += 1;
        }
        if from_labels != counts {
            return Err(art.bad_value(CLASS_COUNTS, "disagrees with `train.labels`"));
        }
        Ok(Self { art, meta, counts })
    }

    /// The metadata.
    pub fn meta(&self) -> &FeaturesMeta {
        &self.meta
    }

    /// The file.
    pub fn path(&self) -> &Path {
        self.art.path()
    }

    /// Number of classes.
    pub fn classes(&self) -> usize {
        self.meta.num_classes
    }

    /// Representation dimension.
    pub fn dim(&self) -> usize {
        self.meta.feature_dim
    }

    /// Training samples per class.
    pub fn class_counts(&self) -> &[usize] {
        &self.counts
    }

    /// The backbones on the `S` axis.
    pub fn samples(&self) -> &[SampleInfo] {
        &self.meta.samples
    }

    /// Index of the first backbone of `kind` on the `S` axis.
    pub fn index_of(&self, kind: SampleKind) -> Result<usize> {
        self.meta.samples.iter().position(|s| s.kind == kind).ok_or_else(|| {
            self.art.bad_meta(KEY_SAMPLES, format!("no `{}` backbone among the samples", kind.as_str()))
        })
    }

    /// Indices of the SWAG samples on the `S` axis.
    pub fn swag_indices(&self) -> Vec<usize> {
        (0..self.meta.samples.len()).filter(|&i| self.meta.samples[i].kind == SampleKind::Swag).collect()
    }

    /// Whether the artifact has `split`.
    pub fn has_split(&self, split: Split) -> bool {
        self.art.contains(&split.features_key())
    }

    /// Rows of `split`.
    pub fn len(&self, split: Split) -> Result<usize> {
        Ok(self.art.info(&split.features_key())?.shape[1])
    }

    /// Labels of `split`.
    pub fn labels(&self, split: Split) -> Result<Vec<u32>> {
        Ok(self
            .art
            .indices(&split.labels_key(), self.meta.num_classes)?
            .into_iter()
            .map(|y| y as u32)
            .collect())
    }

    /// Representations of backbone `sample` for rows `idx` of `split`, `idx.len() x D` f32.
    /// Non-finite values are an error naming the backbone and the row.
    pub fn rows(&self, split: Split, sample: usize, idx: &[usize]) -> Result<Vec<f32>> {
        let key = split.features_key();
        if self.art.info(&key)?.dtype.size() == 2 {
            self.gather(split, sample, idx, |c| f16::from_le_bytes([c[0], c[1]]).to_f32(), f32::is_finite)
        } else {
            self.gather(split, sample, idx, |c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]), f32::is_finite)
        }
    }

    /// Every row of `split` for backbone `sample`, `N x D` f32.
    pub fn all(&self, split: Split, sample: usize) -> Result<Vec<f32>> {
        let n = self.len(split)?;
        self.rows(split, sample, &(0..n).collect::<Vec<_>>())
    }

    /// Every row of `split` for backbone `sample` as stored, `N x D` f16, when the blocks are
    /// F16 ([`FeaturesMeta::half`]; an error otherwise): half the memory of [`Features::all`],
    /// and the same values once widened. Non-finite values are an error as in [`Features::rows`].
    pub fn all_half(&self, split: Split, sample: usize) -> Result<Vec<f16>> {
        let key = split.features_key();
        if !self.meta.half {
            return Err(self.art.bad_value(&key, "stored as f32, not f16"));
        }
        let n = self.len(split)?;
        self.gather(
            split,
            sample,
            &(0..n).collect::<Vec<_>>(),
            |c| f16::from_le_bytes([c[0], c[1]]),
            f16::is_finite,
        )
    }

    /// Rows `idx` of backbone `sample` of `split`, each value decoded from its little-endian
    /// bytes by `decode`; a value `finite` refuses is an error naming the backbone and the row.
    fn gather<T: Copy>(
        &self,
        split: Split,
        sample: usize,
        idx: &[usize],
        decode: impl Fn(&[u8]) -> T,
        finite: impl Fn(T) -> bool,
    ) -> Result<Vec<T>> {
        let key = split.features_key();
        let info = self.art.info(&key)?;
        let (s, n, d) = (info.shape[0], info.shape[1], info.shape[2]);
        let es = info.dtype.size();
        if sample >= s {
            return Err(self.art.bad_value(&key, format!("backbone index {sample} outside 0..{s}")));
        }
        let bytes = self.art.bytes(&key)?;
        let mut out = Vec::with_capacity(idx.len() * d);
        for &i in idx {
            if i >= n {
                return Err(self.art.bad_value(&key, format!("row {i} outside 0..{n}")));
            }
            let start = (sample * n + i) * d * es;
            let before = out.len();
            out.extend(bytes[start..start + d * es].chunks_exact(es).map(&decode));
            if !out[before..].iter().all(|&v| finite(v)) {
                return Err(self.art.bad_value(
                    &key,
                    format!(
                        "backbone {sample} ({}) row {i} holds NaN or infinite values",
                        self.meta.samples[sample].kind.as_str()
                    ),
                ));
            }
        }
        Ok(out)
    }

    /// The stage-1 head of the SGD or SWA backbone: `(weight [C x D], bias [C])`.
    pub fn head(&self, kind: SampleKind) -> Result<(Vec<f32>, Vec<f32>)> {
        let (wk, bk) = head_keys(kind);
        let finite = |key: &str| -> Result<Vec<f32>> {
            let v = self.art.f32(key)?;
            match v.iter().position(|x| !x.is_finite()) {
                Some(i) => {
                    Err(self.art.bad_value(key, format!("value {i} is {}, not a finite number", v[i])))
                }
                None => Ok(v),
            }
        };
        Ok((finite(&wk)?, finite(&bk)?))
    }
}
