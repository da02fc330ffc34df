//! Where stage 2 reads representations from: the [`FeatureSource`] trait, implemented by the
//! memory-mapped features artifact ([`Features`]) and by an in-memory [`FeatureBank`] of tensors
//! (your own features, no file).

use candle_core::{DType, Device, Tensor};
use lt_core::formats::features::{Features, SampleKind, Split};

use crate::config::Backbone;
use crate::error::{Result, RetrainError};

/// Representations of `S` backbones per split, with labels, training class counts and
/// (optionally) the stage-1 heads.
pub trait FeatureSource {
    /// Number of classes `C`.
    fn classes(&self) -> usize;
    /// Representation dimension `D`.
    fn dim(&self) -> usize;
    /// The backbones on the `S` axis.
    fn kinds(&self) -> Vec<SampleKind>;
    /// Training samples per class.
    fn class_counts(&self) -> &[usize];
    /// Whether the source has `split`.
    fn has_split(&self, split: Split) -> bool;
    /// Labels of `split`.
    fn labels(&self, split: Split) -> Result<Vec<u32>>;
    /// Representations of backbone `sample` for rows `idx` of `split`: an `[idx.len(), D]` f32
    /// tensor on `device`.
    fn rows(&self, split: Split, sample: usize, idx: &[usize], device: &Device) -> Result<Tensor>;
    /// The stage-1 head `(weight [C, D], bias [C])` of a backbone, if the source has one.
    fn stage1_head(&self, backbone: Backbone) -> Result<Option<(Vec<f32>, Vec<f32>)>>;
    /// Where the representations come from, for messages.
    fn describe(&self) -> String;

    /// Every row of `split` for backbone `sample` as stored: `[N, D]` on `device`, in F16 for
    /// half-precision features (half the memory, the same values once widened), else F32 (the
    /// default: [`FeatureSource::all`]).
    fn stored(&self, split: Split, sample: usize, device: &Device) -> Result<Tensor> {
        self.all(split, sample, device)
    }

    /// Whether rows on `device` are selected there, without a copy from the host (default: no).
    /// [`crate::retrain`] keeps a source's rows on a GPU ([`crate::resident::Resident`]) unless
    /// they are.
    fn resident_on(&self, _device: &Device) -> bool {
        false
    }

    /// Every row of `split` for backbone `sample`.
    fn all(&self, split: Split, sample: usize, device: &Device) -> Result<Tensor> {
        let n = self.labels(split)?.len();
        self.rows(split, sample, &(0..n).collect::<Vec<_>>(), device)
    }

    /// Index of the first backbone of `kind` on the `S` axis.
    fn index_of(&self, kind: SampleKind) -> Result<usize> {
        self.kinds().iter().position(|k| *k == kind).ok_or_else(|| {
            RetrainError::Invalid(format!("{}: no `{}` backbone", self.describe(), kind.as_str()))
        })
    }

    /// Indices of the SWAG samples on the `S` axis.
    fn swag_indices(&self) -> Vec<usize> {
        let kinds = self.kinds();
        (0..kinds.len()).filter(|&i| kinds[i] == SampleKind::Swag).collect()
    }
}

impl FeatureSource for Features {
    fn classes(&self) -> usize {
        Features::classes(self)
    }
    fn dim(&self) -> usize {
        Features::dim(self)
    }
    fn kinds(&self) -> Vec<SampleKind> {
        self.samples().iter().map(|s| s.kind).collect()
    }
    fn class_counts(&self) -> &[usize] {
        Features::class_counts(self)
    }
    fn has_split(&self, split: Split) -> bool {
        Features::has_split(self, split)
    }
    fn labels(&self, split: Split) -> Result<Vec<u32>> {
        Ok(Features::labels(self, split)?)
    }
    fn rows(&self, split: Split, sample: usize, idx: &[usize], device: &Device) -> Result<Tensor> {
        let v = Features::rows(self, split, sample, idx)?;
        Ok(Tensor::from_vec(v, (idx.len(), self.dim()), device)?)
    }
    fn stage1_head(&self, backbone: Backbone) -> Result<Option<(Vec<f32>, Vec<f32>)>> {
        Ok(Some(self.head(backbone.sample_kind())?))
    }
    fn describe(&self) -> String {
        self.path().display().to_string()
    }
    fn stored(&self, split: Split, sample: usize, device: &Device) -> Result<Tensor> {
        if !self.meta().half {
            return FeatureSource::all(self, split, sample, device);
        }
        let v = self.all_half(split, sample)?;
        Ok(Tensor::from_vec(v, (self.len(split)?, self.dim()), device)?)
    }
}

