//! Named data sets, assembled into ready-to-train splits.

use std::path::PathBuf;
use std::sync::Arc;

use lt_core::split::SplitInfo;
use lt_core::Fingerprint;

use crate::cifar::{self, CifarVariant};
use crate::dataset::{Dataset, ImageSet, InMemoryDataset};
use crate::error::{DataError, Result};
use crate::files::{EvalTransform, ImageEntry, ImageFileDataset, TrainTransform};
use crate::folder_data::eval_resize;
use crate::idx::{self, IdxVariant};
use crate::listfile::{check_lists, parse_list, ListBenchmark};
use crate::longtail::{class_counts, exponential_profile, ldam_selection, ldam_selection_with_val};
pub use crate::name::DatasetName;
use crate::synthetic::{generate_splits, SyntheticConfig};
use crate::transform::{Augment, Normalize};

/// Where to find data and how to build the split.
#[derive(Clone, Debug)]
pub struct DataOptions {
    /// Explicit data root (`--data-root`), searched first; for `folder`, the folder itself.
    pub data_root: Option<PathBuf>,
    /// The project's data directory, searched second and used for downloads.
    pub project_data: PathBuf,
    /// Imbalance ratio (defaults per data set; ignored by the natural long tails).
    pub imbalance: Option<f64>,
    /// Validation images per class (defaults per data set, see
    /// [`DatasetName::default_val_per_class`]; 0: no validation set).
    pub val_per_class: Option<usize>,
    /// Download what is missing and can be downloaded.
    pub download: bool,
    /// Replacement for the official download location (tests use a loopback server).
    pub mirror: Option<String>,
    /// Seed of generated data (synthetic) and of seeded splits (folder).
    pub seed: u64,
    /// Synthetic data set parameters.
    pub synthetic: SyntheticConfig,
    /// Test fraction of a folder without a held-out test folder.
    pub test_fraction: f64,
    /// Crop side for image-file data sets.
    pub image_size: u32,
    /// Apply training augmentation.
    pub augment: bool,
    /// Check every image file before anything trains (image folders and list data sets; the
    /// default). `lt data fingerprint` and `lt bench loader` leave it off: the one reads no
    /// image, the other times a sample and fails on a bad one anyway.
    pub check_images: bool,
}

impl Default for DataOptions {
    fn default() -> Self {
        Self {
            data_root: None,
            project_data: default_project_data(),
            imbalance: None,
            val_per_class: None,
            download: false,
            mirror: None,
            seed: 0,
            synthetic: SyntheticConfig::default(),
            test_fraction: 0.2,
            image_size: 224,
            augment: true,
            check_images: true,
        }
    }
}

