//! SWA/SWAG running statistics, sampling and the `lt.swag` artifact.

use std::collections::VecDeque;
use std::io::Write;
use std::path::Path;

use lt_core::artifact::ElemType;
use lt_core::{Artifact, ArtifactWriter, Format, Rng};

use crate::error::{Result, SwagError};
use crate::layout::ParamLayout;

/// Artifact kind of SWAG statistics.
pub const SWAG_FORMAT: Format = Format { name: "lt.swag", version: 1 };

/// SWAG statistics over flattened parameters.
///
/// Follows the reference implementation (`swa_gaussian/swag/posteriors/swag.py`): with `n`
/// models collected, `mean <- mean * n/(n+1) + theta/(n+1)`, the same for the second moment,
/// and the deviation `theta - mean` (with the *updated* mean) appended to a FIFO of at most `K`
/// columns.
#[derive(Clone, Debug, PartialEq)]
pub struct Swag {
    layout: ParamLayout,
    n_models: usize,
    max_rank: usize,
    mean: Vec<f32>,
    sq_mean: Vec<f32>,
    deviations: VecDeque<Vec<f32>>,
}

impl Swag {
    /// Empty statistics for `layout` keeping at most `max_rank` deviation columns
    /// (`0`: diagonal only). [`sample`](Self::sample)'s low-rank term divides by
    /// `sqrt(max_rank - 1)`, so it needs `max_rank >= 2`: at `1` sampling is diagonal only
    /// (`lt train` refuses `train.swa.rank = 1`).
    pub fn new(layout: ParamLayout, max_rank: usize) -> Self {
        let p = layout.len();
        Self {
            layout,
            n_models: 0,
            max_rank,
            mean: vec![0.0; p],
            sq_mean: vec![0.0; p],
            deviations: VecDeque::new(),
        }
    }

    /// The tracked parameters.
    pub fn layout(&self) -> &ParamLayout {
        &self.layout
    }

    /// Models collected so far.
    pub fn n_models(&self) -> usize {
        self.n_models
    }

    /// Maximum number of deviation columns `K`.
    pub fn max_rank(&self) -> usize {
        self.max_rank
    }

    /// Deviation columns held (at most `K`).
    pub fn rank(&self) -> usize {
        self.deviations.len()
    }

    /// The SWA solution (running mean).
    pub fn mean(&self) -> &[f32] {
        &self.mean
    }

    /// The running second moment.
    pub fn sq_mean(&self) -> &[f32] {
        &self.sq_mean
    }

    /// The deviation columns, oldest first.
    pub fn deviations(&self) -> impl Iterator<Item = &[f32]> {
        self.deviations.iter().map(|d| d.as_slice())
    }

    /// Adds one model (its flattened parameters); a vector of another length, or with a NaN or
    /// infinite value (named by its parameter), is refused and changes nothing.
    pub fn collect(&mut self, theta: &[f32]) -> Result<()> {
        if theta.len() != self.mean.len() {
            return Err(SwagError::Mismatch(format!(
                "a parameter vector of {} values for statistics of {}",
                theta.len(),
                self.mean.len()
            )));
        }
        if let Some(i) = theta.iter().position(|v| !v.is_finite()) {
            let name =
                self.layout.spans().into_iter().find(|(_, start, len)| (*start..start + len).contains(&i));
            return Err(SwagError::Invalid(format!(
                "model {} to collect has {} at value {i}{} (diverged training?)",
                self.n_models + 1,
                theta[i],
                name.map(|(n, start, _)| format!(", parameter {n} element {}", i - start))
                    .unwrap_or_default()
            )));
        }
        let n = self.n_models as f32;
        let (a, b) = (n / (n + 1.0), 1.0 / (n + 1.0));
        for ((m, s), &t) in self.mean.iter_mut().zip(self.sq_mean.iter_mut()).zip(theta) {
            *m = *m * a + t * b;
            *s = *s * a + t * t * b;
        }
        if self.max_rank > 0 {
            let mut d = if self.deviations.len() == self.max_rank {
                self.deviations.pop_front().expect("non-empty")
            } else {
                vec![0.0; theta.len()]
            };
            for ((d, &t), &m) in d.iter_mut().zip(theta).zip(&self.mean) {
                *d = t - m;
            }
            self.deviations.push_back(d);
        }
        self.n_models += 1;
        Ok(())
    }

