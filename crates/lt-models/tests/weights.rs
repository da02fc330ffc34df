//! Weight files: round trips, torchvision/timm and transformers names, the hub cache, bad input.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use lt_core::{ArtifactWriter, Format};
use lt_models::hub::{cached, fetch, HubOptions};
use lt_models::weights::transformers_to_torchvision;
use lt_models::{Arch, Model, ModelError};

fn model(arch: &str, classes: usize, seed: u64) -> Model {
    Model::new(Arch::new(arch, classes, 3).unwrap(), seed, &Device::Cpu).unwrap()
}

/// Writes a plain safetensors file (no artifact metadata) from `(name, tensor)` pairs.
fn write_plain(path: &Path, tensors: &[(String, Tensor)]) {
    let map: std::collections::HashMap<String, Tensor> = tensors.iter().cloned().collect();
    candle_core::safetensors::save(&map, path).unwrap();
}

fn all_tensors(m: &Model) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> =
        m.store().named_params().into_iter().map(|(n, v)| (n, v.as_detached_tensor())).collect();
    v.extend(m.store().named_buffers());
    v
}

fn same_weights(a: &Model, b: &Model) -> bool {
    all_tensors(a).iter().zip(all_tensors(b)).all(|((na, ta), (nb, tb))| {
        na == &nb
            && ta.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap()
                == tb.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap()
    })
}

#[test]
fn same_seed_same_model_and_save_load_roundtrip() {
    let a = model("resnet20", 10, 7);
    assert!(same_weights(&a, &model("resnet20", 10, 7)));
    assert!(!same_weights(&a, &model("resnet20", 10, 8)));
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("b.safetensors");
    a.save(&p, &[("note", "x".into())]).unwrap();
    let b = Model::from_artifact(&p, &Device::Cpu).unwrap();
    assert!(same_weights(&a, &b));
    assert_eq!(b.arch(), a.arch());
}