/// The project's data directory: `$LT_DATA_DIR`, else `./data`.
pub fn default_project_data() -> PathBuf {
    std::env::var_os("LT_DATA_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("data"))
}

/// A data set ready for the pipeline: the long-tailed training set, optional validation set and
/// the test set, with the bookkeeping the split artifact records.
pub struct DataBundle {
    /// Which data set.
    pub name: DatasetName,
    /// Long-tailed training set (augmented when loaded for training).
    pub train: Arc<dyn Dataset>,
    /// Validation set, when the data set has one.
    pub val: Option<Arc<dyn Dataset>>,
    /// Test set.
    pub test: Arc<dyn Dataset>,
    /// Indices of `train` in the original training set.
    pub train_indices: Vec<usize>,
    /// Indices of `val` in the original training set, when it was drawn from it.
    pub val_indices: Option<Vec<usize>>,
    /// Size of the original training set.
    pub original_train_len: usize,
    /// Class names.
    pub class_names: Vec<String>,
    /// Imbalance ratio used (`None` for natural long tails).
    pub imbalance: Option<f64>,
    /// Where the data came from, in words.
    pub source: String,
    /// What the images are made from beyond the split, part of [`DataBundle::fingerprint`]: for
    /// an image folder a fingerprint of its files (each image's path under the folder and its
    /// size), so that a folder whose images changed is not taken for the one a run was trained
    /// on; for the synthetic set its generator's settings and seed where they are not the
    /// defaults (the default set keeps the fingerprint it had before they counted); `None` for the
    /// published data sets, whose files are fixed (and checked against their checksums where
    /// downloaded).
    pub files: Option<String>,
}

impl DataBundle {
    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.class_names.len()
    }

    /// Training samples per class.
    pub fn class_counts(&self) -> Vec<usize> {
        class_counts(self.train.labels(), self.num_classes())
    }

    /// The names of the classes without a training image (the index where a class has no name).
    pub fn empty_classes(&self) -> Vec<String> {
        let counts = self.class_counts();
        (0..counts.len())
            .filter(|&c| counts[c] == 0)
            .map(|c| self.class_names.get(c).cloned().unwrap_or_else(|| c.to_string()))
            .collect()
    }

    /// What to say about classes without a training image (their classifier rows only ever see
    /// negatives), the first ten named; `None` when every class has one.
    pub fn empty_classes_warning(&self) -> Option<String> {
        let (empty, all) = (self.empty_classes(), self.num_classes());
        let (shown, more) =
            (empty.iter().take(10).cloned().collect::<Vec<_>>().join(", "), empty.len().saturating_sub(10));
        let more = if more > 0 { format!(" and {more} more") } else { String::new() };
        (!empty.is_empty()).then(|| {
            format!(
                "{} of {all} classes have no training image ({shown}{more}): they can only be predicted by chance",
                empty.len()
            )
        })
    }

    /// The split artifact's content.
    pub fn split_info(&self) -> SplitInfo {
        SplitInfo {
            dataset: self.name.to_string(),
            class_names: self.class_names.clone(),
            train_indices: self.train_indices.clone(),
            train_labels: self.train.labels().to_vec(),
            test_labels: self.test.labels().to_vec(),
            val_labels: self.val.as_ref().map(|v| v.labels().to_vec()),
            val_indices: self.val_indices.clone(),
            imbalance: self.imbalance,
            original_train_len: self.original_train_len,
        }
    }

    /// A fingerprint of the split's content (data set, indices, labels) and, for a user's own
    /// data, of its files ([`DataBundle::files`]).
    pub fn fingerprint(&self) -> String {
        let info = self.split_info();
        let wide = |v: &[usize]| -> Vec<u8> { v.iter().flat_map(|&i| (i as u64).to_le_bytes()).collect() };
        let narrow = |v: &[u32]| -> Vec<u8> { v.iter().flat_map(|&i| i.to_le_bytes()).collect() };
        let mut f = Fingerprint::new()
            .part("dataset", &info.dataset)
            .part("imbalance", &format!("{:?}", info.imbalance))
            .bytes("train_indices", &wide(&info.train_indices))
            .bytes("train_labels", &narrow(&info.train_labels))
            .bytes("test_labels", &narrow(&info.test_labels));
        if let Some(v) = &info.val_labels {
            f = f.bytes("val_labels", &narrow(v));
        }
        if let Some(v) = &info.val_indices {
            f = f.bytes("val_indices", &wide(v));
        }
        if let Some(files) = &self.files {
            f = f.part("files", files);
        }
        f.finish()
    }
}

/// Where a data set's files are looked for: the data root given (only there), else the
/// project's data directory.
fn search_roots(opts: &DataOptions) -> Vec<PathBuf> {
    vec![opts.data_root.clone().unwrap_or_else(|| opts.project_data.clone())]
}

fn download_root(opts: &DataOptions) -> PathBuf {
    opts.data_root.clone().unwrap_or_else(|| opts.project_data.clone())
}

/// The long-tailed subset of a balanced in-memory training set (LDAM-DRW selection, seed 0).
fn longtail_in_memory(pool: &ImageSet, n_max: usize, rho: f64) -> Result<(ImageSet, Vec<usize>)> {
    let counts = exponential_profile(n_max, pool.num_classes, rho)?;
    let idx = ldam_selection(&pool.labels, &counts, 0)?;
    Ok((pool.select(&idx), idx))
}

/// A long-tailed training selection and its validation set, both from one in-memory pool.
struct PoolSplit {
    train: ImageSet,
    train_indices: Vec<usize>,
    val: Option<ImageSet>,
    val_indices: Option<Vec<usize>>,
}

/// The long-tailed subset of a balanced in-memory pool and `val_per_class` validation images
/// per class from the images it did not use (see [`ldam_selection_with_val`]).
fn longtail_with_val(pool: &ImageSet, n_max: usize, rho: f64, val_per_class: usize) -> Result<PoolSplit> {
    let counts = exponential_profile(n_max, pool.num_classes, rho)?;
    let s = ldam_selection_with_val(&pool.labels, &counts, 0, val_per_class)?;
    for (c, &k) in s.val_from_train.iter().enumerate() {
        if k > 0 {
            tracing::info!(
                "class {c} ({}) has no {val_per_class} unused training images: {k} of its {} selected images form its validation set",
                pool.class_names.get(c).map(String::as_str).unwrap_or("?"),
                counts[c]
            );
        }
    }
    let val = (val_per_class > 0).then(|| pool.select(&s.val));
    let val_indices = (val_per_class > 0).then_some(s.val);
    Ok(PoolSplit { train: pool.select(&s.train), train_indices: s.train, val, val_indices })
}

