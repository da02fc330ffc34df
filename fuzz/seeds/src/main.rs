//! Writes small valid seed files into `fuzz/corpus/<target>/`:
//! `cargo run --manifest-path fuzz/Cargo.toml -p srepr-fuzz-seeds`.
//!
//! Artifacts come from `lt_core`'s own writers (`SplitInfo::write`, `ArtifactWriter`); the data
//! files follow the layouts of the writers in `crates/lt-data/tests/common` (IDX, CIFAR records,
//! tar.gz), each prefixed with the mode byte its fuzz target reads first. The formats target's
//! seeds are written by each format's writer (`FeaturesWriter`, `HeadArtifact`, `Predictions`,
//! `Swag::save`, `Model::save`, `checkpoint::save`), and a small model's tensors as a plain file
//! by candle's safetensors writer, as a torchvision file would be. The folder target's input is
//! structured (`arbitrary`), so its corpus starts empty.

use std::io::Write;
use std::path::{Path, PathBuf};

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use lt_core::artifact::{ArtifactWriter, ElemType, Format};
use lt_core::formats::features::{write_values, FeaturesMeta, FeaturesWriter, SampleInfo, SampleKind, Split};
use lt_core::formats::head::HeadArtifact;
use lt_core::formats::predictions::Predictions;
use lt_core::formats::RunMeta;
use lt_core::optim::Sgd;
use lt_core::split::SplitInfo;
use lt_models::{Arch, Model};
use lt_swag::{ParamLayout, Swag};
use lt_train::checkpoint::Progress;

fn corpus(target: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("../corpus").join(target);
    std::fs::create_dir_all(&d).expect("corpus dir");
    d
}

fn put(target: &str, name: &str, bytes: &[u8]) {
    std::fs::write(corpus(target).join(format!("seed-{name}")), bytes).expect("seed");
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).expect("in memory");
    e.finish().expect("in memory")
}

fn tar(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut ar = tar::Builder::new(Vec::new());
    for (name, bytes) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        ar.append_data(&mut h, name, *bytes).expect("in memory");
    }
    ar.into_inner().expect("in memory")
}

