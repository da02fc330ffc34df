//! The image-folder scanner on a small directory tree built from the input (class folder names,
//! file names, file contents including broken images), then decoding and transforming what it
//! found the way the batch loader does; and the whole `folder` data set (checks, validation draw,
//! optional imbalance, the files' fingerprint), whose fingerprint must be the same on a second
//! load and on a copy of the tree.
#![no_main]

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use lt_core::Rng;
use lt_data::dataset::Dataset;
use lt_data::files::{decode_rgb, EvalTransform, ImageFileDataset, TrainTransform};
use lt_data::folder::scan_folder;
use lt_data::transform::Normalize;
use lt_data::{load_bundle, DataOptions, DatasetName};

#[derive(Arbitrary, Debug)]
enum Layout {
    /// `<root>/<class>/<file>`.
    Flat,
    /// `<root>/train/<class>/<file>` and `<root>/test/<class>/<file>`.
    TrainTest,
    /// `<root>/train/...` and `<root>/val/...`.
    TrainVal,
}

#[derive(Arbitrary, Debug)]
enum Content {
    /// Any bytes.
    Raw(Vec<u8>),
    /// A valid PNG of the given size and grey level, cut to `keep` bytes when `Some`.
    Png { w: u8, h: u8, grey: u8, keep: Option<u16> },
    /// A thin PNG (one pixel wide or high, up to 65,536 long).
    Thin { long: u16, vertical: bool },
}

#[derive(Arbitrary, Debug)]
struct File {
    held_out: bool,
    class: Vec<u8>,
    name: Vec<u8>,
    ext: u8,
    content: Content,
}

#[derive(Arbitrary, Debug)]
struct Tree {
    layout: Layout,
    empty_dirs: Vec<Vec<u8>>,
    files: Vec<File>,
    test_fraction: f64,
    seed: u64,
    imbalance: Option<f64>,
    val_per_class: Option<u8>,
    size: u8,
    resize: u8,
    jitter: Option<f32>,
}

/// A file name from fuzz bytes, or `None` when the OS could not hold it.
fn name(bytes: &[u8]) -> Option<&OsStr> {
    let ok = !bytes.is_empty()
        && bytes.len() <= 64
        && !bytes.contains(&b'/')
        && !bytes.contains(&0)
        && bytes != b"."
        && bytes != b"..";
    ok.then(|| OsStr::from_bytes(bytes))
}

fn png(w: u32, h: u32, grey: u8) -> Vec<u8> {
    let img = image::GrayImage::from_pixel(w.max(1), h.max(1), image::Luma([grey]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).expect("in memory");
    out.into_inner()
}

fn build(root: &Path, t: &Tree) {
    let split_dir = |held_out: bool| match (&t.layout, held_out) {
        (Layout::Flat, _) => root.to_path_buf(),
        (_, false) => root.join("train"),
        (Layout::TrainTest, true) => root.join("test"),
        (Layout::TrainVal, true) => root.join("val"),
    };
    for d in t.empty_dirs.iter().take(4).filter_map(|d| name(d)) {
        let _ = std::fs::create_dir_all(split_dir(false).join(d));
    }
    for f in t.files.iter().take(12) {
        let (Some(class), Some(stem)) = (name(&f.class), name(&f.name)) else { continue };
        let dir = split_dir(f.held_out).join(class);
        if std::fs::create_dir_all(&dir).is_err() {
            continue;
        }
        let ext = ["png", "jpg", "JPEG", "bmp", "webp", "txt", "PNG", ""][(f.ext % 8) as usize];
        let mut file = dir.join(stem).into_os_string();
        if !ext.is_empty() {
            file.push(".");
            file.push(ext);
        }
        let bytes = match &f.content {
            Content::Raw(b) => b.clone(),
            Content::Png { w, h, grey, keep } => {
                let mut b = png(*w as u32, *h as u32, *grey);
                if let Some(k) = keep {
                    b.truncate(*k as usize);
                }
                b
            }
            Content::Thin { long, vertical } => {
                let long = 1 + *long as u32;
                if *vertical {
                    png(1, long, 128)
                } else {
                    png(long, 1, 128)
                }
            }
        };
        let _ = std::fs::write(file, bytes);
    }
}

/// The `folder` data set of `root` with the tree's settings: loaded twice and from a copy of the
/// tree, it has one fingerprint.
fn bundle(root: &Path, t: &Tree) {
    let opts = |root: &Path| DataOptions {
        data_root: Some(root.to_path_buf()),
        image_size: 1 + t.size as u32 % 64,
        test_fraction: t.test_fraction,
        seed: t.seed,
        imbalance: t.imbalance,
        val_per_class: t.val_per_class.map(usize::from),
        ..Default::default()
    };
    let Ok(b) = load_bundle(DatasetName::Folder, &opts(root)) else { return };
    assert!(b.files.is_some());
    let again = load_bundle(DatasetName::Folder, &opts(root)).expect("loads again");
    assert_eq!(again.fingerprint(), b.fingerprint());
    let copy = tempfile::tempdir_in(srepr_fuzz::scratch()).expect("copy dir");
    copy_tree(root, copy.path());
    let copied = load_bundle(DatasetName::Folder, &opts(copy.path())).expect("the copy loads");
    assert_eq!(copied.fingerprint(), b.fingerprint(), "a copy of the folder is the same data");
}

fn copy_tree(from: &Path, to: &Path) {
    for e in std::fs::read_dir(from).expect("readable").flatten() {
        let dest = to.join(e.file_name());
        if e.path().is_dir() {
            std::fs::create_dir_all(&dest).expect("mkdir");
            copy_tree(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).expect("copy");
        }
    }
}

fuzz_target!(|t: Tree| {
    let root = tempfile::tempdir_in(srepr_fuzz::scratch()).expect("tree dir");
    build(root.path(), &t);
    bundle(root.path(), &t);
    let Ok(splits) = scan_folder(root.path(), t.test_fraction, t.seed) else { return };
    assert!(!splits.classes.is_empty() && !splits.train.is_empty());
    let classes = splits.classes.len();
    assert!(splits.train.iter().chain(&splits.test).all(|e| (e.label as usize) < classes));
    let size = t.size as u32 % 65;
    let train = TrainTransform::standard(size, t.jitter);
    // Up to ImageNet's 256 (resize) and a crop of at most 64 (to keep executions fast).
    let eval = EvalTransform { resize: t.resize as u32 + 1, crop: size };
    let entries: Vec<_> = splits.train.iter().chain(&splits.test).take(6).cloned().collect();
    for e in &entries {
        let _ = decode_rgb(&e.path);
    }
    let ds = ImageFileDataset::new(PathBuf::new(), entries, classes, train, eval, Normalize::imagenet());
    let mut out = vec![0f32; ds.sample_len()];
    let mut rng = Rng::new(t.seed);
    for i in 0..ds.len() {
        let _ = ds.load_into(i, true, &mut rng, &mut out);
        let _ = ds.load_into(i, false, &mut rng, &mut out);
    }
});
