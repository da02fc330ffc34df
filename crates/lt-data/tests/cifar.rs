//! CIFAR readers, the LDAM-DRW long-tailed selection and the verified downloader.

mod common;

use common::*;
use lt_data::cifar::{self, CifarVariant};
use lt_data::download::{download_verified, RemoteFile};
use lt_data::{load_bundle, DataError, DataOptions, DatasetName};

#[test]
fn cifar10_from_directory_and_archive_agree_and_lt_split_matches_ldam() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cifar-10-batches-bin");
    write_cifar10_dir(&dir);
    let from_dir = cifar::load_dir(&dir, CifarVariant::Cifar10).unwrap();
    assert_eq!(from_dir.train.len(), 50_000);
    assert_eq!(from_dir.test.len(), 10_000);
    assert_eq!(from_dir.train.class_names[9], "truck");
    // Record 12,345 lives in batch 2 at position 2,345: label 5, pixels (g*31 + p) % 256.
    assert_eq!(from_dir.train.labels[12_345], 5);
    assert_eq!(
        from_dir.train.image(12_345)[..3],
        [(12_345 * 31 % 256) as u8, ((12_345 * 31 + 1) % 256) as u8, ((12_345 * 31 + 2) % 256) as u8]
    );

    let archive_dir = tmp.path().join("arch");
    std::fs::create_dir_all(&archive_dir).unwrap();
    std::fs::write(archive_dir.join("cifar-10-binary.tar.gz"), cifar10_archive()).unwrap();
    let from_archive =
        cifar::load_archive(&archive_dir.join("cifar-10-binary.tar.gz"), CifarVariant::Cifar10).unwrap();
    assert_eq!(from_archive.train.pixels, from_dir.train.pixels);
    assert_eq!(from_archive.test.labels, from_dir.test.labels);

    // The bundle finds the directory under --data-root and builds the rho=100 split.
    // Without a validation set (`val_per_class` 0) the split is LDAM-DRW's, bit for bit.
    let opts = DataOptions {
        data_root: Some(tmp.path().to_path_buf()),
        project_data: tmp.path().join("none"),
        val_per_class: Some(0),
        ..Default::default()
    };
    let b = load_bundle(DatasetName::Cifar10Lt, &opts).unwrap();
    assert_eq!(b.class_counts(), vec![5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]);
    assert_eq!(b.train.len(), 12_406);
    assert!(b.val.is_none());
    // Selection: class 0's positions in file order are 0, 10, 20, ...; numpy's seed-0 shuffle of
    // 5,000 positions starts 398, 3833, ... so the first chosen indices are 10 times those.
    assert_eq!(&b.train_indices[..4], &[3980, 38330, 48360, 45720]);

    // The default: 100 validation images per class from the unused ones; class 0 has none unused
    // and gives the last 100 of its selection, every other class trains on exactly LDAM's images.
    let v = load_bundle(DatasetName::Cifar10Lt, &DataOptions { val_per_class: None, ..opts }).unwrap();
    assert_eq!(v.class_counts(), vec![4900, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]);
    assert_eq!(&v.train_indices[..4900], &b.train_indices[..4900]);
    assert_eq!(&v.train_indices[4900..], &b.train_indices[5000..]);
    let val = v.val.as_ref().unwrap();
    assert_eq!(lt_data::longtail::class_counts(val.labels(), 10), vec![100; 10]);
    let vi = v.val_indices.as_ref().unwrap();
    assert_eq!(&vi[..100], &b.train_indices[4900..5000]);
    assert!(vi.iter().all(|i| !v.train_indices.contains(i)));
}

