//! [`DataSpec`]: which data set a run uses and how its split is built — a preset's `[data]`
//! table, the data flags of every `lt` command (feature `clap`), and the `data_spec.json` a run
//! directory records, all one struct. Unset fields take the data set's defaults.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use lt_core::check;

use crate::bundle::{load_bundle, DataBundle, DataOptions, DatasetName};
use crate::error::Result;

/// Which data set and how its split is built.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
pub struct DataSpec {
    /// Data set: synthetic, fmnist-lt, mnist-lt, cifar10-lt, cifar100-lt, imagenet-lt, inat2018,
    /// folder (default synthetic).
    #[cfg_attr(feature = "clap", arg(long))]
    pub dataset: Option<String>,
    /// Imbalance ratio rho = n_max / n_min (default 100 where the data set is made long-tailed).
    #[cfg_attr(feature = "clap", arg(long))]
    pub imbalance: Option<f64>,
    /// Class-balanced validation images per class: drawn from the training images the long-tailed
    /// selection did not use (default 100, or 20 for CIFAR-100-LT), or for a folder from its
    /// training images (default 20, fewer for a small class); 0: no validation set.
    #[cfg_attr(feature = "clap", arg(long))]
    pub val_per_class: Option<usize>,
    /// Where the data set lives (searched before the project's `data/`); for `folder`, the folder.
    #[cfg_attr(feature = "clap", arg(long))]
    pub data_root: Option<PathBuf>,
    /// Download what is missing (CIFAR, MNIST, Fashion-MNIST) into the data root.
    #[cfg_attr(feature = "clap", arg(long))]
    pub download: bool,
    /// Seed of generated data (synthetic) and seeded test splits (folder) (default 0).
    #[cfg_attr(feature = "clap", arg(long))]
    pub data_seed: Option<u64>,
    /// Synthetic data set: number of classes.
    #[cfg_attr(feature = "clap", arg(long))]
    pub synthetic_classes: Option<usize>,
    /// Synthetic data set: images of the largest class.
    #[cfg_attr(feature = "clap", arg(long))]
    pub synthetic_n_max: Option<usize>,
    /// Synthetic data set: image side.
    #[cfg_attr(feature = "clap", arg(long))]
    pub synthetic_size: Option<usize>,
    /// Folder data set: fraction of each class held out for testing when there is no test folder,
    /// in (0, 1) (default 0.2; each class keeps at least one training image).
    #[cfg_attr(feature = "clap", arg(long))]
    pub test_fraction: Option<f64>,
    /// Crop side for image-file data sets (ImageNet-LT, iNat, folder).
    #[cfg_attr(feature = "clap", arg(long))]
    pub image_size: Option<u32>,
}

impl DataSpec {
    /// The data set's name (default `synthetic`).
    pub fn name(&self) -> Result<DatasetName> {
        self.dataset.as_deref().unwrap_or("synthetic").parse()
    }

    /// `self` with every field that `over` sets (a `Some`, or `download`) taken from `over`.
    pub fn overlaid(&self, over: &DataSpec) -> DataSpec {
        macro_rules! pick {
            ($($f:ident),*) => { DataSpec { $($f: over.$f.clone().or_else(|| self.$f.clone()),)* download: self.download || over.download } };
        }
        pick!(
            dataset,
            imbalance,
            val_per_class,
            data_root,
            data_seed,
            synthetic_classes,
            synthetic_n_max,
            synthetic_size,
            test_fraction,
            image_size
        )
    }

    /// Every setting as JSON with the data set's defaults filled in: what `lt preset` prints.
    /// A setting the data set fixes itself is `null` (the synthetic set's validation images,
    /// ImageNet-LT's lists, the test fraction of all but a folder, the crop side of in-memory data
    /// sets); the synthetic set's own generator settings (`synthetic_*`) are left as given.
    pub fn settings(&self) -> Result<serde_json::Value> {
        let name = self.name()?;
        let o = self.options(None);
        let files = matches!(name, DatasetName::ImagenetLt | DatasetName::Inat2018 | DatasetName::Folder);
        // Only a data root that is not UTF-8 fails here.
        let mut v = serde_json::to_value(self)
            .map_err(|e| crate::DataError::Invalid(format!("the data settings as JSON: {e}")))?;
        v["dataset"] = name.to_string().into();
        v["imbalance"] = serde_json::json!(o.imbalance.or(name.default_imbalance()));
        v["val_per_class"] = serde_json::json!(o.val_per_class.or(name.default_val_per_class()));
        v["data_seed"] = o.seed.into();
        v["test_fraction"] = serde_json::json!((name == DatasetName::Folder).then_some(o.test_fraction));
        v["image_size"] = serde_json::json!(files.then_some(o.image_size));
        Ok(v)
    }

