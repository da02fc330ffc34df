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

/// Settings that change how a stage runs, not what it computes (the loader's threads: the
/// batches are the same whatever their number): left out of the stage keys, as `lt` leaves them
/// out of its fingerprints, so that another machine's core count re-runs nothing.
const NOT_KEYED: &[&str] = &["workers"];

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

/// Stage 1's key: its data and train sections, the seed and, for a pretrained start, the
/// weights' identity (absent otherwise, so that keys from before `init` existed stay valid).
pub(super) fn stage1_key(data: &str, train: &str, seed: u64, init: Option<&str>) -> String {
    let seed = seed.to_string();
    match init {
        Some(id) => sha(&["stage1", data, train, &seed, id]),
        None => sha(&["stage1", data, train, &seed]),
    }
}