#[test]
fn cifar100_fine_labels_and_bad_files() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cifar-100-binary");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("train.bin"), cifar100_file(50_000)).unwrap();
    std::fs::write(dir.join("test.bin"), cifar100_file(10_000)).unwrap();
    let s = cifar::load_dir(&dir, CifarVariant::Cifar100).unwrap();
    assert_eq!(s.train.labels[..3], [0, 1, 2]);
    assert_eq!(s.train.labels[199], 99);
    let opts = DataOptions {
        data_root: Some(tmp.path().to_path_buf()),
        val_per_class: Some(0),
        ..Default::default()
    };
    let b = load_bundle(DatasetName::Cifar100Lt, &opts).unwrap();
    assert_eq!(b.train.len(), 10_847);
    // The default validation set: 20 per class; only class 0 (500 = all its images) gives 20.
    let v =
        load_bundle(DatasetName::Cifar100Lt, &DataOptions { val_per_class: None, ..opts.clone() }).unwrap();
    assert_eq!((v.train.len(), v.val.as_ref().unwrap().len()), (10_827, 2000));

    // Truncated test file.
    let mut t = cifar100_file(10_000);
    t.truncate(t.len() - 100);
    std::fs::write(dir.join("test.bin"), &t).unwrap();
    let err = cifar::load_dir(&dir, CifarVariant::Cifar100).unwrap_err();
    assert!(matches!(err, DataError::Size { .. }));
    let msg = err.to_string();
    assert!(
        msg.contains("test.bin") && msg.contains("30740000 bytes (10000 records of 3074 bytes)"),
        "{msg}"
    );

    // A fine label out of range, reported with the record number.
    let mut t = cifar100_file(10_000);
    t[3074 * 17 + 1] = 100;
    std::fs::write(dir.join("test.bin"), &t).unwrap();
    let msg = cifar::load_dir(&dir, CifarVariant::Cifar100).unwrap_err().to_string();
    assert!(msg.contains("test.bin: record 17 has label 100, outside 0..100"), "{msg}");

    // Missing file.
    std::fs::remove_file(dir.join("test.bin")).unwrap();
    let msg = cifar::load_dir(&dir, CifarVariant::Cifar100).unwrap_err().to_string();
    assert!(msg.contains("test.bin") && msg.contains("not found"), "{msg}");
}

#[test]
fn missing_cifar_names_where_it_looked_and_how_to_get_it() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = DataOptions {
        data_root: Some(tmp.path().join("mine")),
        project_data: tmp.path().join("data"),
        ..Default::default()
    };
    let err = load_bundle(DatasetName::Cifar10Lt, &opts).err().unwrap();
    let msg = err.to_string();
    assert!(msg.contains("mine: no such directory") && msg.contains("--download"), "{msg}");
    // Data not there (`lt data fingerprint --available-only` tells it from data that are wrong).
    assert!(err.is_absent(), "{err:?}");
    // An existing but empty root is the only place looked at: no fallback to the project copy.
    std::fs::create_dir_all(tmp.path().join("mine")).unwrap();
    let msg = load_bundle(DatasetName::Cifar10Lt, &opts).err().unwrap().to_string();
    assert!(msg.contains("mine") && !msg.contains(&format!("{}/data", tmp.path().display())), "{msg}");
    // Without a root, the project's data directory is searched and named.
    let opts = DataOptions { data_root: None, ..opts };
    let msg = load_bundle(DatasetName::Cifar10Lt, &opts).err().unwrap().to_string();
    assert!(msg.contains("data") && msg.contains("--download"), "{msg}");
}

