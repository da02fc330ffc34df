//! Tidy checks of the workspace's shape (rust-analyzer's idea): the crate layering, a `//!` header
//! on every Rust file, and file sizes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    xtask::workspace_root()
}

/// The workspace dependencies (`lt-*`) of every crate under `crates/`, from its `Cargo.toml`.
fn internal_deps() -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(root().join("crates")).unwrap() {
        let dir = entry.unwrap().path();
        let manifest: toml::Value =
            toml::from_str(&std::fs::read_to_string(dir.join("Cargo.toml")).unwrap()).unwrap();
        let name = manifest["package"]["name"].as_str().unwrap().to_string();
        let deps = manifest
            .get("dependencies")
            .and_then(|d| d.as_table())
            .map(|t| t.keys().filter(|k| k.starts_with("lt-")).cloned().collect())
            .unwrap_or_default();
        out.insert(name, deps);
    }
    out
}

#[test]
fn crate_layering_holds() {
    let deps = internal_deps();
    assert!(deps.len() >= 8, "found crates {:?}", deps.keys());
    let must_not: [(&str, &[&str]); 6] = [
        ("lt-core", &["lt-data", "lt-models", "lt-swag", "lt-train", "lt-retrain", "lt-metrics", "lt-cli"]),
        ("lt-retrain", &["lt-models", "lt-data", "lt-metrics", "lt-train", "lt-swag", "lt-cli"]),
        ("lt-metrics", &["lt-models", "lt-data", "lt-retrain", "lt-train", "lt-swag", "lt-cli"]),
        ("lt-swag", &["lt-models", "lt-data", "lt-train", "lt-retrain", "lt-metrics", "lt-cli"]),
        ("lt-models", &["lt-data", "lt-train", "lt-retrain", "lt-metrics", "lt-cli"]),
        ("lt-data", &["lt-models", "lt-train", "lt-retrain", "lt-metrics", "lt-cli"]),
    ];
    for (krate, forbidden) in must_not {
        let have = &deps[krate];
        for f in forbidden {
            assert!(
                !have.contains(&f.to_string()),
                "{krate} must not depend on {f} (it depends on {have:?})"
            );
        }
    }
    // The automation drives the `lt` binary; it imports no stage crate.
    let xtask: toml::Value =
        toml::from_str(&std::fs::read_to_string(root().join("xtask/Cargo.toml")).unwrap()).unwrap();
    let normal = xtask["dependencies"].as_table().unwrap();
    assert!(
        normal.keys().all(|k| !k.starts_with("lt-")),
        "xtask depends on {:?}",
        normal.keys().collect::<Vec<_>>()
    );
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            // Golden fixtures (`tests/golden`) are data; `src/golden` is code like the rest.
            let fixtures = p.ends_with("tests/golden");
            if p.file_name().is_some_and(|n| n != "target") && !fixtures {
                rust_files(&p, out);
            }
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn every_rust_file_opens_with_a_module_doc_and_stays_readable_in_size() {
    let mut files = Vec::new();
    rust_files(&root().join("crates"), &mut files);
    rust_files(&root().join("xtask"), &mut files);
    assert!(files.len() > 50, "found {} files", files.len());
    let mut missing = Vec::new();
    let mut large = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        if !text.trim_start().starts_with("//!") {
            missing.push(f.display().to_string());
        }
        let rel = f.strip_prefix(root()).unwrap().display().to_string();
        // Kernels and tests may be long; everything else is split before 500 lines.
        let exempt = rel.contains("/tests/") || rel.ends_with("tests.rs") || rel.contains("kernels");
        let lines = text.lines().count();
        if !exempt && lines > 500 {
            large.push(format!("{rel} ({lines} lines)"));
        }
    }
    assert!(missing.is_empty(), "files without a `//!` module doc: {missing:?}");
    assert!(large.is_empty(), "files over 500 lines: {large:?}");
}

/// An error variant writes its cause into its message or returns it as its `source`, not both:
/// `{:#}` and anyhow's "Caused by" would write it twice (`#[error(transparent)]` forwards both).
/// Checked for a `#[from]` or `#[source]` tuple field under a message with `{0}`, and for a
/// message that writes a field named `source` (thiserror's source by its name).
#[test]
fn no_error_writes_its_source_into_its_message_too() {
    let mut files = Vec::new();
    rust_files(&root().join("crates"), &mut files);
    let mut twice = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        for (i, pair) in lines.windows(2).enumerate() {
            let message = pair[0].starts_with("#[error(\"");
            let tuple_source = pair[1].contains("(#[from]") || pair[1].contains("(#[source]");
            if message && (pair[0].contains("{source}") || pair[0].contains("{0}") && tuple_source) {
                twice.push(format!("{}:{}", f.strip_prefix(root()).unwrap().display(), i + 1));
            }
        }
    }
    assert!(twice.is_empty(), "error variants with their source in the message too: {twice:?}");
}

