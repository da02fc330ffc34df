//! The `folder` data set: validation split, bad input (empty class, unreadable, cut-short and
//! non-image files, mixed sizes and colour modes, a test-only class), and Fashion-MNIST-LT written as PNG
//! files read back bit for bit.

use std::path::{Path, PathBuf};

use lt_core::Rng;
use lt_data::files::{EvalTransform, ImageFileDataset, TrainTransform};
use lt_data::folder_data::{class_folder_name, write_longtail_folder, FolderExport};
use lt_data::idx::{self, IdxVariant};
use lt_data::transform::Normalize;
use lt_data::{load_bundle, DataOptions, Dataset, DatasetName, InMemoryDataset};

fn grey(path: &Path, w: u32, h: u32, v: u8) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::GrayImage::from_pixel(w, h, image::Luma([v])).save(path).unwrap();
}

fn folder(root: &Path, size: u32, val: Option<usize>) -> DataOptions {
    DataOptions {
        data_root: Some(root.to_path_buf()),
        image_size: size,
        val_per_class: val,
        ..Default::default()
    }
}

fn refused(opts: &DataOptions) -> String {
    match load_bundle(DatasetName::Folder, opts) {
        Ok(_) => panic!("loaded"),
        Err(e) => e.to_string(),
    }
}

/// `train/<class>/i.png` with `counts[c]` images, and 2 test images per class.
fn tree(root: &Path, counts: &[usize]) {
    for (c, &n) in counts.iter().enumerate() {
        for i in 0..n {
            grey(&root.join("train").join(format!("c{c}")).join(format!("{i}.png")), 6, 6, i as u8);
        }
        for i in 0..2 {
            grey(&root.join("test").join(format!("c{c}")).join(format!("{i}.png")), 6, 6, i as u8);
        }
    }
}

#[test]
fn a_folder_gets_a_seeded_validation_split_from_its_training_images_as_balanced_as_its_classes_allow() {
    let tmp = tempfile::tempdir().unwrap();
    tree(tmp.path(), &[30, 12, 8]);
    let b = load_bundle(DatasetName::Folder, &folder(tmp.path(), 6, Some(3))).unwrap();
    let val = b.val.as_ref().expect("a validation set");
    assert_eq!(lt_data::longtail::class_counts(val.labels(), 3), vec![3, 3, 3]);
    assert_eq!(b.class_counts(), vec![27, 9, 5]);
    let (t, v) = (b.train_indices.clone(), b.val_indices.clone().unwrap());
    assert!(v.iter().all(|i| !t.contains(i)), "validation images are not trained on");
    assert_eq!(b.split_info().val_labels.unwrap().len(), 9);
    // Seeded: the same seed gives the same split, another seed another one.
    let again = load_bundle(DatasetName::Folder, &folder(tmp.path(), 6, Some(3))).unwrap();
    assert_eq!((again.train_indices, again.val_indices), (b.train_indices.clone(), b.val_indices.clone()));
    let other = DataOptions { seed: 7, ..folder(tmp.path(), 6, Some(3)) };
    assert_ne!(load_bundle(DatasetName::Folder, &other).unwrap().val_indices, b.val_indices);
    // The default (20 per class) is lowered, class by class, so that each keeps half its images;
    // the smallest class does not lower the others'.
    let d = load_bundle(DatasetName::Folder, &folder(tmp.path(), 6, None)).unwrap();
    assert_eq!(d.class_counts(), vec![15, 6, 4]);
    assert_eq!(lt_data::longtail::class_counts(d.val.as_ref().unwrap().labels(), 3), vec![15, 6, 4]);
    // A class of one image cannot give any; the others still do.
    let one = tempfile::tempdir().unwrap();
    tree(one.path(), &[5, 1]);
    let b = load_bundle(DatasetName::Folder, &folder(one.path(), 6, None)).unwrap();
    assert_eq!(lt_data::longtail::class_counts(b.val.as_ref().unwrap().labels(), 2), vec![2, 0]);
    assert_eq!(b.class_counts(), vec![3, 1]);
    // Only when no class can give one is there no validation set (stage 2 uses its defaults).
    let ones = tempfile::tempdir().unwrap();
    tree(ones.path(), &[1, 1]);
    let b = load_bundle(DatasetName::Folder, &folder(ones.path(), 6, None)).unwrap();
    assert!(b.val.is_none() && b.val_indices.is_none());
    assert_eq!(b.class_counts(), vec![1, 1]);
}