fn in_memory(set: ImageSet, train: bool, opts: &DataOptions, norm: &Normalize) -> Arc<dyn Dataset> {
    let augment =
        if train && opts.augment { Augment::PadCropFlip { pad: 4, flip: true } } else { Augment::None };
    Arc::new(InMemoryDataset::new(set, augment, norm.clone()))
}

/// Loads a named data set as a [`DataBundle`].
pub fn load_bundle(name: DatasetName, opts: &DataOptions) -> Result<DataBundle> {
    // Callers with options of their own (a `DataSpec` has refused this already).
    if opts.imbalance.is_some() && name.unread_settings().contains(&"imbalance") {
        return Err(DataError::Invalid(format!("{name} has a fixed long tail; --imbalance does not apply")));
    }
    let rho = opts.imbalance.or(name.default_imbalance());
    if let Some(root) = &opts.data_root {
        // A data root given is the only place looked at: a typo must not fall back to another copy.
        if name != DatasetName::Synthetic && !opts.download && !root.is_dir() {
            let advice = if name.downloadable() {
                "give the folder holding the data set's files, or add --download"
            } else {
                "give the folder holding the data set's files"
            };
            let found = if root.is_file() { "a file, not a directory" } else { "no such directory" };
            return Err(DataError::NoRoot { path: root.clone(), found, advice });
        }
    }
    match name {
        DatasetName::Synthetic => synthetic_bundle(opts, rho.unwrap_or(100.0)),
        DatasetName::FmnistLt | DatasetName::MnistLt => idx_bundle(name, opts, rho.unwrap_or(100.0)),
        DatasetName::Cifar10Lt | DatasetName::Cifar100Lt => cifar_bundle(name, opts, rho.unwrap_or(100.0)),
        DatasetName::ImagenetLt | DatasetName::Inat2018 => list_bundle(name, opts),
        DatasetName::Folder => {
            let root = opts
                .data_root
                .clone()
                .ok_or_else(|| DataError::Invalid("the folder data set needs --data-root <folder>".into()))?;
            crate::folder_data::folder_bundle(&root, opts)
        }
    }
}

/// The validation images per class of a data set whose validation set is drawn.
fn val_per_class(name: DatasetName, opts: &DataOptions) -> usize {
    opts.val_per_class.or(name.default_val_per_class()).unwrap_or(0)
}

fn synthetic_bundle(opts: &DataOptions, rho: f64) -> Result<DataBundle> {
    let mut cfg = opts.synthetic.clone();
    if let Some(v) = opts.val_per_class {
        cfg.val_per_class = v;
    }
    let s = generate_splits(&cfg, opts.seed);
    let (train, idx) = longtail_in_memory(&s.train_pool, cfg.n_max, rho)?;
    let norm = Normalize::half(3);
    Ok(DataBundle {
        name: DatasetName::Synthetic,
        class_names: train.class_names.clone(),
        train: in_memory(train, true, opts, &norm),
        val: (cfg.val_per_class > 0).then(|| in_memory(s.val, false, opts, &norm)),
        test: in_memory(s.test, false, opts, &norm),
        train_indices: idx,
        val_indices: None,
        original_train_len: s.train_pool.len(),
        imbalance: Some(rho),
        source: format!("embedded generator (seed {})", opts.seed),
        files: generator_identity(&cfg, opts.seed)?,
    })
}

/// [`DataBundle::files`] of the synthetic set: its generator's settings and seed as JSON, `None`
/// at the defaults.
fn generator_identity(cfg: &SyntheticConfig, seed: u64) -> Result<Option<String>> {
    if *cfg == SyntheticConfig::default() && seed == 0 {
        return Ok(None);
    }
    let v = serde_json::json!({"generator": cfg, "seed": seed});
    Ok(Some(
        serde_json::to_string(&v)
            .map_err(|e| DataError::Invalid(format!("the generator's settings: {e}")))?,
    ))
}

/// Images per class of the MNIST and Fashion-MNIST training sets (the head class keeps all).
const IDX_N_MAX: usize = 6000;

