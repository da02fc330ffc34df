//! Lazily decoded image files: ImageNet-LT-style list files and image folders.

use std::path::Path;
use std::sync::Arc;

use lt_data::listfile::parse_list;
use lt_data::loader::{EpochBatches, LoaderConfig};
use lt_data::{load_bundle, DataOptions, DatasetName};

fn write_jpeg(path: &Path, w: u32, h: u32, shade: u8) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([shade, (x % 256) as u8, (y % 256) as u8]));
    img.save(path).unwrap();
}

fn write_solid(path: &Path, w: u32, h: u32, rgb: [u8; 3]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::RgbImage::from_pixel(w, h, image::Rgb(rgb)).save(path).unwrap();
}

fn imagenet_lt_tree(root: &Path) {
    let d = root.join("imagenet-lt");
    let mut train = String::new();
    for i in 0..6 {
        let rel = format!("train/n{:08}/img_{i}.JPEG", i % 3);
        write_jpeg(&d.join(&rel), 300 + 10 * i, 260, 40 * i as u8);
        train.push_str(&format!("{rel} {}\n", i % 3));
    }
    std::fs::write(d.join("ImageNet_LT_train.txt"), train).unwrap();
    write_solid(&d.join("val/v0.JPEG"), 256, 300, [10, 120, 200]);
    write_jpeg(&d.join("train/n00000999/held_out.JPEG"), 64, 64, 7);
    std::fs::write(d.join("ImageNet_LT_val.txt"), "train/n00000999/held_out.JPEG 999\n").unwrap();
    std::fs::write(d.join("ImageNet_LT_test.txt"), "val/v0.JPEG 2\n\n").unwrap();
}

#[test]
fn imagenet_lt_lists_decode_with_train_and_test_transforms() {
    let tmp = tempfile::tempdir().unwrap();
    imagenet_lt_tree(tmp.path());
    let opts = DataOptions {
        data_root: Some(tmp.path().to_path_buf()),
        project_data: tmp.path().join("x"),
        image_size: 64,
        ..Default::default()
    };
    let b = load_bundle(DatasetName::ImagenetLt, &opts).unwrap();
    assert_eq!(b.num_classes(), 1000);
    assert_eq!(b.train.len(), 6);
    assert_eq!(b.val.as_ref().unwrap().labels(), &[999]);
    assert_eq!(b.test.labels(), &[2]);
    assert_eq!(b.train.sample_shape(), [3, 64, 64]);
    // 997 of the 1,000 classes have no training image here: the first ten are named.
    let warning = b.empty_classes_warning().unwrap();
    assert!(
        warning.starts_with(
            "997 of 1000 classes have no training image (3, 4, 5, 6, 7, 8, 9, 10, 11, 12 and 987 more)"
        ),
        "{warning}"
    );
    // Training batches decode on the worker threads, deterministically.
    let cfg = LoaderConfig { batch_size: 4, workers: 2, prefetch: 1, train: true, seed: 3 };
    let run = || {
        EpochBatches::new(Arc::clone(&b.train), (0..6).collect(), 0, cfg.clone(), candle_core::Device::Cpu)
            .map(|x| x.unwrap().images.flatten_all().unwrap().to_vec1::<f32>().unwrap())
            .collect::<Vec<_>>()
    };
    let a = run();
    assert_eq!(a.len(), 2);
    assert_eq!(a, run());
    assert!(a[0].iter().all(|v| v.is_finite()));
    // Test transform: resize shorter side to 73 (64*256/224), centre crop 64: every channel
    // of a solid image is the (normalised) solid colour everywhere.
    let mut out = vec![0f32; 3 * 64 * 64];
    b.test.load_into(0, false, &mut lt_core::Rng::new(0), &mut out).unwrap();
    for (c, (v, (m, s))) in
        [10.0f32, 120.0, 200.0].iter().zip([(0.485f32, 0.229f32), (0.456, 0.224), (0.406, 0.225)]).enumerate()
    {
        let want = (v / 255.0 - m) / s;
        let plane = &out[c * 64 * 64..(c + 1) * 64 * 64];
        assert!(plane.iter().all(|&x| (x - want).abs() < 0.05), "channel {c}");
    }
}