    /// Diagonal variance `max(sq_mean - mean^2, 1e-30)`.
    pub fn variance(&self) -> Vec<f32> {
        self.mean.iter().zip(&self.sq_mean).map(|(&m, &s)| (s - m * m).max(1e-30)).collect()
    }

    /// Draws `theta = mean + sqrt(scale) * (sqrt(var) * z1 + D^T z2 / sqrt(K - 1))` with
    /// `z1 ~ N(0, I_P)` (drawn first, in parameter order) and `z2 ~ N(0, I_r)` over the `r`
    /// collected columns; `K` is the maximum rank. `scale = 0` returns the mean exactly.
    ///
    /// # Errors
    /// [`SwagError::Invalid`] before any model was collected (the statistics are all zero) and
    /// for a negative or non-finite `scale`.
    pub fn sample(&self, scale: f64, rng: &mut Rng) -> Result<Vec<f32>> {
        if self.n_models == 0 {
            return Err(SwagError::Invalid("no model collected yet: collect before sampling".into()));
        }
        if !(scale.is_finite() && scale >= 0.0) {
            return Err(SwagError::Invalid(format!("sample scale {scale}: expected a finite value >= 0")));
        }
        if scale == 0.0 {
            return Ok(self.mean.clone());
        }
        let p = self.mean.len();
        let var = self.variance();
        let mut z1 = vec![0f32; p];
        rng.fill_normal(&mut z1, 0.0, 1.0);
        let mut rand: Vec<f32> = z1.iter().zip(&var).map(|(&z, &v)| v.sqrt() * z).collect();
        if self.max_rank > 1 && !self.deviations.is_empty() {
            let mut z2 = vec![0f32; self.deviations.len()];
            rng.fill_normal(&mut z2, 0.0, 1.0);
            let denom = ((self.max_rank - 1) as f32).sqrt();
            for (d, &z) in self.deviations.iter().zip(&z2) {
                let c = z / denom;
                for (r, &dv) in rand.iter_mut().zip(d) {
                    *r += c * dv;
                }
            }
        }
        let s = scale.sqrt() as f32;
        Ok(self.mean.iter().zip(&rand).map(|(&m, &r)| m + s * r).collect())
    }

    /// Writes the statistics as an `lt.swag` artifact: per parameter `mean.<name>`,
    /// `sq_mean.<name>` and `deviations.<name>` (`[rank, *shape]`), streamed from memory without
    /// copies; `meta` adds metadata (architecture, fingerprint, ...). The file is written
    /// atomically, its folder created when missing.
    pub fn save(&self, path: &Path, meta: &[(&str, String)]) -> Result<()> {
        let mut w = ArtifactWriter::new(SWAG_FORMAT);
        for (k, v) in meta {
            w.meta(k, v.clone());
        }
        self.push_into(&mut w, "");
        Ok(w.write(path)?)
    }

