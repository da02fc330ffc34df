//! [`DatasetName`]: the data sets the project knows, with what each reads and its defaults.

use std::str::FromStr;

use crate::error::{DataError, Result};

/// The data sets the project knows by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DatasetName {
    /// The embedded synthetic long-tailed set (no files).
    Synthetic,
    /// Fashion-MNIST made long-tailed.
    FmnistLt,
    /// MNIST made long-tailed.
    MnistLt,
    /// CIFAR-10-LT (LDAM-DRW selection).
    Cifar10Lt,
    /// CIFAR-100-LT (LDAM-DRW selection).
    Cifar100Lt,
    /// ImageNet-LT (split lists).
    ImagenetLt,
    /// iNaturalist-2018 (split lists).
    Inat2018,
    /// A user's image folder.
    Folder,
}

impl DatasetName {
    /// Every name, for help texts.
    pub const ALL: [DatasetName; 8] = [
        DatasetName::Synthetic,
        DatasetName::FmnistLt,
        DatasetName::MnistLt,
        DatasetName::Cifar10Lt,
        DatasetName::Cifar100Lt,
        DatasetName::ImagenetLt,
        DatasetName::Inat2018,
        DatasetName::Folder,
    ];

    /// The name used on the command line and in artifacts.
    pub fn as_str(self) -> &'static str {
        match self {
            DatasetName::Synthetic => "synthetic",
            DatasetName::FmnistLt => "fmnist-lt",
            DatasetName::MnistLt => "mnist-lt",
            DatasetName::Cifar10Lt => "cifar10-lt",
            DatasetName::Cifar100Lt => "cifar100-lt",
            DatasetName::ImagenetLt => "imagenet-lt",
            DatasetName::Inat2018 => "inat2018",
            DatasetName::Folder => "folder",
        }
    }

    /// Default size of the class-balanced validation set, per class, for data sets whose
    /// validation images are drawn from the training images the long-tailed selection did not
    /// use (for a folder, fewer where a class is small); `None` for the others (the synthetic
    /// set generates `SyntheticConfig::val_per_class`, ImageNet-LT has a fixed list, iNat none).
    pub fn default_val_per_class(self) -> Option<usize> {
        match self {
            DatasetName::FmnistLt | DatasetName::MnistLt | DatasetName::Cifar10Lt => Some(100),
            DatasetName::Cifar100Lt | DatasetName::Folder => Some(20),
            _ => None,
        }
    }

    /// Whether `--download` fetches the data set (from its official location, checksum-verified).
    pub fn downloadable(self) -> bool {
        matches!(
            self,
            DatasetName::FmnistLt | DatasetName::MnistLt | DatasetName::Cifar10Lt | DatasetName::Cifar100Lt
        )
    }

    /// The `[data]` settings (a [`DataSpec`](crate::DataSpec)'s fields, named as in a preset) that
    /// this data set does not read. [`DataSpec::validate`](crate::DataSpec::validate) refuses them,
    /// so that no setting is taken and silently changes nothing, and
    /// [`DataSpec::settings`](crate::DataSpec::settings) prints them as `null`.
    pub fn unread_settings(self) -> &'static [&'static str] {
        match self {
            DatasetName::Synthetic => &["data_root", "test_fraction", "image_size"],
            DatasetName::FmnistLt
            | DatasetName::MnistLt
            | DatasetName::Cifar10Lt
            | DatasetName::Cifar100Lt => &[
                "data_seed",
                "synthetic_classes",
                "synthetic_n_max",
                "synthetic_size",
                "test_fraction",
                "image_size",
            ],
            DatasetName::ImagenetLt | DatasetName::Inat2018 => &[
                "imbalance",
                "val_per_class",
                "data_seed",
                "synthetic_classes",
                "synthetic_n_max",
                "synthetic_size",
                "test_fraction",
            ],
            DatasetName::Folder => &["synthetic_classes", "synthetic_n_max", "synthetic_size"],
        }
    }

    /// Default imbalance ratio for data sets made long-tailed by subsampling.
    pub fn default_imbalance(self) -> Option<f64> {
        match self {
            DatasetName::Synthetic
            | DatasetName::FmnistLt
            | DatasetName::MnistLt
            | DatasetName::Cifar10Lt
            | DatasetName::Cifar100Lt => Some(100.0),
            _ => None,
        }
    }
}

impl std::fmt::Display for DatasetName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DatasetName {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self> {
        Self::ALL.iter().copied().find(|d| d.as_str() == s).ok_or_else(|| {
            DataError::Invalid(format!(
                "unknown data set {s:?}; expected one of {}",
                Self::ALL.iter().map(|d| d.as_str()).collect::<Vec<_>>().join(", ")
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The downloadable sets and the default imbalance ratios, one data set at a time.
    #[test]
    fn what_each_data_set_downloads_and_its_default_tail() {
        use DatasetName as D;
        let downloadable: Vec<D> = D::ALL.into_iter().filter(|d| d.downloadable()).collect();
        assert_eq!(downloadable, [D::FmnistLt, D::MnistLt, D::Cifar10Lt, D::Cifar100Lt]);
        for d in D::ALL {
            let subsampled =
                matches!(d, D::Synthetic | D::FmnistLt | D::MnistLt | D::Cifar10Lt | D::Cifar100Lt);
            assert_eq!(d.default_imbalance(), subsampled.then_some(100.0), "{d}");
            assert_eq!(d.as_str().parse::<D>().unwrap(), d);
        }
    }
}
