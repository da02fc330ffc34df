//! The stage keys of a reproduction: what each stage's `.stage-key` is a fingerprint of.

use sha2::{Digest, Sha256};

/// SHA-256 of `parts`, each prefixed with its length (hex).
pub(super) fn sha(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    hex::encode(h.finalize())
}

/// Settings that change how a stage runs, not what it computes: the loader's threads (the
/// batches are the same whatever their number) and whether missing data are downloaded (the
/// data are keyed by their fingerprint). Left out of the stage keys, as `lt` leaves them out of
/// its fingerprints, so that another machine's core count re-runs nothing. (The data root stays
/// in: `lt extract` reads the data from where stage 1 recorded them.)
const NOT_KEYED: &[&str] = &["workers", "download"];

/// A preset section as it enters the stage keys (JSON, without [`NOT_KEYED`] settings; empty when
/// absent).
pub(super) fn section(preset: &toml::Value, name: &str) -> String {
    let keyed = |v: &toml::Value| match v {
        toml::Value::Table(t) => toml::Value::Table(
            t.iter()
                .filter(|(k, _)| !NOT_KEYED.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        other => other.clone(),
    };
    preset.get(name).map(|v| serde_json::to_string(&keyed(v)).expect("json")).unwrap_or_default()
}

/// Stage 1's key: its data and train sections, the data's identity (`lt data fingerprint`, see
/// [`super::data`]), the seed and, for a pretrained start, the weights' identity (empty without).
pub(super) fn stage1_key(data: &str, data_id: &str, train: &str, seed: u64, init: Option<&str>) -> String {
    sha(&["stage1", data, data_id, train, &seed.to_string(), init.unwrap_or_default()])
}