/// A copy of the folder tree `from` at `to`.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        let dest = to.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_tree(&p, &dest);
        } else {
            std::fs::copy(&p, &dest).unwrap();
        }
    }
}

#[test]
fn the_split_fingerprint_sees_a_changed_image_but_not_a_moved_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    tree(&a, &[6, 4]);
    let load = |root: &Path| load_bundle(DatasetName::Folder, &folder(root, 6, Some(1))).unwrap();
    let first = load(&a);
    assert!(first.files.is_some(), "a folder's files are fingerprinted");
    // A copy elsewhere is the same data; a file that is not an image is not read.
    copy_tree(&a, &b);
    std::fs::write(b.join("train/c0/notes.txt"), "not an image").unwrap();
    assert_eq!(load(&b).fingerprint(), first.fingerprint());
    // Another image under the same name, in training or test, is other data, though the split's
    // indices and labels are the same.
    for changed in ["train/c0/2.png", "test/c1/0.png"] {
        let c = tmp.path().join(format!("c-{}", changed.replace('/', "-")));
        copy_tree(&a, &c);
        grey(&c.join(changed), 9, 7, 200);
        let other = load(&c);
        assert_eq!(other.split_info().train_indices, first.split_info().train_indices);
        assert_eq!(other.split_info().test_labels, first.split_info().test_labels);
        assert_ne!(other.fingerprint(), first.fingerprint(), "{changed} changed");
    }
}

#[test]
fn an_empty_class_or_a_test_only_class_is_an_error_naming_the_folder() {
    let tmp = tempfile::tempdir().unwrap();
    tree(tmp.path(), &[4, 4]);
    std::fs::create_dir_all(tmp.path().join("train/empty")).unwrap();
    std::fs::write(tmp.path().join("train/empty/readme.txt"), "no images").unwrap();
    let msg = refused(&folder(tmp.path(), 6, Some(0)));
    assert!(msg.contains("train/empty") && msg.contains("class `empty` has no training images"), "{msg}");
    assert!(msg.contains(".jpg, .jpeg, .png"), "{msg}");

    let tmp = tempfile::tempdir().unwrap();
    tree(tmp.path(), &[4, 4]);
    grey(&tmp.path().join("test/zebra/0.png"), 6, 6, 1);
    let msg = refused(&folder(tmp.path(), 6, Some(0)));
    assert!(msg.contains("test/zebra") && msg.contains("has no training folder"), "{msg}");
}

#[test]
fn hidden_folders_are_no_classes_and_ambiguous_layouts_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    tree(tmp.path(), &[4, 4]);
    // A notebook's checkpoints folder beside the classes, with an image in it, is not a class.
    grey(&tmp.path().join("train/.ipynb_checkpoints/0.png"), 6, 6, 1);
    grey(&tmp.path().join("test/.ipynb_checkpoints/0.png"), 6, 6, 1);
    let b = load_bundle(DatasetName::Folder, &folder(tmp.path(), 6, Some(0))).unwrap();
    assert_eq!(b.class_counts(), vec![4, 4]);
    // Both test/ and val/ beside train/: which is the test set is not guessed.
    grey(&tmp.path().join("val/c0/0.png"), 6, 6, 1);
    let msg = refused(&folder(tmp.path(), 6, Some(0)));
    assert!(msg.contains("both test/ and val/"), "{msg}");
    // A file for the root.
    let file = tmp.path().join("train/c0/0.png");
    let msg = refused(&folder(&file, 6, Some(0)));
    assert!(msg.contains(&file.display().to_string()) && msg.contains("a file, not a directory"), "{msg}");
    // A flat folder with no share held out for testing would have no test set.
    let flat = tempfile::tempdir().unwrap();
    for c in 0..2 {
        for i in 0..4 {
            grey(&flat.path().join(format!("c{c}/{i}.png")), 6, 6, i as u8);
        }
    }
    let opts = |test_fraction| DataOptions { test_fraction, ..folder(flat.path(), 6, Some(0)) };
    assert!(refused(&opts(0.0)).contains("data.test_fraction must be a finite number in (0, 1), got 0"));
    assert_eq!(load_bundle(DatasetName::Folder, &opts(0.25)).unwrap().test.len(), 2);
    // Each class keeps a training image, whatever the fraction; macOS's hidden `._` files beside
    // the photos are no images.
    assert_eq!(load_bundle(DatasetName::Folder, &opts(0.9)).unwrap().train.len(), 2);
    std::fs::write(flat.path().join("c0/._0.png"), b"\x00\x05\x16\x07 AppleDouble").unwrap();
    assert_eq!(load_bundle(DatasetName::Folder, &opts(0.25)).unwrap().train.len(), 6);
}

