//! The preset parser (`lt --preset-file`): TOML into the typed sections, then every section's
//! validation, on arbitrary text. A preset that parses must serialise and parse again.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../crates/lt-cli/src/preset.rs"]
mod preset;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match preset::parse(&text, "fuzz.toml") {
        Ok(p) => {
            let again = toml::to_string(&p).expect("a parsed preset serialises");
            preset::parse(&again, "fuzz-again.toml").expect("a serialised preset parses");
        }
        Err(e) => assert!(format!("{e:#}").contains("fuzz.toml"), "{e:#}"),
    }
});