#[test]
fn list_file_errors_name_the_line() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("l.txt");
    std::fs::write(&p, "a.jpg 1\nb.jpg\n").unwrap();
    let msg = parse_list(&p, 10).unwrap_err().to_string();
    assert!(msg.contains("l.txt:2") && msg.contains("no label"), "{msg}");
    std::fs::write(&p, "a.jpg 1\nb.jpg x\n").unwrap();
    assert!(parse_list(&p, 10).unwrap_err().to_string().contains("not an integer"));
    std::fs::write(&p, "a.jpg 1\n\nb.jpg 10\n").unwrap();
    let err = parse_list(&p, 10).unwrap_err().to_string();
    assert!(err.ends_with("l.txt:3: label 10 is outside 0..10"), "{err}");
    // A byte-order mark (a list saved by a Windows editor) is not part of the first path.
    std::fs::write(&p, "\u{feff}a.jpg 1\r\nb.jpg 2\r\n").unwrap();
    let entries = parse_list(&p, 10).unwrap();
    assert_eq!((entries[0].path.to_str(), entries[1].path.to_str()), (Some("a.jpg"), Some("b.jpg")));
}

/// Every listed image is checked before anything trains (a missing test image stopped a run
/// after its stage 1): a missing one is named with its list, and a flat validation folder with
/// how to sort it; an image that is not one, by its file; one in two lists is refused.
#[test]
fn list_images_are_checked_before_anything_trains() {
    let load = |root: &Path| {
        let opts = DataOptions { data_root: Some(root.to_path_buf()), image_size: 32, ..Default::default() };
        load_bundle(DatasetName::ImagenetLt, &opts).map(|_| ()).unwrap_err().to_string()
    };
    let tmp = tempfile::tempdir().unwrap();
    imagenet_lt_tree(tmp.path());
    let d = tmp.path().join("imagenet-lt");
    // The test list names val/<class>/<file>; the folder holds val/<file>.
    std::fs::write(d.join("ImageNet_LT_test.txt"), "val/n00000002/v0.JPEG 2\n").unwrap();
    let err = load(tmp.path());
    assert!(
        err.contains("val/n00000002/v0.JPEG: listed in ImageNet_LT_test.txt, but there is no such file; ")
            && err.contains("v0.JPEG is there: sort the images into their class folders"),
        "{err}"
    );
    std::fs::write(d.join("ImageNet_LT_test.txt"), "val/v0.JPEG 2\n").unwrap();
    std::fs::write(d.join("train/n00000002/img_2.JPEG"), b"not a jpeg").unwrap();
    let err = load(tmp.path());
    assert!(err.contains("img_2.JPEG: cannot decode image: not a readable PNG or JPEG image"), "{err}");
    write_jpeg(&d.join("train/n00000002/img_2.JPEG"), 40, 40, 1);
    std::fs::write(d.join("ImageNet_LT_test.txt"), "train/n00000001/img_1.JPEG 1\n").unwrap();
    let err = load(tmp.path());
    assert!(
        err.contains(
            "train/n00000001/img_1.JPEG is listed in ImageNet_LT_train.txt and in ImageNet_LT_test.txt"
        ),
        "{err}"
    );
}

#[test]
fn missing_or_undecodable_images_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    imagenet_lt_tree(tmp.path());
    let d = tmp.path().join("imagenet-lt");
    let opts =
        DataOptions { data_root: Some(tmp.path().to_path_buf()), image_size: 32, ..Default::default() };
    let b = load_bundle(DatasetName::ImagenetLt, &opts).unwrap();
    // Files that go missing or bad after the check, while the run reads them.
    std::fs::remove_file(d.join("train/n00000001/img_1.JPEG")).unwrap();
    std::fs::write(d.join("train/n00000002/img_2.JPEG"), b"not a jpeg").unwrap();
    let mut out = vec![0f32; 3 * 32 * 32];
    let msg = b.train.load_into(1, true, &mut lt_core::Rng::new(0), &mut out).unwrap_err().to_string();
    assert!(msg.contains("img_1.JPEG"), "{msg}");
    let msg = b.train.load_into(2, false, &mut lt_core::Rng::new(0), &mut out).unwrap_err().to_string();
    assert!(msg.contains("img_2.JPEG") && msg.contains("cannot decode"), "{msg}");
    // Through the loader the error surfaces as an item, not a panic.
    let cfg = LoaderConfig { batch_size: 6, workers: 1, prefetch: 1, train: false, seed: 0 };
    let first = EpochBatches::new(Arc::clone(&b.train), (0..6).collect(), 0, cfg, candle_core::Device::Cpu)
        .next()
        .unwrap();
    assert!(first.is_err());
}