#[test]
fn unreadable_images_are_named_before_training_and_other_files_are_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    tree(tmp.path(), &[4, 4]);
    // A file without an image extension is skipped (and logged), not an error.
    std::fs::write(tmp.path().join("train/c0/notes.txt"), "hello").unwrap();
    std::fs::write(tmp.path().join("train/c0/Thumbs.db"), [0u8; 9]).unwrap();
    let b = load_bundle(DatasetName::Folder, &folder(tmp.path(), 6, Some(0))).unwrap();
    assert_eq!(b.class_counts(), vec![4, 4]);
    // A file with an image extension that does not decode is refused at load time, named.
    for (name, bytes) in [
        ("broken.png", b"\x89PNG\r\n\x1a\nnot really".to_vec()),
        ("text.jpg", b"just some text".to_vec()),
        ("empty.jpeg", vec![]),
        // WebP and BMP have image extensions but this build decodes only PNG and JPEG.
        ("photo.webp", b"RIFF\x1a\x00\x00\x00WEBPVP8 ".to_vec()),
    ] {
        let path = tmp.path().join("test/c1").join(name);
        std::fs::write(&path, &bytes).unwrap();
        let msg = refused(&folder(tmp.path(), 6, Some(0)));
        assert!(msg.contains(&path.display().to_string()) && msg.contains("PNG or JPEG"), "{name}: {msg}");
        std::fs::remove_file(&path).unwrap();
    }
}

#[test]
fn a_png_cut_short_is_named_before_training_and_trailing_bytes_after_a_complete_image_are_not() {
    let tmp = tempfile::tempdir().unwrap();
    tree(tmp.path(), &[4, 4]);
    // Noise, so that the image data fill most of each file.
    let noisy = image::RgbImage::from_fn(48, 48, |x, y| {
        let v = (x * 7919 + y * 104_729) as u8;
        image::Rgb([v, v.wrapping_mul(3), v.wrapping_mul(5)])
    });
    let load = || load_bundle(DatasetName::Folder, &folder(tmp.path(), 6, Some(0)));
    for ext in ["png", "jpg"] {
        let path = tmp.path().join("test/c1").join(format!("noisy.{ext}"));
        noisy.save(&path).unwrap();
        let whole = std::fs::read(&path).unwrap();
        // Whole, and with bytes after its end (as some cameras write), the file loads.
        load().unwrap();
        std::fs::write(&path, [whole.as_slice(), b"trailing bytes"].concat()).unwrap();
        load().unwrap();
        // Cut short, the header alone still reads; the loader's decoder refuses a PNG (named at
        // load time) and fills in a JPEG (which loads, as the loader reads it).
        std::fs::write(&path, &whole[..whole.len() * 6 / 10]).unwrap();
        assert!(image::ImageReader::open(&path)
            .unwrap()
            .with_guessed_format()
            .unwrap()
            .into_dimensions()
            .is_ok());
        let loader_reads = lt_data::files::decode_rgb(&path).is_ok();
        assert_eq!(loader_reads, ext == "jpg", "{ext}");
        match load() {
            Err(e) => {
                let msg = e.to_string();
                assert!(
                    ext == "png" && msg.contains(&path.display().to_string()) && msg.contains("cut short"),
                    "{msg}"
                );
            }
            Ok(_) => assert!(loader_reads, "{ext}: accepted a file the loader cannot decode"),
        }
        std::fs::remove_file(&path).unwrap();
    }
    // A complete PNG under a .jpg name with bytes after its end is read by its content, as the
    // loader reads it.
    let path = tmp.path().join("test/c1/named.jpg");
    noisy.save_with_format(&path, image::ImageFormat::Png).unwrap();
    let whole = std::fs::read(&path).unwrap();
    std::fs::write(&path, [whole.as_slice(), b"trailing bytes"].concat()).unwrap();
    load().unwrap();
}