fn idx(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8, 0, 0x08, dims.len() as u8];
    for d in dims {
        out.extend_from_slice(&d.to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}

fn with_len(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut out = (a.len() as u16).to_le_bytes().to_vec();
    out.extend_from_slice(a);
    out.extend_from_slice(b);
    out
}

fn cifar10_record(label: u8) -> Vec<u8> {
    let mut r = vec![label];
    r.extend((0..3072).map(|p| (p % 251) as u8));
    r
}

fn artifacts() {
    let dir = std::env::temp_dir().join(format!("srepr-fuzz-seeds-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let split = SplitInfo {
        dataset: "toy".into(),
        class_names: vec!["a".into(), "bé".into(), "c".into()],
        train_indices: vec![5, 3, 9, 1],
        train_labels: vec![0, 0, 1, 2],
        test_labels: vec![0, 1, 2],
        val_labels: Some(vec![2, 1]),
        val_indices: Some(vec![0, 2]),
        imbalance: Some(100.0),
        original_train_len: 10,
    };
    let p = dir.join("split.safetensors");
    split.write(&p, "0123abcd").expect("split");
    put("artifact", "split", &std::fs::read(&p).expect("read"));
    let natural = SplitInfo { imbalance: None, val_labels: None, val_indices: None, ..split };
    natural.write(&p, "").expect("split");
    put("artifact", "split-natural", &std::fs::read(&p).expect("read"));

    let mut w = ArtifactWriter::new(Format { name: "lt.features", version: 1 });
    w.meta("num_classes", "3")
        .meta_json("samples", &["swa", "swag"])
        .push_f32("head.swa.weight", &[2, 2], vec![0.5, -1.0, 2.0, f32::NAN])
        .push_f16("test.features", &[1, 2], vec![half::f16::ONE, half::f16::NEG_ONE])
        .push_u32("labels", &[3], vec![0, 1, 2])
        .push_i64("class_counts", &[3], vec![2, 1, 1])
        .push_u8("groups", &[3], vec![2, 2, 2]);
    w.push_lazy("lazy", ElemType::F64, &[1], |out| out.write_all(&1.5f64.to_le_bytes()));
    w.write(&p).expect("features-like");
    put("artifact", "every-dtype", &std::fs::read(&p).expect("read"));
    std::fs::remove_dir_all(&dir).expect("clean");
}

/// The stages' artifacts, each written by its format's own writer, as the formats target's seeds.
fn format_seeds() {
    let dir = std::env::temp_dir().join(format!("srepr-fuzz-format-seeds-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let p = dir.join("f.safetensors");
    let seed = |name: &str| put("formats", name, &std::fs::read(&p).expect("read"));
    let (classes, dim) = (3usize, 2usize);
    let samples = vec![
        SampleInfo { kind: SampleKind::Sgd, seed: None, index: None },
        SampleInfo { kind: SampleKind::Swa, seed: None, index: None },
        SampleInfo { kind: SampleKind::Swag, seed: Some(1), index: Some(0) },
    ];
    let meta = FeaturesMeta {
        num_classes: classes,
        feature_dim: dim,
        samples,
        scale: 0.5,
        half: true,
        dataset: "toy".into(),
        arch: "cifar-resnet8x2".into(),
        class_names: vec!["a".into(), "b".into(), "c".into()],
        extract_config: serde_json::json!({"batch": 2}),
        fingerprint: "f".into(),
        run_fingerprint: "r".into(),
        split_fingerprint: "s".into(),
    };
    let mut w = FeaturesWriter::new(meta, &[2, 1, 1]);
    let block = |n: usize| move |out: &mut dyn Write| write_values(out, &vec![0.25; 3 * n * dim], true);
    w.split(Split::Train, &[0, 0, 1, 2], block(4)).split(Split::Test, &[2, 1], block(2));
    let (hw, hb) = (
        Tensor::ones((classes, dim), DType::F32, &Device::Cpu),
        Tensor::zeros(classes, DType::F32, &Device::Cpu),
    );
    let (hw, hb) = (hw.expect("weight"), hb.expect("bias"));
    for kind in [SampleKind::Sgd, SampleKind::Swa] {
        w.head(kind, &hw, &hb).expect("head");
    }
    w.write(&p).expect("features");
    seed("features");

    let run = RunMeta { method: "la".into(), row: "swa-la".into(), seed: Some(0), ..RunMeta::default() };
    let head = HeadArtifact {
        weight: vec![1.0, -1.0, 0.5, 0.0, 2.0, 1.0],
        bias: vec![0.0, 0.1, -0.1],
        classes,
        dim,
        extras: Default::default(),
        meta: run.clone(),
    };
    head.write(&p).expect("head");
    seed("head");
    let pred = Predictions {
        scores: vec![2.0, 0.0, -1.0, 0.0, 1.0, 3.0],
        probabilities: false,
        labels: vec![0, 2],
        classes,
        class_counts: Some(vec![5, 2, 1]),
        class_names: None,
        meta: run,
    };
    pred.write(&p).expect("predictions");
    seed("predictions");

    let layout = ParamLayout { names: vec!["a".into(), "b".into()], shapes: vec![vec![2, 2], vec![3]] };
    let mut swag = Swag::new(layout, 2);
    for k in 0..3 {
        swag.collect(&[k as f32, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).expect("collect");
    }
    swag.save(&p, &[]).expect("swag");
    seed("swag");

    let model =
        Model::new(Arch::new("cifar-resnet8x2", classes, 1).expect("arch"), 0, &Device::Cpu).expect("model");
    model.save(&p, &[]).expect("backbone");
    seed("backbone");
    let mut tensors: HashMap<String, Tensor> =
        model.store().named_params().into_iter().map(|(n, v)| (n, v.as_detached_tensor())).collect();
    tensors.extend(model.store().named_buffers());
    candle_core::safetensors::save(&tensors, &p).expect("weights");
    seed("weights");
    let params = model.store().named_params();
    let mut opt = Sgd::new(0.9, false, 5e-4);
    let momentum = params.iter().map(|(n, v)| (n.clone(), v.as_detached_tensor().ones_like().expect("ones")));
    opt.set_buffers(momentum.collect(), &params).expect("momentum");
    let mut swag = Swag::new(ParamLayout::of(model.store().varmap()).expect("layout"), 2);
    swag.collect(&vec![0.5; swag.layout().len()]).expect("collect");
    let progress = Progress { phase_index: 1, phase: None, next_epoch: 2, step: 3 };
    lt_train::checkpoint::save(&p, &model, &opt, Some(&swag), &progress, "fp").expect("checkpoint");
    seed("checkpoint");
    std::fs::remove_dir_all(&dir).expect("clean");
}

fn idx_seeds() {
    let images = idx(&[2, 2, 2], &[0, 64, 128, 255, 1, 2, 3, 4]);
    let labels = idx(&[2], &[3, 9]);
    // Mode 0 with ndim 3 (mode >> 2 = 2) and ndim 1 (mode >> 2 = 0).
    put("idx", "images-raw", &[&[0b1000u8][..], &images].concat());
    put("idx", "labels-raw", &[&[0u8][..], &labels].concat());
    put("idx", "labels-gz", &[&[0u8][..], &gzip(&labels)].concat());
    put("idx", "images-harness-gz", &[&[0b1001u8][..], &images].concat());
    // Mode 2: a pair, 10 classes ((mode >> 4) % 12 = 9 → 10 names); 0x42 gzips both.
    put("idx", "pair", &[&[0x92u8][..], &with_len(&images, &labels)].concat());
    put("idx", "pair-gz", &[&[0xd2u8][..], &with_len(&images, &labels)].concat());
}

fn cifar_seeds() {
    let two = [cifar10_record(3), cifar10_record(9)].concat();
    // Mode 0: records count in the first byte (8 bytes read), then the records.
    let mut rec = vec![0u8, 2, 0, 0, 0, 0, 0, 0, 0];
    rec.extend_from_slice(&two);
    put("cifar", "records", &rec);
    let mut r100 = vec![0x80u8, 1, 0, 0, 0, 0, 0, 0, 0, 4, 17];
    r100.extend((0..3072).map(|p| (p % 7) as u8));
    put("cifar", "records-100", &r100);
    let names = b"airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n";
    let archive = tar(&[
        ("cifar-10-batches-bin/batches.meta.txt", names),
        ("cifar-10-batches-bin/test_batch.bin", &cifar10_record(1)),
    ]);
    put("cifar", "archive-gz", &[&[1u8][..], &gzip(&archive)].concat());
    put("cifar", "archive-tar", &[&[2u8][..], &archive].concat());
    // Mode 3: members chosen by the first byte of each chunk.
    let mut members = vec![3u8];
    members.extend(with_len(&[2, b'a', b'\n', b'b'], &with_len(&cifar10_record(0), &[])));
    put("cifar", "members", &members);
}

fn listfile_seeds() {
    put("listfile", "imagenet", b"\x0atrain/n01440764/n01440764_10026.JPEG 0\ntrain/n01443537/x.JPEG 9\n\n");
    put("listfile", "inat", b"\xc8train_val2018/Plantae/7477/3b60c9486db1d2ee875f11a669fbde4a.jpg 199\r\n");
}

/// Every preset the project ships, as the preset target's seeds.
fn preset_seeds() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../presets");
    let mut names: Vec<_> =
        std::fs::read_dir(&dir).expect("presets/").map(|e| e.expect("entry").path()).collect();
    names.sort();
    for p in names.into_iter().filter(|p| p.extension().is_some_and(|e| e == "toml")) {
        let stem = p.file_stem().expect("name").to_string_lossy().into_owned();
        put("preset", &stem, &std::fs::read(&p).expect("preset"));
    }
}

fn main() {
    preset_seeds();
    artifacts();
    format_seeds();
    idx_seeds();
    cifar_seeds();
    listfile_seeds();
    corpus("folder");
    println!("seeds written under {}", corpus("").display());
}