#[test]
fn torchvision_files_with_or_without_batch_counters_and_module_prefix() {
    let src = model("resnet18", 10, 1);
    let dir = tempfile::tempdir().unwrap();
    // timm/torchvision style with a DataParallel prefix and no num_batches_tracked, f16 weights.
    let tensors: Vec<(String, Tensor)> = all_tensors(&src)
        .into_iter()
        .filter(|(n, _)| !n.ends_with("num_batches_tracked"))
        .map(|(n, t)| (format!("module.{n}"), t.to_dtype(DType::F16).unwrap()))
        .collect();
    let p = dir.path().join("tv.safetensors");
    write_plain(&p, &tensors);
    let dst = model("resnet18", 10, 2);
    let report = dst.load_weights(&p).unwrap();
    assert!(report.missing_batch_counters);
    assert!(report.ignored.is_empty(), "{:?}", report.ignored);
    let w = dst.store().var("layer2.0.downsample.0.weight").unwrap().as_detached_tensor();
    let s = src.store().var("layer2.0.downsample.0.weight").unwrap().as_detached_tensor();
    let diff = (w - s.to_dtype(DType::F16).unwrap().to_dtype(DType::F32).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_vec0::<f32>()
        .unwrap();
    assert_eq!(diff, 0.0);
    // Built from the file: its class count read through the prefix, the same weights.
    let (built, report) = Model::from_weights("resnet18".parse().unwrap(), &p, 1000, &Device::Cpu).unwrap();
    assert_eq!((built.arch().num_classes, report.missing_batch_counters), (10, true));
    assert!(same_weights(&built, &dst));
}

#[test]
fn transformers_resnet50_names_load() {
    let src = model("resnet50", 1000, 1);
    let dir = tempfile::tempdir().unwrap();
    // Invert the map by translating every transformers-style name we generate.
    let mut tensors = Vec::new();
    for (name, t) in all_tensors(&src) {
        let hf = to_transformers(&name);
        assert_eq!(transformers_to_torchvision(&hf).as_deref(), Some(name.as_str()), "{hf}");
        tensors.push((hf, t));
    }
    tensors.push(("resnet.pooler.dummy".to_string(), Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap()));
    let p = dir.path().join("hf.safetensors");
    write_plain(&p, &tensors);
    let dst = model("resnet50", 1000, 2);
    let report = dst.load_weights(&p).unwrap();
    assert!(report.transformers_names);
    assert_eq!(report.ignored, vec!["resnet.pooler.dummy".to_string()]);
    assert!(same_weights(&src, &dst));
    let (built, report) = Model::from_weights("resnet50".parse().unwrap(), &p, 10, &Device::Cpu).unwrap();
    assert_eq!((built.arch().num_classes, report.transformers_names), (1000, true));
    assert!(same_weights(&src, &built));
}

fn to_transformers(name: &str) -> String {
    if let Some(leaf) = name.strip_prefix("conv1.") {
        return format!("resnet.embedder.embedder.convolution.{leaf}");
    }
    if let Some(leaf) = name.strip_prefix("bn1.") {
        return format!("resnet.embedder.embedder.normalization.{leaf}");
    }
    if let Some(leaf) = name.strip_prefix("fc.") {
        return format!("classifier.1.{leaf}");
    }
    let (layer, rest) = name.split_once('.').unwrap();
    let stage: usize = layer["layer".len()..].parse::<usize>().unwrap() - 1;
    let (block, rest) = rest.split_once('.').unwrap();
    let base = format!("resnet.encoder.stages.{stage}.layers.{block}");
    if let Some(r) = rest.strip_prefix("downsample.0.") {
        return format!("{base}.shortcut.convolution.{r}");
    }
    if let Some(r) = rest.strip_prefix("downsample.1.") {
        return format!("{base}.shortcut.normalization.{r}");
    }
    let (part, leaf) = rest.split_once('.').unwrap();
    let k: usize = part[part.len() - 1..].parse().unwrap();
    let kind = if part.starts_with("conv") { "convolution" } else { "normalization" };
    format!("{base}.layer.{}.{kind}.{leaf}", k - 1)
}

#[test]
fn bad_weight_files_are_refused_with_names() {
    let src = model("resnet20", 10, 1);
    let dir = tempfile::tempdir().unwrap();
    let dst = model("resnet20", 10, 2);
    let full = all_tensors(&src);

    // Missing tensor.
    let p = dir.path().join("missing.safetensors");
    write_plain(&p, &full.iter().filter(|(n, _)| n != "layer2.1.conv1.weight").cloned().collect::<Vec<_>>());
    let err = dst.load_weights(&p).unwrap_err();
    assert!(matches!(err, ModelError::MissingTensors { count: 1, .. }), "{err}");
    assert!(err.to_string().contains("layer2.1.conv1.weight"), "{err}");

    // Wrong shape.
    let p = dir.path().join("shape.safetensors");
    let mut bad = full.clone();
    for (n, t) in bad.iter_mut() {
        if n == "layer1.0.conv2.weight" {
            *t = Tensor::zeros((16, 16, 5, 5), DType::F32, &Device::Cpu).unwrap();
        }
    }
    write_plain(&p, &bad);
    let msg = dst.load_weights(&p).unwrap_err().to_string();
    assert!(
        msg.contains("layer1.0.conv2.weight")
            && msg.contains("[16, 16, 5, 5]")
            && msg.contains("[16, 16, 3, 3]"),
        "{msg}"
    );

    // Another class count.
    let p = dir.path().join("classes.safetensors");
    write_plain(&p, &all_tensors(&model("resnet20", 100, 1)));
    let msg = dst.load_weights(&p).unwrap_err().to_string();
    assert!(msg.contains("linear.weight") && msg.contains("100 classes, the model has 10"), "{msg}");

    // Wrong dtype, on a tensor set late: refused before any is set (checked below).
    let p = dir.path().join("dtype.safetensors");
    let mut bad = full.clone();
    for (n, t) in bad.iter_mut() {
        if n == "layer3.2.bn2.weight" {
            *t = Tensor::zeros(64, DType::I64, &Device::Cpu).unwrap();
        }
    }
    write_plain(&p, &bad);
    let msg = dst.load_weights(&p).unwrap_err().to_string();
    assert!(msg.contains("layer3.2.bn2.weight") && msg.contains("I64"), "{msg}");
    assert!(same_weights(&dst, &model("resnet20", 10, 2)), "a file of a wrong dtype was half loaded");

    // Truncated and non-safetensors files.
    let good = dir.path().join("good.safetensors");
    write_plain(&good, &full);
    let bytes = std::fs::read(&good).unwrap();
    let p = dir.path().join("cut.safetensors");
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    let msg = dst.load_weights(&p).unwrap_err().to_string();
    assert!(msg.contains("cut.safetensors") && msg.contains("not a valid safetensors"), "{msg}");
    let p = dir.path().join("text.safetensors");
    std::fs::write(&p, b"this is not a tensor file at all").unwrap();
    assert!(dst.load_weights(&p).unwrap_err().to_string().contains("text.safetensors"));

    // A refused file leaves the model untouched.
    assert!(same_weights(&dst, &model("resnet20", 10, 2)));

    // A backbone artifact of another kind is refused by from_artifact.
    let p = dir.path().join("other.safetensors");
    let mut w = ArtifactWriter::new(Format { name: "lt.features", version: 1 });
    w.push_f32("x", &[1], vec![0.0]);
    w.write(&p).unwrap();
    let msg = Model::from_artifact(&p, &Device::Cpu).unwrap_err().to_string();
    assert!(msg.contains("expected a `lt.backbone v1` artifact, found `lt.features` v1"), "{msg}");
}

#[test]
fn unknown_architecture_and_bad_input_shape() {
    let err = Arch::new("resnet33", 10, 3).unwrap_err().to_string();
    assert!(err.contains("resnet33"));
    let m = model("resnet20", 10, 0);
    let x = Tensor::zeros((2, 1, 32, 32), DType::F32, &Device::Cpu).unwrap();
    let err = m.infer(&x).unwrap_err().to_string();
    assert!(err.contains("expects N x 3 x H x W") && err.contains("[2, 1, 32, 32]"), "{err}");
}

/// A model larger than the machine's memory (a mistyped class count, width or depth) is an error
/// naming the parameter at which the network outgrows it, found by listing the network before a
/// value is drawn, not an aborted allocation. (Linux: the memory is `/proc/meminfo`'s; elsewhere
/// only counts beyond `usize` are refused.)
#[test]
fn a_model_larger_than_memory_is_refused_before_it_is_drawn() {
    let build = |name: &str, classes: usize| {
        Model::new(Arch::new(name, classes, 3).unwrap(), 0, &Device::Cpu).err().map(|e| e.to_string())
    };
    let typed = Model::new(Arch::new("resnet20", usize::MAX / 2, 3).unwrap(), 0, &Device::Cpu).err();
    assert!(matches!(typed, Some(ModelError::TooLarge { values: None, .. })), "{typed:?}");
    let err = build("resnet20", usize::MAX / 2).expect("beyond usize");
    assert!(err.contains("`linear.weight`") && err.contains("past the elements memory can address"), "{err}");
    assert!(build("resnet20", 10).is_none());
    if lt_core::memory::total_mib().is_none() {
        return;
    }
    let typed = Model::new(Arch::new("resnet18", 4_000_000_000, 3).unwrap(), 0, &Device::Cpu).err();
    assert!(
        matches!(&typed, Some(ModelError::TooLarge { name, values: Some(_), memory: Some(_), .. }) if name == "fc.weight"),
        "{typed:?}"
    );
    let err = build("resnet18", 4_000_000_000).expect("8 TB of classifier");
    assert!(err.contains("`fc.weight` of shape [4000000000, 512]") && err.contains("GiB of memory"), "{err}");
    let err = build("cifar-resnet8x65536", 10).expect("5 TB of convolutions");
    assert!(err.contains("`layer") && err.contains("GiB of memory"), "{err}");
    // No parameter is too large alone (151 MB at most); the network's 660 GB are.
    let err = build("cifar-resnet9998x512", 10).expect("660 GB in all");
    assert!(err.contains("`layer") && err.contains("GiB of memory"), "{err}");
    let shapes = Model::shapes(&Arch::new("resnet50", 1000, 3).unwrap()).unwrap();
    let n: usize = shapes.params.iter().map(|(_, s)| s.iter().product::<usize>()).sum();
    assert_eq!(n, 25_557_032, "torchvision's ResNet-50 parameter count");
}

/// The listing of a network ([`Model::shapes`]) is what the built network has, in every family.
#[test]
fn listed_shapes_are_the_built_networks() {
    for (arch, classes, channels) in [
        ("resnet20", 10, 3),
        ("cifar-resnet14x8", 7, 1),
        ("resnet18", 5, 3),
        ("resnet34", 4, 2),
        ("resnet50", 3, 3),
    ] {
        let m = Model::new(Arch::new(arch, classes, channels).unwrap(), 0, &Device::Cpu).unwrap();
        let mut shapes = Model::shapes(m.arch()).unwrap();
        shapes.params.sort();
        shapes.buffers.sort();
        let params: Vec<_> =
            m.store().named_params().into_iter().map(|(n, v)| (n, v.dims().to_vec())).collect();
        let buffers: Vec<_> =
            m.store().named_buffers().into_iter().map(|(n, t)| (n, t.dims().to_vec())).collect();
        assert_eq!((shapes.params, shapes.buffers), (params, buffers), "{arch}");
    }
}

/// A hub cache laid out like the real one (refs/main without a trailing newline).
fn fake_cache(root: &Path, repo: &str, file: &str, bytes: &[u8]) {
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let base = root.join(format!("models--{}", repo.replace('/', "--")));
    std::fs::create_dir_all(base.join("refs")).unwrap();
    std::fs::write(base.join("refs/main"), commit).unwrap();
    let snap = base.join("snapshots").join(commit);
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::write(snap.join(file), bytes).unwrap();
}

#[test]
fn hub_offline_cache_hits_and_misses() {
    let dir = tempfile::tempdir().unwrap();
    let src = model("resnet18", 1000, 3);
    let weights = dir.path().join("w.safetensors");
    write_plain(&weights, &all_tensors(&src));
    fake_cache(dir.path(), "timm/resnet18.tv_in1k", "model.safetensors", &std::fs::read(&weights).unwrap());
    let opts = HubOptions { cache_dir: Some(dir.path().to_path_buf()), offline: true, ..Default::default() };
    let p = fetch("timm/resnet18.tv_in1k", "model.safetensors", &opts).unwrap();
    let dst = model("resnet18", 1000, 4);
    dst.load_weights(&p).unwrap();
    assert!(same_weights(&src, &dst));
    let err = fetch("timm/resnet50.a1_in1k", "model.safetensors", &opts).unwrap_err().to_string();
    assert!(
        err.contains("timm/resnet50.a1_in1k/model.safetensors") && err.contains("offline cache"),
        "{err}"
    );
    let err = fetch("timm/resnet18.tv_in1k", "pytorch_model.bin", &opts).unwrap_err().to_string();
    assert!(err.contains("pytorch_model.bin"), "{err}");
    // A ref written with a trailing newline, and a commit pinned without a ref (as Python's
    // huggingface_hub leaves a download by commit), are found; another commit is not.
    let base = dir.path().join("models--timm--resnet18.tv_in1k");
    std::fs::write(base.join("refs/main"), "0123456789abcdef0123456789abcdef01234567\n").unwrap();
    assert_eq!(cached("timm/resnet18.tv_in1k", "model.safetensors", &opts), Some(p.clone()));
    let pinned = |rev: &str| HubOptions { revision: Some(rev.into()), ..opts.clone() };
    let at = pinned("0123456789abcdef0123456789abcdef01234567");
    assert_eq!(cached("timm/resnet18.tv_in1k", "model.safetensors", &at), Some(p));
    assert_eq!(cached("timm/resnet18.tv_in1k", "model.safetensors", &pinned(&"f".repeat(40))), None);
    assert_eq!(cached("timm/resnet18.tv_in1k", "model.safetensors", &pinned("v2")), None);
}

/// A small file cannot have a model of terabytes built for it: the class count, input channels,
/// width and depth read from a weight file are checked against the tensors it holds before the
/// model is built (they used to be taken as given: `memory allocation of 8192000000000 bytes
/// failed` from a 150-byte file).
#[test]
fn counts_read_from_a_file_are_backed_by_its_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let zeros = |shape: &[usize]| Tensor::zeros(shape, DType::F32, &Device::Cpu).unwrap();
    let family = |name: &str| name.parse::<lt_models::Family>().unwrap();
    let refused = |name: &str, tensors: &[(&str, Tensor)], arch: &str| {
        let p = dir.path().join(name);
        write_plain(&p, &tensors.iter().map(|(n, t)| (n.to_string(), t.clone())).collect::<Vec<_>>());
        Model::from_weights(family(arch), &p, 10, &Device::Cpu).unwrap_err().to_string()
    };
    // A classifier for 4e9 classes with no elements, and a stem for 4e9 input channels.
    let msg = refused("head.safetensors", &[("fc.weight", zeros(&[4_000_000_000, 0]))], "resnet18");
    assert!(
        msg.contains("head.safetensors") && msg.contains("fc.weight") && msg.contains("[*, 512]"),
        "{msg}"
    );
    let msg = refused("stem.safetensors", &[("conv1.weight", zeros(&[64, 4_000_000_000, 7, 0]))], "resnet18");
    assert!(msg.contains("conv1.weight") && msg.contains("[64, *, 7, 7]"), "{msg}");
    let msg = refused("none.safetensors", &[("linear.weight", zeros(&[0, 64]))], "resnet20");
    assert!(msg.contains("linear.weight") && msg.contains("dimension 0 is 0"), "{msg}");
    let msg = refused("nochan.safetensors", &[("conv1.weight", zeros(&[16, 0, 3, 3]))], "resnet20");
    assert!(msg.contains("conv1.weight") && msg.contains("dimension 1 is 0"), "{msg}");

    // A backbone artifact's recorded architecture must be the one its tensors hold.
    let src = model("resnet20", 10, 1);
    let good = dir.path().join("good.safetensors");
    src.save(&good, &[]).unwrap();
    let a = lt_core::Artifact::open_any(&good).unwrap();
    let with_meta = |name: &str, key: &str, value: &str| {
        let mut w = ArtifactWriter::new(lt_models::weights::BACKBONE_FORMAT);
        for (k, v) in a.metadata() {
            if !k.starts_with("__") {
                w.meta(k, if k == key { value.to_string() } else { v.clone() });
            }
        }
        for n in a.names() {
            let shape = &a.info(n).unwrap().shape;
            match a.f32(n) {
                Ok(v) => w.push_f32(n, shape, v),
                Err(_) => w.push_i64(n, shape, a.i64(n).unwrap()),
            };
        }
        let p = dir.path().join(name);
        w.write(&p).unwrap();
        Model::from_artifact(&p, &Device::Cpu).unwrap_err().to_string()
    };
    let msg = with_meta("classes.safetensors", "num_classes", "4000000000");
    assert!(msg.contains("`num_classes` = \"4000000000\"") && msg.contains("classifier has 10"), "{msg}");
    let msg = with_meta("channels.safetensors", "in_channels", "4000000000");
    assert!(msg.contains("`in_channels`") && msg.contains("stem convolution has 3"), "{msg}");
    let msg = with_meta("width.safetensors", "arch", "cifar-resnet20x4000000000");
    assert!(
        msg.contains("width.safetensors: metadata `arch`") && msg.contains("width at most 65536"),
        "{msg}"
    );
    let msg = with_meta("depth.safetensors", "arch", "cifar-resnet9998");
    assert!(msg.contains("a depth-9998 network") && msg.contains("the file has 116 tensors"), "{msg}");
    // Counts the memory holds but the file does not: refused before the network is built.
    let msg = with_meta("deeper.safetensors", "arch", "cifar-resnet62");
    assert!(
        msg.contains("deeper.safetensors") && msg.contains("resnet62") && msg.contains("layer1.3"),
        "{msg}"
    );
    let msg = with_meta("more.safetensors", "num_classes", "100");
    assert!(msg.contains("more.safetensors") && msg.contains("classifier has 10"), "{msg}");
}