    /// Adds the statistics to an artifact being written, tensor names and metadata keys prefixed
    /// with `prefix` (checkpoints embed them with `swag.`).
    pub fn push_into<'a>(&'a self, w: &mut ArtifactWriter<'a>, prefix: &str) {
        w.meta(&format!("{prefix}n_models"), self.n_models.to_string())
            .meta(&format!("{prefix}max_rank"), self.max_rank.to_string())
            .meta(&format!("{prefix}rank"), self.rank().to_string())
            .meta_json(&format!("{prefix}layout"), &self.layout);
        let rank = self.rank();
        for ((name, off, len), shape) in self.layout.spans().into_iter().zip(&self.layout.shapes) {
            w.push_f32(&format!("{prefix}mean.{name}"), shape, &self.mean[off..off + len]);
            w.push_f32(&format!("{prefix}sq_mean.{name}"), shape, &self.sq_mean[off..off + len]);
            let mut dshape = vec![rank];
            dshape.extend_from_slice(shape);
            let devs = &self.deviations;
            w.push_lazy(
                &format!("{prefix}deviations.{name}"),
                ElemType::F32,
                &dshape,
                move |out: &mut dyn Write| {
                    for d in devs {
                        for v in &d[off..off + len] {
                            out.write_all(&v.to_le_bytes())?;
                        }
                    }
                    Ok(())
                },
            );
        }
    }

    /// Reads an `lt.swag` artifact, checking every tensor against the recorded layout.
    pub fn load(path: &Path) -> Result<Self> {
        let a = Artifact::open(path, SWAG_FORMAT)?;
        Self::from_artifact(&a, "")
    }

    /// Reads statistics stored with [`Swag::push_into`] under `prefix`.
    pub fn from_artifact(a: &Artifact, prefix: &str) -> Result<Self> {
        let key = |k: &str| format!("{prefix}{k}");
        let layout: ParamLayout = a.meta_json(&key("layout"))?;
        let n_models: usize = a.meta_parse(&key("n_models"))?;
        let max_rank: usize = a.meta_parse(&key("max_rank"))?;
        let rank: usize = a.meta_parse(&key("rank"))?;
        if rank > max_rank || rank > n_models {
            return Err(a
                .bad_meta(&key("rank"), format!("{rank} columns with K = {max_rank} and {n_models} models"))
                .into());
        }
        check_layout(a, &key("layout"), &layout)?;
        // Every shape is checked before anything is allocated: the sizes in the layout and the
        // rank are then those of tensors the file holds, not numbers a small file may claim.
        for (name, shape) in layout.names.iter().zip(&layout.shapes) {
            let want: Vec<Option<usize>> = shape.iter().map(|&d| Some(d)).collect();
            a.expect_shape(&key(&format!("mean.{name}")), &want)?;
            a.expect_shape(&key(&format!("sq_mean.{name}")), &want)?;
            let mut dwant = vec![Some(rank)];
            dwant.extend(want);
            a.expect_shape(&key(&format!("deviations.{name}")), &dwant)?;
        }
        let p = layout.len();
        // Columns of no values would be held in memory the file does not back.
        if p == 0 && rank > 0 {
            return Err(a.bad_meta(&key("rank"), format!("{rank} columns of no parameters")).into());
        }
        let mut mean = Vec::with_capacity(p);
        let mut sq_mean = Vec::with_capacity(p);
        let mut deviations: VecDeque<Vec<f32>> = (0..rank).map(|_| Vec::with_capacity(p)).collect();
        // Every tensor finite: a NaN would reach every sampled backbone.
        let finite = |tensor: String| -> Result<Vec<f32>> {
            let tensor = key(&tensor);
            let v = a.f32(&tensor)?;
            match v.iter().position(|x| !x.is_finite()) {
                None => Ok(v),
                Some(i) => Err(SwagError::Mismatch(format!(
                    "{}: `{tensor}` element {i} is {} (SWAG statistics are finite)",
                    a.path().display(),
                    v[i]
                ))),
            }
        };
        for (name, shape) in layout.names.iter().zip(&layout.shapes) {
            mean.extend(finite(format!("mean.{name}"))?);
            sq_mean.extend(finite(format!("sq_mean.{name}"))?);
            let d = finite(format!("deviations.{name}"))?;
            let len = shape.iter().product::<usize>();
            for (k, col) in deviations.iter_mut().enumerate() {
                col.extend_from_slice(&d[k * len..(k + 1) * len]);
            }
        }
        Ok(Self { layout, n_models, max_rank, mean, sq_mean, deviations })
    }
}

/// Refuses a recorded layout that no model has: one shape per name and no name twice.
fn check_layout(a: &Artifact, key: &str, layout: &ParamLayout) -> Result<()> {
    let bad = |reason: String| -> Result<()> { Err(a.bad_meta(key, reason).into()) };
    if layout.names.len() != layout.shapes.len() {
        return bad(format!("{} names for {} shapes", layout.names.len(), layout.shapes.len()));
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(name) = layout.names.iter().find(|n| !seen.insert(n.as_str())) {
        return bad(format!("parameter `{name}` twice"));
    }
    Ok(())
}
