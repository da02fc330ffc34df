//! Writes Fashion-MNIST-LT as an image folder of PNG files, the layout of the `folder` data set:
//!
//! ```sh
//! cargo run --release -p lt-data --example fmnist_folder -- OUT [CLASSES N_MAX IMBALANCE TEST_PER_CLASS]
//! ```
//!
//! Defaults: all 10 classes, 6,000 images in the head class, imbalance 100, 1,000 test images per
//! class (the whole Fashion-MNIST-LT). Reads the IDX files from `--data-root`-style locations:
//! `$LT_DATA_DIR`, `data/` and Debian's `/usr/share/datasets/fashion-mnist`.

use std::path::PathBuf;

use lt_data::folder_data::{write_longtail_folder, FolderExport};
use lt_data::idx::{self, IdxVariant};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(out) = args.first().map(PathBuf::from) else {
        anyhow::bail!("usage: fmnist_folder OUT [CLASSES N_MAX IMBALANCE TEST_PER_CLASS]");
    };
    let arg = |i: usize, d: &str| args.get(i).cloned().unwrap_or_else(|| d.to_string());
    let export = FolderExport {
        classes: arg(1, "10").parse()?,
        n_max: arg(2, "6000").parse()?,
        imbalance: arg(3, "100").parse()?,
        test_per_class: arg(4, "1000").parse()?,
    };
    let project = lt_data::bundle::default_project_data();
    let dirs = idx::search_dirs(IdxVariant::FashionMnist, None, &project);
    let (pool, test) = idx::load(IdxVariant::FashionMnist, &dirs, None, None)?;
    let written = write_longtail_folder(&pool, &test, &out, &export)?;
    println!("{} training images ({export:?}) written to {}", written.len(), out.display());
    Ok(())
}