    /// The loading options (`mirror`: a replacement download location, not part of the spec
    /// because it does not change the data).
    pub fn options(&self, mirror: Option<String>) -> DataOptions {
        let mut o = DataOptions {
            data_root: self.data_root.clone(),
            imbalance: self.imbalance,
            val_per_class: self.val_per_class,
            download: self.download,
            mirror,
            seed: self.data_seed.unwrap_or(0),
            ..Default::default()
        };
        if let Some(f) = self.test_fraction {
            o.test_fraction = f;
        }
        if let Some(s) = self.image_size {
            o.image_size = s;
        }
        if let Some(c) = self.synthetic_classes {
            o.synthetic.classes = c;
        }
        if let Some(n) = self.synthetic_n_max {
            o.synthetic.n_max = n;
        }
        if let Some(s) = self.synthetic_size {
            o.synthetic.size = s;
        }
        o
    }

    /// Checks the numeric fields, each named as in a preset's `[data]` table.
    pub fn validate(&self) -> Result<()> {
        if let Some(r) = self.imbalance {
            check::in_range("data.imbalance", r, 1.0..)?;
        }
        if let Some(f) = self.test_fraction {
            crate::folder::check_test_fraction(f)?;
        }
        if let Some(s) = self.image_size {
            check::non_zero("data.image_size", u64::from(s))?;
        }
        if let Some(c) = self.synthetic_classes {
            check::int_in_range("data.synthetic_classes", c as i64, 2..)?;
        }
        if let Some(n) = self.synthetic_n_max {
            check::non_zero("data.synthetic_n_max", n as u64)?;
        }
        if let Some(s) = self.synthetic_size {
            check::non_zero("data.synthetic_size", s as u64)?;
        }
        Ok(())
    }

    /// Loads the data set (after [`DataSpec::validate`]).
    pub fn load(&self, mirror: Option<String>) -> Result<DataBundle> {
        self.validate()?;
        load_bundle(self.name()?, &self.options(mirror))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_takes_what_is_set() {
        let base =
            DataSpec { dataset: Some("fmnist-lt".into()), imbalance: Some(50.0), ..Default::default() };
        let over = DataSpec { imbalance: Some(10.0), download: true, ..Default::default() };
        let m = base.overlaid(&over);
        assert_eq!((m.dataset.as_deref(), m.imbalance, m.download), (Some("fmnist-lt"), Some(10.0), true));
        assert_eq!(DataSpec::default().name().unwrap(), DatasetName::Synthetic);
        let err = toml::from_str::<DataSpec>("datset = \"x\"").unwrap_err().to_string();
        assert!(err.contains("datset"), "{err}");
    }

    #[test]
    fn validation_names_the_field() {
        let bad = |s: DataSpec| s.validate().unwrap_err().to_string();
        let d = DataSpec::default();
        assert_eq!(
            bad(DataSpec { imbalance: Some(0.5), ..d.clone() }),
            "data.imbalance must be a finite number in [1, inf), got 0.5"
        );
        assert!(bad(DataSpec { imbalance: Some(f64::NAN), ..d.clone() }).contains("got NaN"));
        assert!(bad(DataSpec { test_fraction: Some(1.0), ..d.clone() }).starts_with("data.test_fraction"));
        assert!(bad(DataSpec { image_size: Some(0), ..d.clone() }).starts_with("data.image_size"));
        assert!(
            bad(DataSpec { synthetic_classes: Some(1), ..d.clone() }).starts_with("data.synthetic_classes")
        );
        assert!(bad(DataSpec { synthetic_size: Some(0), ..d.clone() }).starts_with("data.synthetic_size"));
        // A folder without test/ needs some of each class held out: 0 would leave no test set.
        assert!(bad(DataSpec { test_fraction: Some(0.0), ..d.clone() }).contains("in (0, 1), got 0"));
        DataSpec { imbalance: Some(1.0), test_fraction: Some(0.5), ..d }.validate().unwrap();
    }
}