#[test]
fn downloader_verifies_checksums_survives_cuts_and_extracts_atomically() {
    let archive = cifar10_archive();
    let md5 = md5_hex(&archive);
    let mut corrupt = archive.clone();
    let mid = corrupt.len() / 2;
    corrupt[mid] ^= 0xff;
    let (base, log) = serve(vec![
        ("/good/cifar-10-binary.tar.gz".into(), Reply::Body(archive.clone())),
        ("/bad/cifar-10-binary.tar.gz".into(), Reply::Body(corrupt)),
        ("/cut/cifar-10-binary.tar.gz".into(), Reply::Cut(archive.clone(), archive.len() / 3)),
    ]);
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    let nothing_left =
        |root: &std::path::Path| !root.exists() || std::fs::read_dir(root).unwrap().next().is_none();

    // Connection cut mid-way: error, nothing that looks like a data set.
    let remote =
        |dir: &str| RemoteFile { url: format!("{base}/{dir}/cifar-10-binary.tar.gz"), md5: md5.clone() };
    let err = cifar::fetch_from(CifarVariant::Cifar10, &root, &remote("cut")).unwrap_err();
    assert!(matches!(err, DataError::Download { .. }), "{err}");
    assert!(nothing_left(&root), "a cut download left files behind");

    // Corrupted archive: checksum error, nothing left.
    let err = cifar::fetch_from(CifarVariant::Cifar10, &root, &remote("bad")).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, DataError::Checksum { .. }) && msg.contains(&md5), "{msg}");
    assert!(nothing_left(&root));

    // The official checksum refuses a re-packed archive.
    let err = cifar::fetch(CifarVariant::Cifar10, &root, Some(&format!("{base}/good"))).unwrap_err();
    assert!(err.to_string().contains("c32a1d4ab5d03f1284b67883e8d87530"), "{err}");
    assert!(nothing_left(&root));

    // Good archive: verified, extracted, readable; a second fetch downloads nothing.
    let dir = cifar::fetch_from(CifarVariant::Cifar10, &root, &remote("good")).unwrap();
    assert_eq!(dir, root.join("cifar-10-batches-bin"));
    assert!(dir.join("data_batch_5.bin").is_file());
    let s = cifar::load_dir(&dir, CifarVariant::Cifar10).unwrap();
    assert_eq!(s.train.len(), 50_000);
    let requests = log.lock().unwrap().len();
    cifar::fetch_from(CifarVariant::Cifar10, &root, &remote("good")).unwrap();
    assert_eq!(log.lock().unwrap().len(), requests, "a verified archive is not downloaded again");

    // A plain file download with a 404.
    let err = download_verified(
        &RemoteFile { url: format!("{base}/nope"), md5: md5.clone() },
        &tmp.path().join("x"),
    )
    .unwrap_err();
    assert!(err.to_string().contains("404"), "{err}");
}

#[test]
fn extraction_failure_leaves_no_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("broken.tar.gz");
    let mut bytes = cifar10_archive();
    bytes.truncate(bytes.len() / 2);
    std::fs::write(&archive, &bytes).unwrap();
    let dest = tmp.path().join("out");
    let err = lt_data::download::extract_tar_gz_atomic(&archive, &dest, 1).unwrap_err();
    assert!(err.to_string().contains("broken.tar.gz"), "{err}");
    assert!(!dest.exists());
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1, "only the archive remains");
}

/// A member named to climb out of the destination (`../`, as a hostile or broken archive may
/// hold) is refused with its name: nothing is written outside, and no destination appears.
#[test]
fn extraction_refuses_a_member_outside_the_destination() {
    let tmp = tempfile::tempdir().unwrap();
    let mut builder =
        tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
    let data = b"not yours";
    let mut header = tar::Header::new_gnu();
    // The name written directly: `set_path` itself refuses `..`.
    let name = b"cifar-10-batches-bin/../../escaped.bin";
    header.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name);
    header.set_size(data.len() as u64);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    builder.append(&header, &data[..]).unwrap();
    let archive = tmp.path().join("hostile.tar.gz");
    std::fs::write(&archive, builder.into_inner().unwrap().finish().unwrap()).unwrap();
    let dest = tmp.path().join("deep").join("out");
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    let err = lt_data::download::extract_tar_gz_atomic(&archive, &dest, 1).unwrap_err().to_string();
    assert!(err.contains("hostile.tar.gz") && err.contains("unsafe member path ../../escaped.bin"), "{err}");
    assert!(!dest.exists());
    let mut left: Vec<_> = walk(tmp.path());
    left.sort();
    assert_eq!(left, ["deep", "hostile.tar.gz"], "nothing written beside the archive");
}

/// The entries under `dir`, relative, directories included.
fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        out.push(p.strip_prefix(dir).unwrap().display().to_string());
        if p.is_dir() {
            out.extend(
                walk(&p).into_iter().map(|s| format!("{}/{s}", p.file_name().unwrap().to_string_lossy())),
            );
        }
    }
    out
}