fn idx_bundle(name: DatasetName, opts: &DataOptions, rho: f64) -> Result<DataBundle> {
    let variant = if name == DatasetName::FmnistLt { IdxVariant::FashionMnist } else { IdxVariant::Mnist };
    let dirs = idx::search_dirs(variant, opts.data_root.as_deref(), &opts.project_data);
    let dl = download_root(opts);
    let (pool, test) =
        idx::load(variant, &dirs, opts.download.then_some(dl.as_path()), opts.mirror.as_deref())?;
    let split = longtail_with_val(&pool, IDX_N_MAX, rho, val_per_class(name, opts))?;
    let norm = match variant {
        IdxVariant::FashionMnist => Normalize::fashion_mnist(),
        IdxVariant::Mnist => Normalize::mnist(),
    };
    let source = dirs
        .iter()
        .find(|d| d.is_dir())
        .map(|d| d.display().to_string())
        .unwrap_or_else(|| dl.display().to_string());
    Ok(DataBundle {
        name,
        class_names: pool.class_names.clone(),
        train: in_memory(split.train, true, opts, &norm),
        val: split.val.map(|v| in_memory(v, false, opts, &norm)),
        test: in_memory(test, false, opts, &norm),
        train_indices: split.train_indices,
        val_indices: split.val_indices,
        original_train_len: pool.len(),
        imbalance: Some(rho),
        source: format!("IDX files ({source})"),
        files: None,
    })
}

fn cifar_bundle(name: DatasetName, opts: &DataOptions, rho: f64) -> Result<DataBundle> {
    let variant = if name == DatasetName::Cifar10Lt { CifarVariant::Cifar10 } else { CifarVariant::Cifar100 };
    let roots = search_roots(opts);
    let dl = download_root(opts);
    let splits = cifar::load(variant, &roots, opts.download.then_some(dl.as_path()), opts.mirror.as_deref())?;
    let n_max = splits.train.len() / variant.classes();
    let split = longtail_with_val(&splits.train, n_max, rho, val_per_class(name, opts))?;
    let norm = Normalize::cifar();
    let source = format!(
        "{:?}",
        cifar::locate(variant, &roots).unwrap_or(cifar::CifarSource::Dir(dl.join(variant.dir_name())))
    );
    Ok(DataBundle {
        name,
        class_names: splits.train.class_names.clone(),
        train: in_memory(split.train, true, opts, &norm),
        val: split.val.map(|v| in_memory(v, false, opts, &norm)),
        test: in_memory(splits.test, false, opts, &norm),
        train_indices: split.train_indices,
        val_indices: split.val_indices,
        original_train_len: splits.train.len(),
        imbalance: Some(rho),
        source,
        files: None,
    })
}

/// ColorJitter strength of ImageNet-LT's training transform (the decoupling recipe).
const IMAGENET_LT_COLOR_JITTER: f32 = 0.4;

fn list_bundle(name: DatasetName, opts: &DataOptions) -> Result<DataBundle> {
    let bench =
        if name == DatasetName::ImagenetLt { ListBenchmark::ImageNetLt } else { ListBenchmark::INat2018 };
    let dir = bench.locate(&search_roots(opts))?;
    let classes = bench.classes();
    let (tr, va, te) = bench.list_names();
    let (norm, jitter) = match bench {
        ListBenchmark::ImageNetLt => (Normalize::imagenet(), Some(IMAGENET_LT_COLOR_JITTER)),
        ListBenchmark::INat2018 => (Normalize::inat(), None),
    };
    let size = opts.image_size;
    let parse = |list: &str| parse_list(&dir.join(list), classes);
    let (train, val, test) = (parse(tr)?, va.map(parse).transpose()?, parse(te)?);
    let lists = [Some((tr, &train[..])), va.zip(val.as_deref()), Some((te, &test[..]))];
    check_lists(&dir, &lists.into_iter().flatten().collect::<Vec<_>>(), opts.check_images)?;
    let make = |entries: Vec<ImageEntry>| -> Arc<dyn Dataset> {
        Arc::new(ImageFileDataset::new(
            dir.clone(),
            entries,
            classes,
            TrainTransform::standard(size, if opts.augment { jitter } else { None }),
            EvalTransform { resize: eval_resize(size), crop: size },
            norm.clone(),
        ))
    };
    let (train, val, test) = (make(train), val.map(make), make(test));
    let n = train.len();
    Ok(DataBundle {
        name,
        class_names: (0..classes).map(|c| c.to_string()).collect(),
        train,
        val,
        test,
        train_indices: (0..n).collect(),
        val_indices: None,
        original_train_len: n,
        imbalance: None,
        source: format!("list files in {}", dir.display()),
        files: None,
    })
}