#[test]
fn image_folder_held_out_and_seeded_split() {
    let tmp = tempfile::tempdir().unwrap();
    let held = tmp.path().join("held");
    for (split, n) in [("train", 5), ("test", 2)] {
        for class in ["cat", "dog"] {
            for i in 0..n {
                write_jpeg(&held.join(split).join(class).join(format!("{i}.jpg")), 40, 30, i as u8);
            }
        }
    }
    // No validation split here (tests/folder_data.rs covers it).
    let opts = DataOptions {
        data_root: Some(held.clone()),
        image_size: 32,
        val_per_class: Some(0),
        ..Default::default()
    };
    let b = load_bundle(DatasetName::Folder, &opts).unwrap();
    assert_eq!(b.class_names, vec!["cat", "dog"]);
    assert_eq!((b.train.len(), b.test.len()), (10, 4));
    // A test fraction given for it would be ignored: it is refused, named.
    let spec = lt_data::DataSpec {
        dataset: Some("folder".into()),
        data_root: Some(held.clone()),
        test_fraction: Some(0.3),
        ..Default::default()
    };
    let msg = spec.load(None).err().unwrap().to_string();
    assert!(
        msg.starts_with("data.test_fraction must be left unset for ") && msg.ends_with("folder, got 0.3"),
        "{msg}"
    );
    let spec = lt_data::DataSpec { test_fraction: None, image_size: Some(32), ..spec };
    assert_eq!(spec.load(None).unwrap().test.len(), 4);

    let flat = tmp.path().join("flat");
    for (class, n) in [("a", 30), ("b", 6)] {
        for i in 0..n {
            write_jpeg(&flat.join(class).join(format!("{i}.png")), 8, 8, i as u8);
        }
    }
    let opts = DataOptions {
        data_root: Some(flat.clone()),
        image_size: 8,
        test_fraction: 0.2,
        seed: 1,
        val_per_class: Some(0),
        ..Default::default()
    };
    let b = load_bundle(DatasetName::Folder, &opts).unwrap();
    assert_eq!((b.train.len(), b.test.len()), (29, 7));
    let again = load_bundle(DatasetName::Folder, &opts).unwrap();
    assert_eq!(b.train_indices, again.train_indices);
    // With an imbalance ratio the folder is made long-tailed from its smallest class.
    let opts = DataOptions { imbalance: Some(4.0), ..opts };
    let b = load_bundle(DatasetName::Folder, &opts).unwrap();
    assert_eq!(b.class_counts(), vec![5, 1]);

    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let opts = DataOptions { data_root: Some(empty), ..Default::default() };
    let msg = load_bundle(DatasetName::Folder, &opts).err().unwrap().to_string();
    assert!(msg.contains("no class sub-folders"), "{msg}");
    // A train/ folder without test/ or val/ beside it is named as the cause.
    let lone = tmp.path().join("lone");
    std::fs::create_dir_all(lone.join("train/cat")).unwrap();
    image::RgbImage::new(4, 4).save(lone.join("train/cat/a.png")).unwrap();
    let opts = DataOptions { data_root: Some(lone), ..Default::default() };
    let msg = load_bundle(DatasetName::Folder, &opts).err().unwrap().to_string();
    assert!(msg.contains("train/ folder but no test/ or val/"), "{msg}");
}

/// The natural long tails refuse an imbalance ratio given through the library's own options too
/// (the table `DatasetName::unread_settings`), before looking for their files.
#[test]
fn a_fixed_long_tail_refuses_an_imbalance_ratio() {
    for name in [DatasetName::ImagenetLt, DatasetName::Inat2018] {
        let opts = DataOptions {
            imbalance: Some(10.0),
            data_root: Some("/nonexistent".into()),
            ..Default::default()
        };
        let msg = load_bundle(name, &opts).err().unwrap().to_string();
        assert!(msg.contains("has a fixed long tail; --imbalance does not apply"), "{msg}");
    }
}
