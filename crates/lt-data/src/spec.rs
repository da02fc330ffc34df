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
    /// A setting the data set does not read is `null` ([`DatasetName::unread_settings`]: the
    /// validation images of ImageNet-LT's lists, the test fraction of all but a folder, the crop
    /// side of in-memory data sets, ...).
    pub fn settings(&self) -> Result<serde_json::Value> {
        let name = self.name()?;
        let o = self.options(None);
        let mut v = self.as_json()?;
        v["dataset"] = name.to_string().into();
        v["imbalance"] = serde_json::json!(o.imbalance.or(name.default_imbalance()));
        v["data_seed"] = o.seed.into();
        v["test_fraction"] = o.test_fraction.into();
        v["image_size"] = o.image_size.into();
        if name == DatasetName::Synthetic {
            v["val_per_class"] = o.val_per_class.unwrap_or(o.synthetic.val_per_class).into();
            v["synthetic_classes"] = o.synthetic.classes.into();
            v["synthetic_n_max"] = o.synthetic.n_max.into();
            v["synthetic_size"] = o.synthetic.size.into();
        } else {
            v["val_per_class"] = serde_json::json!(o.val_per_class.or(name.default_val_per_class()));
        }
        for unread in name.unread_settings() {
            v[*unread] = serde_json::Value::Null;
        }
        Ok(v)
    }

    /// The spec without the settings the data set does not read (those [`DataSpec::validate`]
    /// and [`DataSpec::load`] refuse), and their names: for a record written before they were
    /// refused (a run's `data_spec.json`), which described the same data with them.
    pub fn dropping_unread(&self) -> Result<(DataSpec, Vec<&'static str>)> {
        let (mut v, mut dropped) = self.given_unread()?;
        if self.test_fraction_beside_test_folder().is_some() {
            dropped.push("test_fraction");
        }
        for f in &dropped {
            v[*f] = serde_json::Value::Null;
        }
        let spec = serde_json::from_value(v)
            .map_err(|e| crate::DataError::Invalid(format!("the data settings from JSON: {e}")))?;
        Ok((spec, dropped))
    }

    /// The spec as JSON, and the settings it gives that the data set does not read
    /// ([`DatasetName::unread_settings`]), in the table's order.
    fn given_unread(&self) -> Result<(serde_json::Value, Vec<&'static str>)> {
        let v = self.as_json()?;
        let given = self.name()?.unread_settings().iter().copied().filter(|f| !v[*f].is_null()).collect();
        Ok((v, given))
    }

    /// The test fraction and the folder, when a test fraction is given for a folder that holds
    /// its own test set (looked up on disk), which draws none.
    fn test_fraction_beside_test_folder(&self) -> Option<(f64, &std::path::Path)> {
        let (f, root) = (self.test_fraction?, self.data_root.as_deref()?);
        crate::folder::holds_test_set(root).then_some((f, root))
    }

    /// The spec as JSON, each field under its `[data]` name (only a data root that is not UTF-8
    /// fails).
    fn as_json(&self) -> Result<serde_json::Value> {
        serde_json::to_value(self)
            .map_err(|e| crate::DataError::Invalid(format!("the data settings as JSON: {e}")))
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

    /// Checks the numeric fields, each named as in a preset's `[data]` table, and refuses a
    /// setting the data set does not read ([`DatasetName::unread_settings`]).
    pub fn validate(&self) -> Result<()> {
        let (given, unread) = self.given_unread()?;
        if let Some(unread) = unread.first() {
            return Err(check::CheckError::new(
                format!("data.{unread}"),
                format!("left unset for {}, which does not read it", self.name()?),
                &given[*unread],
            )
            .into());
        }
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

    /// Loads the data set (after [`DataSpec::validate`]; a test fraction given for a folder that
    /// holds its own test set is refused), every image file checked first.
    pub fn load(&self, mirror: Option<String>) -> Result<DataBundle> {
        self.load_checking(mirror, true)
    }

    /// [`DataSpec::load`], the image files checked only with `check_images`
    /// ([`DataOptions::check_images`]).
    pub fn load_checking(&self, mirror: Option<String>, check_images: bool) -> Result<DataBundle> {
        self.validate()?;
        if let Some((f, root)) = self.test_fraction_beside_test_folder() {
            return Err(check::CheckError::new(
                "data.test_fraction",
                format!(
                    "left unset for {}, whose test set is its own test/ (or val/) folder",
                    root.display()
                ),
                f,
            )
            .into());
        }
        load_bundle(self.name()?, &DataOptions { check_images, ..self.options(mirror) })
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
        let folder = DataSpec { dataset: Some("folder".into()), ..d.clone() };
        assert_eq!(
            bad(DataSpec { imbalance: Some(0.5), ..d.clone() }),
            "data.imbalance must be a finite number in [1, inf), got 0.5"
        );
        assert!(bad(DataSpec { imbalance: Some(f64::NAN), ..d.clone() }).contains("got NaN"));
        assert!(
            bad(DataSpec { test_fraction: Some(1.0), ..folder.clone() }).starts_with("data.test_fraction")
        );
        assert!(bad(DataSpec { image_size: Some(0), ..folder.clone() }).starts_with("data.image_size"));
        assert!(
            bad(DataSpec { synthetic_classes: Some(1), ..d.clone() }).starts_with("data.synthetic_classes")
        );
        assert!(bad(DataSpec { synthetic_size: Some(0), ..d.clone() }).starts_with("data.synthetic_size"));
        // A folder without test/ needs some of each class held out: 0 would leave no test set.
        assert!(bad(DataSpec { test_fraction: Some(0.0), ..folder.clone() }).contains("in (0, 1), got 0"));
        DataSpec { imbalance: Some(1.0), test_fraction: Some(0.5), ..folder }.validate().unwrap();
    }

    /// A setting the data set does not read is refused, named, with the data set and the value;
    /// `lt preset` prints it as `null`. Each data set takes the settings it reads.
    #[test]
    fn a_setting_the_data_set_does_not_read_is_refused() {
        let spec = |name: &str, over: &str| -> DataSpec {
            toml::from_str(&format!("dataset = \"{name}\"\n{over}")).unwrap()
        };
        let refused = |name: &str, over: &str| spec(name, over).validate().unwrap_err().to_string();
        assert_eq!(
            refused("cifar10-lt", "test_fraction = 0.3"),
            "data.test_fraction must be left unset for cifar10-lt, which does not read it, got 0.3"
        );
        assert!(refused("cifar10-lt", "data_seed = 4").starts_with("data.data_seed "));
        assert!(refused("fmnist-lt", "image_size = 64").starts_with("data.image_size "));
        assert!(refused("imagenet-lt", "imbalance = 10.0").starts_with("data.imbalance "));
        assert!(refused("inat2018", "val_per_class = 5").starts_with("data.val_per_class "));
        assert!(refused("folder", "synthetic_n_max = 5").starts_with("data.synthetic_n_max "));
        assert!(refused("synthetic", "data_root = \"x\"").contains("got \"x\""));
        for (name, over) in [
            ("synthetic", "imbalance = 10.0\nval_per_class = 3\ndata_seed = 2\nsynthetic_classes = 4\nsynthetic_n_max = 9\nsynthetic_size = 8"),
            ("cifar100-lt", "imbalance = 50.0\nval_per_class = 3\ndata_root = \"d\"\ndownload = true"),
            ("imagenet-lt", "data_root = \"d\"\nimage_size = 112"),
            ("folder", "data_root = \"d\"\nimbalance = 10.0\nval_per_class = 3\ndata_seed = 2\ntest_fraction = 0.5\nimage_size = 64"),
        ] {
            spec(name, over).validate().unwrap_or_else(|e| panic!("{name} {over}: {e}"));
        }
        for name in DatasetName::ALL {
            let v = DataSpec { dataset: Some(name.to_string()), ..Default::default() }.settings().unwrap();
            for unread in name.unread_settings() {
                assert!(v[*unread].is_null(), "{name} {unread}: {v}");
            }
        }
        let synthetic = DataSpec::default().settings().unwrap();
        assert_eq!(
            (synthetic["synthetic_classes"].as_u64(), synthetic["val_per_class"].as_u64()),
            (Some(10), Some(100))
        );
        assert!(DataSpec { dataset: Some("cifar10-lt".into()), ..Default::default() }.settings().unwrap()
            ["data_seed"]
            .is_null());
    }

    /// Each setting reaches the loading options (a mirror too, which is not part of the spec).
    #[test]
    fn the_options_carry_every_setting() {
        let spec: DataSpec = toml::from_str(
            "dataset = \"folder\"\nimbalance = 7.0\nval_per_class = 3\ndata_root = \"d\"\ndownload = true\n\
             data_seed = 5\ntest_fraction = 0.4\nimage_size = 64",
        )
        .unwrap();
        let o = spec.options(Some("http://mirror".into()));
        assert_eq!((o.imbalance, o.val_per_class, o.download, o.seed), (Some(7.0), Some(3), true, 5));
        assert_eq!(
            (o.data_root.as_deref(), o.mirror.as_deref()),
            (Some(std::path::Path::new("d")), Some("http://mirror"))
        );
        assert_eq!((o.test_fraction, o.image_size), (0.4, 64));
        let s: DataSpec =
            toml::from_str("synthetic_classes = 4\nsynthetic_n_max = 9\nsynthetic_size = 8").unwrap();
        let o = s.options(None);
        assert_eq!((o.synthetic.classes, o.synthetic.n_max, o.synthetic.size), (4, 9, 8));
    }

    /// Every name in the table is a setting (a misspelled one would turn its check off).
    #[test]
    fn the_unread_settings_are_fields_of_the_spec() {
        let fields = serde_json::to_value(DataSpec::default()).unwrap();
        for name in DatasetName::ALL {
            for f in name.unread_settings() {
                assert!(fields.get(*f).is_some(), "{name}: {f} is not a [data] setting");
            }
        }
    }

    /// A record's unread settings go (named); a test fraction too, for a folder with its own test
    /// set.
    #[test]
    fn dropping_unread_leaves_what_the_data_set_reads() {
        let cifar: DataSpec =
            toml::from_str("dataset = \"cifar10-lt\"\nimbalance = 50.0\ndata_seed = 3\nimage_size = 8")
                .unwrap();
        let (kept, dropped) = cifar.dropping_unread().unwrap();
        assert_eq!(dropped, ["data_seed", "image_size"]);
        assert_eq!(kept, DataSpec { data_seed: None, image_size: None, ..cifar });
        let tmp = tempfile::tempdir().unwrap();
        for d in ["train", "test"] {
            std::fs::create_dir(tmp.path().join(d)).unwrap();
        }
        let folder = DataSpec {
            dataset: Some("folder".into()),
            data_root: Some(tmp.path().to_path_buf()),
            test_fraction: Some(0.3),
            data_seed: Some(2),
            ..Default::default()
        };
        let (kept, dropped) = folder.dropping_unread().unwrap();
        assert_eq!(
            (dropped, kept),
            (vec!["test_fraction"], DataSpec { test_fraction: None, ..folder.clone() })
        );
        std::fs::remove_dir(tmp.path().join("test")).unwrap();
        assert!(folder.dropping_unread().unwrap().1.is_empty());
    }
}