/// Rows `idx` of `z` (`[N, D]`), selected on `z`'s device; a row past `N` is an error naming
/// `whose` rows they are.
pub(crate) fn select_rows(z: &Tensor, idx: &[usize], whose: &str) -> Result<Tensor> {
    let n = z.dim(0)?;
    if let Some(i) = idx.iter().find(|&&i| i >= n) {
        return Err(RetrainError::Invalid(format!("{whose}: row {i} outside 0..{n}")));
    }
    let ids: Vec<u32> = idx.iter().map(|&i| i as u32).collect();
    Ok(z.index_select(&Tensor::from_vec(ids, idx.len(), z.device())?, 0)?)
}

/// In-memory representations: per split an `[S, N, D]` tensor and labels.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use lt_retrain::bank::{FeatureBank, FeatureSource};
/// use lt_core::formats::features::{SampleKind, Split};
/// let dev = Device::Cpu;
/// let z = Tensor::zeros((3, 4, 2), candle_core::DType::F32, &dev).unwrap(); // S=3, N=4, D=2
/// let bank = FeatureBank::new(vec![SampleKind::Swa, SampleKind::Swag, SampleKind::Swag], vec![3, 1])
///     .unwrap()
///     .with_split(Split::Train, z.clone(), vec![0, 0, 0, 1]).unwrap()
///     .with_split(Split::Test, z, vec![0, 1, 0, 1]).unwrap();
/// assert_eq!((bank.dim(), bank.swag_indices()), (2, vec![1, 2]));
/// ```
#[derive(Clone, Debug)]
pub struct FeatureBank {
    kinds: Vec<SampleKind>,
    counts: Vec<usize>,
    dim: usize,
    splits: Vec<(Split, Tensor, Vec<u32>)>,
    heads: Vec<(Backbone, Vec<f32>, Vec<f32>)>,
}

impl FeatureBank {
    /// An empty bank for backbones `kinds` (the `S` axis) and `C = class_counts.len()` classes.
    pub fn new(kinds: Vec<SampleKind>, class_counts: Vec<usize>) -> Result<Self> {
        if kinds.is_empty() || class_counts.is_empty() {
            return Err(RetrainError::Invalid(
                "a feature bank needs at least one backbone and one class".into(),
            ));
        }
        Ok(Self { kinds, counts: class_counts, dim: 0, splits: Vec::new(), heads: Vec::new() })
    }