/// Whether `line` (trimmed) opens a function: `fn` after any visibility (`pub`, `pub(crate)`,
/// `pub(super)`) and qualifiers (`const`, `async`, `unsafe`, `extern "C"`).
fn is_fn_head(line: &str) -> bool {
    let mut rest = line;
    let prefixes = ["pub(crate) ", "pub(super) ", "pub ", "const ", "async ", "unsafe ", "extern \"C\" "];
    while let Some(p) = prefixes.iter().find(|p| rest.starts_with(**p)) {
        rest = &rest[p.len()..];
    }
    rest.starts_with("fn ")
}

/// Lengths of the functions of a Rust source (a `fn` line to the `}` at its indentation), test
/// modules excluded.
fn function_lengths(text: &str) -> Vec<(String, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line.trim() == "#[cfg(test)]" {
            break;
        }
        let trimmed = line.trim_start();
        if !is_fn_head(trimmed) || trimmed.ends_with(';') {
            continue;
        }
        let indent = &line[..line.len() - trimmed.len()];
        let close = format!("{indent}}}");
        if let Some(end) = lines[i + 1..].iter().position(|l| *l == close) {
            out.push((trimmed.split('(').next().unwrap_or(trimmed).to_string(), end + 2));
        }
    }
    out
}

#[test]
fn no_function_is_longer_than_80_lines_outside_the_kernels() {
    let mut files = Vec::new();
    rust_files(&root().join("crates"), &mut files);
    rust_files(&root().join("xtask"), &mut files);
    let mut long = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(root()).unwrap().display().to_string();
        // The kernels (`lt-models/src/ops/`) are long loops by nature; tests may be long.
        if rel.contains("/tests/") || rel.ends_with("tests.rs") || rel.contains("lt-models/src/ops/") {
            continue;
        }
        for (name, n) in function_lengths(&std::fs::read_to_string(f).unwrap()) {
            if n > 80 {
                long.push(format!("{rel}: {name} ({n} lines)"));
            }
        }
    }
    assert!(long.is_empty(), "functions over 80 lines: {long:#?}");
}

#[test]
fn function_lengths_are_measured_to_the_closing_brace() {
    let src = "fn a() {\n    1;\n}\n\n    pub fn b(x: u8) -> u8 {\n        x\n    }\nfn c();\n";
    assert_eq!(function_lengths(src), vec![("fn a".to_string(), 3), ("pub fn b".to_string(), 3)]);
}

/// `line` as the tour and the page compare it: without a trailing `//` comment, trimmed.
fn code_of(line: &str) -> &str {
    let code = match line.find("// ") {
        // Outside a string: an even number of quotes before it.
        Some(i) if line[..i].matches('"').count().is_multiple_of(2) => &line[..i],
        _ => line,
    };
    let code = code.trim();
    if code.starts_with("//") {
        ""
    } else {
        code
    }
}

/// Every Rust snippet of `docs/library.md` is in `crates/lt-cli/examples/library_tour.rs`, which
/// `cargo test` builds and CI runs: each line of its code a line of the tour, in the snippet's
/// order (the tour's glue may stand between them), so the page shows code that compiles against
/// the crates as they are (comments aside).
#[test]
fn the_library_pages_snippets_are_lines_of_the_compiled_tour() {
    let page = std::fs::read_to_string(root().join("docs/library.md")).unwrap();
    let tour = std::fs::read_to_string(root().join("crates/lt-cli/examples/library_tour.rs")).unwrap();
    let tour: Vec<&str> = tour.lines().map(code_of).collect();
    // Each snippet: its code lines, numbered.
    type Snippet<'a> = Vec<(usize, &'a str)>;
    let (mut snippets, mut current): (Vec<Snippet>, Option<Snippet>) = (Vec::new(), None);
    for (i, line) in page.lines().enumerate() {
        let fence = line.trim();
        match current.as_mut() {
            Some(_) if fence == "```" => snippets.extend(current.take()),
            Some(s) if !code_of(line).is_empty() => s.push((i + 1, code_of(line))),
            Some(_) => {}
            None if fence.starts_with("```rust") => current = Some(Vec::new()),
            None => {}
        }
    }
    let mut missing = Vec::new();
    for snippet in &snippets {
        // Each line found after the previous one's place in the tour.
        let mut at = 0;
        for &(n, code) in snippet {
            match tour[at..].iter().position(|t| *t == code) {
                Some(k) => at += k + 1,
                None => missing.push(format!("docs/library.md:{n}: {code}")),
            }
        }
    }
    let checked: usize = snippets.iter().map(Vec::len).sum();
    assert!(snippets.len() >= 5 && checked > 30, "checked {checked} lines of {} snippets", snippets.len());
    assert!(
        missing.is_empty(),
        "snippet lines not in examples/library_tour.rs in the snippet's order:\n{}",
        missing.join("\n")
    );
}

#[test]
fn a_line_of_code_is_compared_without_its_comment() {
    assert_eq!(code_of("    let x = f(a)?; // why"), "let x = f(a)?;");
    assert_eq!(code_of("// a comment"), "");
    assert_eq!(
        code_of(r#"swag.save(path, &[("arch", "// not a comment".into())])?;"#),
        r#"swag.save(path, &[("arch", "// not a comment".into())])?;"#
    );
}
