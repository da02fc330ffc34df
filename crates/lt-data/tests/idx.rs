//! IDX readers (MNIST / Fashion-MNIST), including the real Fashion-MNIST from Debian's package.

mod common;

use std::sync::Arc;

use common::*;
use lt_data::idx::{self, IdxVariant};
use lt_data::loader::{EpochBatches, LoaderConfig};
use lt_data::{load_bundle, DataError, DataOptions, DatasetName, Sampler, SamplerKind};

fn write_fmnist(dir: &std::path::Path, n_train: usize, gz: bool) {
    std::fs::create_dir_all(dir).unwrap();
    let img =
        |n: usize| idx_bytes(&[n as u32, 28, 28], &(0..n * 784).map(|i| (i % 253) as u8).collect::<Vec<_>>());
    let lab = |n: usize| idx_bytes(&[n as u32], &(0..n).map(|i| (i % 10) as u8).collect::<Vec<_>>());
    let files = [
        ("train-images-idx3-ubyte", img(n_train)),
        ("train-labels-idx1-ubyte", lab(n_train)),
        ("t10k-images-idx3-ubyte", img(100)),
        ("t10k-labels-idx1-ubyte", lab(100)),
    ];
    for (name, bytes) in files {
        if gz {
            std::fs::write(dir.join(format!("{name}.gz")), gzip(&bytes)).unwrap();
        } else {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }
}

#[test]
fn idx_files_gz_or_raw_and_search_order() {
    let tmp = tempfile::tempdir().unwrap();
    let explicit = tmp.path().join("mine");
    let project = tmp.path().join("data");
    write_fmnist(&explicit, 60_000, true);
    write_fmnist(&project.join("fashion-mnist"), 60_000, false);
    let dirs = idx::search_dirs(IdxVariant::FashionMnist, Some(&explicit), &project);
    // A data root given is the only place looked at (no fallback to another copy).
    assert_eq!(dirs, vec![explicit.clone(), explicit.join("fashion-mnist")]);
    let (train, test) = idx::load(IdxVariant::FashionMnist, &dirs, None, None).unwrap();
    assert_eq!(
        (train.len(), test.len(), train.height, train.width, train.channels),
        (60_000, 100, 28, 28, 1)
    );
    assert_eq!(train.image(1)[0], (784 % 253) as u8);
    // Without the explicit root the project copy (raw IDX) is used and gives the same content.
    let dirs2 = idx::search_dirs(IdxVariant::FashionMnist, None, &project);
    assert_eq!(dirs2.last().unwrap(), &std::path::PathBuf::from(idx::DEBIAN_FASHION_MNIST));
    let (train2, _) = idx::load(IdxVariant::FashionMnist, &dirs2[..1], None, None).unwrap();
    assert_eq!(train2.pixels, train.pixels);
    // The long-tailed bundle: 6000 ... 60 without a validation set; by default class 0 (all 6000
    // of its images selected) gives 100 of them to the validation set.
    let opts = DataOptions {
        data_root: Some(explicit),
        project_data: project,
        val_per_class: Some(0),
        ..Default::default()
    };
    let b = load_bundle(DatasetName::FmnistLt, &opts).unwrap();
    let c = b.class_counts();
    assert_eq!((c[0], c[9]), (6000, 60));
    let v = load_bundle(DatasetName::FmnistLt, &DataOptions { val_per_class: None, ..opts }).unwrap();
    assert_eq!((v.class_counts()[0], v.class_counts()[9], v.val.as_ref().unwrap().len()), (5900, 60, 1000));
}

#[test]
fn bad_idx_files_are_named_with_the_problem() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("x-idx3-ubyte");
    let mut bytes = idx_bytes(&[2, 28, 28], &[0u8; 2 * 784]);
    bytes[3] = 1; // wrong number of dimensions in the magic
    let err = idx::parse_idx(&bytes, 3, &p).unwrap_err().to_string();
    assert!(err.contains("x-idx3-ubyte") && err.contains("bad IDX magic number 0x00000801"), "{err}");
    let bytes = idx_bytes(&[2, 28, 28], &[0u8; 2 * 784 - 5]);
    let err = idx::parse_idx(&bytes, 3, &p).unwrap_err();
    assert!(matches!(err, DataError::Size { .. }), "{err}");
    assert!(err.to_string().contains("1584 bytes"), "{err}");
    let err = idx::parse_idx(&gzip(&[1, 2, 3])[..10], 3, &p).unwrap_err().to_string();
    assert!(err.contains("gzip") || err.contains("bytes"), "{err}");

    let imgs = tmp.path().join("i");
    let labs = tmp.path().join("l");
    std::fs::write(&imgs, idx_bytes(&[3, 2, 2], &[0u8; 12])).unwrap();
    std::fs::write(&labs, idx_bytes(&[3], &[1, 12, 3])).unwrap();
    let err = idx::load_pair(&imgs, &labs, (0..10).map(|c| c.to_string()).collect()).unwrap_err().to_string();
    assert!(err.contains("record 1 has label 12, outside 0..10"), "{err}");
    std::fs::write(&labs, idx_bytes(&[2], &[1, 2])).unwrap();
    let err = idx::load_pair(&imgs, &labs, (0..10).map(|c| c.to_string()).collect()).unwrap_err().to_string();
    assert!(err.contains("2 labels for 3 images"), "{err}");
}

