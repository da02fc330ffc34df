//! A small weight file cannot have a large network built for it. A test binary of its own, so
//! that the process's peak memory is this test's alone.

use candle_core::Device;
use lt_core::ArtifactWriter;
use lt_models::weights::BACKBONE_FORMAT;
use lt_models::Model;

/// A 7.7 KB backbone artifact recording `cifar-resnet98x128` (about 100 million parameters),
/// whose classifier and stem have the right shapes (in bytes, not floats) and whose other
/// tensors are empty: it is refused from the listing of that network, before the 389 MiB of the
/// network are drawn (which is what happened when only the depth, classifier and stem were
/// checked).
#[test]
fn a_small_file_is_refused_before_the_network_it_records_is_built() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("small.safetensors");
    let mut w = ArtifactWriter::new(BACKBONE_FORMAT);
    w.meta("arch", "cifar-resnet98x128").meta("num_classes", "1").meta("in_channels", "1");
    w.push_u8("linear.weight", &[1, 512], vec![0; 512]);
    w.push_u8("conv1.weight", &[128, 1, 3, 3], vec![0; 1152]);
    for i in 0..96 {
        w.push_u8(&format!("pad.{i}"), &[0], Vec::new());
    }
    w.write(&p).unwrap();
    assert!(std::fs::metadata(&p).unwrap().len() < 10_000);
    let before = lt_core::memory::peak_rss_mib();
    let err = Model::from_artifact(&p, &Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("small.safetensors") && err.contains("bn1.weight"), "{err}");
    if let (Some(before), Some(after)) = (before, lt_core::memory::peak_rss_mib()) {
        assert!(after - before < 100.0, "peak memory {before:.0} -> {after:.0} MiB: the network was built");
    }
}