    /// Adds a split: `z` `[S, N, D]` (any float dtype, any device, `D` at least 1, finite values)
    /// and `N` labels. The training split's labels must agree with the class counts.
    pub fn with_split(mut self, split: Split, z: Tensor, labels: Vec<u32>) -> Result<Self> {
        let c = self.counts.len();
        let bad = |what: String| RetrainError::Invalid(format!("feature bank, {split} split: {what}"));
        let &[s, n, d] = z.dims() else {
            return Err(bad(format!("z must be [S, N, D] (backbones, rows, dimension), got {:?}", z.dims())));
        };
        if s != self.kinds.len() {
            return Err(bad(format!("{s} backbones, the bank has {}", self.kinds.len())));
        }
        if n != labels.len() {
            return Err(bad(format!("{n} rows and {} labels", labels.len())));
        }
        if d == 0 {
            return Err(bad("representations of dimension 0 (D must be at least 1)".into()));
        }
        // `dim` is 0 until the first split sets it.
        if self.dim != 0 && d != self.dim {
            return Err(bad(format!("dimension {d}, other splits have {}", self.dim)));
        }
        if let Some(y) = labels.iter().find(|&&y| y as usize >= c) {
            return Err(bad(format!(
                "label {y} outside 0..{c} (the bank has {c} classes, one per class count)"
            )));
        }
        if split == Split::Train {
            let mut k = vec![0usize; c];
            labels.iter().for_each(|&y| k[y as usize] += 1);
            if k != self.counts {
                return Err(bad(format!("labels count {k:?}, the class counts are {:?}", self.counts)));
            }
        }
        // Contiguous once here: a backbone's `[N, D]` is then a view, where candle copies the
        // whole of it out of a transposed or sliced `z` at every request of rows.
        let z = z.to_dtype(DType::F32)?.contiguous()?;
        let finite = z.flatten_all()?.to_vec1::<f32>()?.iter().all(|v| v.is_finite());
        if !finite {
            return Err(bad("NaN or infinite representations".into()));
        }
        self.dim = d;
        self.splits.retain(|(s, _, _)| *s != split);
        self.splits.push((split, z, labels));
        Ok(self)
    }

    /// Adds the stage-1 head of a backbone (`weight` `[C, D]` row-major, `bias` `[C]`, finite),
    /// after a split has set `D`.
    pub fn with_stage1_head(mut self, backbone: Backbone, weight: Vec<f32>, bias: Vec<f32>) -> Result<Self> {
        let c = self.counts.len();
        if self.dim == 0 {
            return Err(RetrainError::Invalid(
                "feature bank: add a split before a head (its D comes from the representations)".into(),
            ));
        }
        if bias.len() != c || weight.len() != c * self.dim {
            return Err(RetrainError::Invalid(format!(
                "feature bank: a head needs {c} x {} weights and {c} biases, got {} and {}",
                self.dim,
                weight.len(),
                bias.len()
            )));
        }
        if !weight.iter().chain(&bias).all(|v| v.is_finite()) {
            return Err(RetrainError::Invalid(format!(
                "feature bank: the {backbone} head has NaN or infinite values"
            )));
        }
        self.heads.retain(|(b, _, _)| *b != backbone);
        self.heads.push((backbone, weight, bias));
        Ok(self)
    }

    fn split(&self, split: Split) -> Result<&(Split, Tensor, Vec<u32>)> {
        self.splits
            .iter()
            .find(|(s, _, _)| *s == split)
            .ok_or_else(|| RetrainError::Invalid(format!("feature bank: no {split} split")))
    }
}

impl FeatureSource for FeatureBank {
    fn classes(&self) -> usize {
        self.counts.len()
    }
    fn dim(&self) -> usize {
        self.dim
    }
    fn kinds(&self) -> Vec<SampleKind> {
        self.kinds.clone()
    }
    fn class_counts(&self) -> &[usize] {
        &self.counts
    }
    fn has_split(&self, split: Split) -> bool {
        self.splits.iter().any(|(s, _, _)| *s == split)
    }
    fn labels(&self, split: Split) -> Result<Vec<u32>> {
        Ok(self.split(split)?.2.clone())
    }
    fn rows(&self, split: Split, sample: usize, idx: &[usize], device: &Device) -> Result<Tensor> {
        let (_, z, _) = self.split(split)?;
        if sample >= self.kinds.len() {
            return Err(RetrainError::Invalid(format!(
                "feature bank: backbone {sample} outside 0..{}",
                self.kinds.len()
            )));
        }
        Ok(select_rows(&z.get(sample)?, idx, "feature bank")?.to_device(device)?)
    }
    fn stage1_head(&self, backbone: Backbone) -> Result<Option<(Vec<f32>, Vec<f32>)>> {
        Ok(self.heads.iter().find(|(b, _, _)| *b == backbone).map(|(_, w, b)| (w.clone(), b.clone())))
    }
    fn describe(&self) -> String {
        "feature bank".into()
    }
    fn resident_on(&self, device: &Device) -> bool {
        self.splits.iter().all(|(_, z, _)| z.device().same_device(device))
    }
}