#[test]
fn idx_download_from_loopback_mirror() {
    let tmp = tempfile::tempdir().unwrap();
    // Serve files whose MD5 is not the official one: the download must be refused.
    let body = gzip(&idx_bytes(&[1], &[0]));
    let routes = IdxVariant::Mnist
        .files()
        .iter()
        .map(|(stem, _)| (format!("/{stem}.gz"), Reply::Body(body.clone())))
        .collect();
    let (base, _) = serve(routes);
    let err =
        idx::load(IdxVariant::Mnist, &[tmp.path().join("none")], Some(tmp.path()), Some(&base)).unwrap_err();
    assert!(matches!(err, DataError::Checksum { .. }), "{err}");
    assert!(!tmp.path().join("mnist/train-images-idx3-ubyte.gz").exists());
}

/// The real Fashion-MNIST installed by `apt-get install dataset-fashion-mnist` (CI installs it).
#[test]
fn real_fashion_mnist_lt_split_and_first_batch() {
    let dir = std::path::Path::new(idx::DEBIAN_FASHION_MNIST);
    if !dir.join("train-images-idx3-ubyte.gz").is_file() {
        if std::env::var_os("LT_SKIP_REAL_DATA").is_some() {
            return;
        }
        panic!(
            "{} is missing: run `apt-get install -y dataset-fashion-mnist` (or set LT_SKIP_REAL_DATA=1)",
            dir.display()
        );
    }
    let tmp = tempfile::tempdir().unwrap();
    let opts = DataOptions { project_data: tmp.path().to_path_buf(), augment: false, ..Default::default() };
    let b = load_bundle(DatasetName::FmnistLt, &opts).unwrap();
    let c = b.class_counts();
    assert_eq!(c.len(), 10);
    assert_eq!(c[0], 5900);
    assert_eq!(c[9], 60);
    assert_eq!(b.val.as_ref().unwrap().len(), 1000);
    assert_eq!(b.test.len(), 10_000);
    // The split's fingerprint, which runs record and `cargo xtask reproduce` keys stage 1 by:
    // pinned, since any change to it trains every Fashion-MNIST-LT run again.
    assert_eq!(b.fingerprint(), "3932863ee2ac008e0753330e72ecbf2d32474160e8cf1a712d88de051dc42c77");

    // The loader's first batch (instance order 0..) matches the IDX bytes, normalised.
    let raw = std::fs::read(dir.join("train-images-idx3-ubyte.gz")).unwrap();
    let arr = idx::parse_idx(&raw, 3, dir).unwrap();
    let order: Vec<usize> = (0..8).collect();
    let cfg = LoaderConfig { batch_size: 8, workers: 2, prefetch: 1, train: false, seed: 0 };
    let batch = EpochBatches::new(Arc::clone(&b.train), order, 0, cfg, candle_core::Device::Cpu)
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(batch.images.dims(), &[8, 1, 28, 28]);
    let got = batch.images.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    for k in 0..8 {
        let original = b.train_indices[k];
        for p in 0..784 {
            let byte = arr.data[original * 784 + p];
            let want = (byte as f32 / 255.0 - 0.2860) / 0.3530;
            assert!((got[k * 784 + p] - want).abs() < 1e-5, "sample {k} pixel {p}");
        }
    }
    // Labels agree with the IDX labels too.
    let raw = std::fs::read(dir.join("train-labels-idx1-ubyte.gz")).unwrap();
    let labels = idx::parse_idx(&raw, 1, dir).unwrap();
    for k in 0..8 {
        assert_eq!(batch.label_vec[k], labels.data[b.train_indices[k]] as u32);
    }
    // A class-balanced sampler over the real split balances the classes.
    let s = Sampler::new(SamplerKind::ClassBalanced { per_class: 4 }, b.train.labels(), 10, 0).unwrap();
    let e = s.epoch(0, 4000);
    let mut h = [0usize; 10];
    for i in e {
        h[b.train.labels()[i] as usize] += 1;
    }
    assert!(h.iter().all(|&x| x == 400), "{h:?}");
}
