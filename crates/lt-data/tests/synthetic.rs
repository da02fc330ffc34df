//! The synthetic set's split fingerprint: every generator setting and the seed count, and the
//! default set keeps the fingerprint runs recorded before they did.

use lt_data::{load_bundle, DataOptions, DatasetName, SyntheticConfig};

fn fingerprint(opts: &DataOptions) -> String {
    load_bundle(DatasetName::Synthetic, opts).unwrap().fingerprint()
}

#[test]
fn the_generator_settings_and_seed_are_part_of_the_fingerprint() {
    let small = SyntheticConfig { n_max: 30, val_per_class: 2, test_per_class: 3, ..Default::default() };
    let base = DataOptions { synthetic: small.clone(), ..Default::default() };
    let first = fingerprint(&base);
    assert_eq!(fingerprint(&base), first, "deterministic");
    // Each changes the images, not the labels or indices.
    let others = [
        DataOptions { seed: 3, ..base.clone() },
        DataOptions { synthetic: SyntheticConfig { size: 16, ..small.clone() }, ..base.clone() },
        DataOptions { synthetic: SyntheticConfig { noise: 0.2, ..small.clone() }, ..base.clone() },
    ];
    for other in &others {
        let (a, b) = (
            load_bundle(DatasetName::Synthetic, other).unwrap(),
            load_bundle(DatasetName::Synthetic, &base).unwrap(),
        );
        assert_eq!((a.train_indices.clone(), a.class_counts()), (b.train_indices.clone(), b.class_counts()));
        assert_ne!(fingerprint(other), first, "{:?} seed {}", other.synthetic, other.seed);
    }
}

/// The default synthetic set (the `synthetic` preset's, imbalance 100) fingerprints as it did
/// before the generator counted: `cargo xtask reproduce` keys stage 1 by it.
#[test]
fn the_default_set_keeps_its_fingerprint() {
    let opts = DataOptions { imbalance: Some(100.0), ..Default::default() };
    assert_eq!(fingerprint(&opts), "a937d121d4ac3f2f707fa9c5673141fceec31e41e46433ce103af1504f9c6a2a");
}