#[test]
fn images_of_mixed_sizes_and_colour_modes_load_as_rgb() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("train/mixed");
    std::fs::create_dir_all(&d).unwrap();
    grey(&d.join("grey.png"), 5, 9, 200);
    image::RgbaImage::from_pixel(17, 4, image::Rgba([10, 20, 30, 0])).save(d.join("rgba.png")).unwrap();
    image::ImageBuffer::<image::Luma<u16>, _>::from_pixel(3, 3, image::Luma([40_000u16]))
        .save(d.join("grey16.png"))
        .unwrap();
    image::RgbImage::from_pixel(40, 30, image::Rgb([1, 2, 3])).save(d.join("rgb.jpg")).unwrap();
    let cmyk = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cmyk-12x10.jpg");
    std::fs::copy(cmyk, d.join("cmyk.jpg")).unwrap();
    for name in ["grey.png", "rgb.jpg"] {
        std::fs::create_dir_all(tmp.path().join("test/mixed")).unwrap();
        std::fs::copy(d.join(name), tmp.path().join("test/mixed").join(name)).unwrap();
    }
    let b = load_bundle(DatasetName::Folder, &folder(tmp.path(), 8, Some(0))).unwrap();
    assert_eq!((b.train.len(), b.train.sample_shape()), (5, [3, 8, 8]));
    let mut out = vec![0f32; 3 * 8 * 8];
    for i in 0..b.train.len() {
        for train in [true, false] {
            b.train.load_into(i, train, &mut Rng::new(i as u64), &mut out).unwrap();
            assert!(out.iter().all(|v| v.is_finite()));
        }
    }
}

#[test]
fn class_folders_sort_in_label_order() {
    assert_eq!(class_folder_name(0, "T-shirt/top", 10), "0-T-shirt-top");
    assert_eq!(class_folder_name(7, "x", 12), "07-x");
    assert_eq!(class_folder_name(0, "a", 1), "0-a");
}

/// Fashion-MNIST-LT written as PNG files reads back as the same images and labels, bit for bit
/// at the same transform (an identity resize and the same normalisation).
#[test]
fn fashion_mnist_lt_as_png_folder_reads_back_bit_identical() {
    let dirs = vec![PathBuf::from("/usr/share/datasets/fashion-mnist")];
    if !dirs[0].join("train-images-idx3-ubyte.gz").exists() {
        if std::env::var_os("LT_SKIP_REAL_DATA").is_some() {
            return;
        }
        panic!("Fashion-MNIST is missing: run `apt-get install -y dataset-fashion-mnist`");
    }
    let (pool, test) = idx::load(IdxVariant::FashionMnist, &dirs, None, None).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let export = FolderExport { classes: 4, n_max: 50, imbalance: 10.0, test_per_class: 5 };
    let written = write_longtail_folder(&pool, &test, tmp.path(), &export).unwrap();
    assert_eq!(written.len(), 50 + 23 + 10 + 5, "a real long tail");
    let b = load_bundle(DatasetName::Folder, &folder(tmp.path(), 28, Some(0))).unwrap();
    assert_eq!(b.class_names[0], "0-T-shirt-top");
    assert_eq!(b.class_counts(), vec![50, 23, 10, 5]);
    // The same normalisation on each of the folder's three (equal) channels.
    let f = Normalize::fashion_mnist();
    let norm = Normalize { mean: vec![f.mean[0]; 3], std: vec![f.std[0]; 3] };
    let idx_set = InMemoryDataset::new(pool.select(&written), lt_data::transform::Augment::None, f);
    let entries = train_entries(tmp.path(), &b.class_names);
    let files = ImageFileDataset::new(
        PathBuf::new(),
        entries.clone(),
        4,
        TrainTransform::standard(28, None),
        EvalTransform { resize: 28, crop: 28 },
        norm,
    );
    let (mut a, mut c) = (vec![0f32; 28 * 28], vec![0f32; 3 * 28 * 28]);
    for (k, e) in entries.iter().enumerate() {
        let original: usize = e.path.file_stem().unwrap().to_str().unwrap().parse().unwrap();
        let j = written.iter().position(|&w| w == original).expect("a written image");
        assert_eq!(e.label, pool.labels[original], "{}", e.path.display());
        idx_set.load_into(j, false, &mut Rng::new(0), &mut a).unwrap();
        files.load_into(k, false, &mut Rng::new(0), &mut c).unwrap();
        for ch in 0..3 {
            let plane = &c[ch * 784..(ch + 1) * 784];
            assert!(plane.iter().zip(&a).all(|(x, y)| x.to_bits() == y.to_bits()), "{}", e.path.display());
        }
    }
}

/// The training entries of a folder, in the folder reader's order.
fn train_entries(root: &Path, classes: &[String]) -> Vec<lt_data::files::ImageEntry> {
    let s = lt_data::folder::scan_folder(root, 0.2, 0).unwrap();
    assert_eq!(s.classes, classes);
    s.train
}
