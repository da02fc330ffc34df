//! The Markdown report of `cargo xtask bench`: the backbone table, the summary against PyTorch's
//! best layout, and the loader and stage-2 lines.

use serde_json::Value;

use super::{IsaLimit, TORCH};

/// The report's line for the loader measurement `e`; for the project's image folder (the
/// generated JPEGs), with the torchvision measurement of the same folder from `extra` and the
/// ratio.
fn loader_line(e: &Value, extra: &[Value]) -> String {
    let ips = f(e, "images_per_sec").unwrap_or(0.0);
    if e["impl"].as_str() == Some("torchvision") {
        return String::new();
    }
    let torch =
        extra.iter().find(|t| t["impl"].as_str() == Some("torchvision")).and_then(|t| f(t, "images_per_sec"));
    let versus = match (e["dataset"].as_str() == Some("folder"), torch) {
        (true, Some(t)) => {
            format!("; torchvision's DataLoader, same files and workers: {t:.0} images/s ({:.2}x)", ips / t)
        }
        _ => String::new(),
    };
    format!(
        "\nLoader ({}, batch {}, {} workers): {ips:.0} images/s{versus}.\n",
        e["augmentation"].as_str().unwrap_or(""),
        e["batch"],
        e["workers"],
    )
}

/// The number at `k` of `v`.
pub(super) fn f(v: &Value, k: &str) -> Option<f64> {
    v.get(k).and_then(|x| x.as_f64())
}

/// The report's heading: device, threads, CPU model and the method.
pub(super) fn header(threads: usize, device: &str, rounds: usize, isa: Option<IsaLimit>) -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let isa = isa.map_or(String::new(), |i| format!("{}\n\n", i.describe()));
    format!(
        "# Benchmarks ({device}, {threads} threads)\n\nCPU: {cpu}. Each implementation's best of {rounds} interleaved round(s); the kernels column gives the project's kernel set, the `gemm` crate's and the CPU features they looked at, and PyTorch's CPU capability.\n\n{isa}"
    )
}

/// Per configuration: the project against PyTorch's faster layout, throughput and peak memory.
fn summary(rows: &[Value]) -> String {
    let mut s = String::from(
        "\n| configuration | project images/s | best PyTorch images/s (layout) | project / best PyTorch | peak RSS project / that PyTorch (MiB) |\n|---|---|---|---|---|\n",
    );
    for r in rows {
        let ips = |k: &str| r.get(k).and_then(|v| f(v, "images_per_sec"));
        let best = TORCH
            .iter()
            .filter_map(|t| ips(t.key).map(|v| (t.key, t.layout, v)))
            .max_by(|a, b| a.2.total_cmp(&b.2));
        let (Some(p), Some((key, layout, t))) = (ips("project"), best) else { continue };
        let rss = |k: &str| f(&r[k], "peak_rss_mib").unwrap_or(f64::NAN);
        s.push_str(&format!(
            "| {} | {p:.1} | {t:.1} ({layout}) | {:.2}x | {:.0} / {:.0} |\n",
            r["config"].as_str().unwrap_or(""),
            p / t,
            rss("project"),
            rss(key)
        ));
    }
    s
}

pub(super) fn markdown(rows: &[Value], extra: &[Value], header: String) -> String {
    let mut s = header;
    s.push_str("| configuration | implementation | images/s | step (ms) | peak RSS (MiB) | vs project | kernels |\n|---|---|---|---|---|---|---|\n");
    for r in rows {
        let cfg = r["config"].as_str().unwrap_or("");
        let proj = f(&r["project"], "images_per_sec");
        let ours = [("project", "project ops (fused)"), ("candle", "stock candle")];
        for (key, name) in ours.into_iter().chain(TORCH.iter().map(|t| (t.key, t.name))) {
            let Some(v) = r.get(key) else { continue };
            let ips = f(v, "images_per_sec");
            let ratio = match (proj, ips) {
                (Some(p), Some(i)) if key != "project" => format!("project is {:.2}x", p / i),
                _ => "-".into(),
            };
            let gemm = v["gemm"].as_str().map_or(String::new(), |g| format!(", gemm {g}"));
            let kernels = match (v["kernels"].as_str(), v["cpu_features"].as_array()) {
                (Some(k), Some(feats)) => {
                    format!(
                        "{k}{gemm} ({})",
                        feats.iter().filter_map(|x| x.as_str()).collect::<Vec<_>>().join(" ")
                    )
                }
                (Some(k), None) => format!("{k}{gemm}"),
                _ => match (v["torch"].as_str(), v["cpu_capability"].as_str()) {
                    (Some(t), Some(c)) => format!("torch {t} ({c})"),
                    (Some(t), None) => format!("torch {t}"),
                    _ => "-".into(),
                },
            };
            s.push_str(&format!(
                "| {cfg} | {name} | {:.1} | {:.2} | {:.0} | {ratio} | {kernels} |\n",
                ips.unwrap_or(f64::NAN),
                1000.0 * f(v, "median_step_seconds").unwrap_or(f64::NAN),
                f(v, "peak_rss_mib").unwrap_or(f64::NAN)
            ));
        }
    }
    s.push_str(&summary(rows));
    for e in extra {
        match e["bench"].as_str() {
            Some("loader") => s.push_str(&loader_line(e, extra)),
            Some("retrain") => s.push_str(&format!(
                "\nStage 2 `{}` at {} size ({} x {}, {} classes, M = {}, {}): {:.2} s per epoch, peak RSS {:.0} MiB (file {:.0} MiB, memory-mapped; anonymous memory {:.0} MiB).\n",
                e["method"].as_str().unwrap_or(""),
                e["size"].as_str().unwrap_or(""),
                e["samples"],
                e["dim"],
                e["classes"],
                e["members"],
                e["dtype"].as_str().unwrap_or(""),
                f(e, "seconds_per_epoch").unwrap_or(0.0),
                f(e, "peak_rss_mib").unwrap_or(0.0),
                f(e, "file_mib").unwrap_or(0.0),
                f(e, "rss_anon_mib").unwrap_or(0.0)
            )),
            _ => {}
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_jpeg_loader_line_gives_torchvisions_rate_and_the_ratio_and_the_cifar_line_does_not() {
        let cifar = serde_json::json!({"bench": "loader", "augmentation": "pad", "batch": 128, "workers": 2, "images_per_sec": 500000.0, "dataset": "synthetic"});
        let jpeg = serde_json::json!({"bench": "loader", "augmentation": "decode", "batch": 128, "workers": 2, "images_per_sec": 600.0, "dataset": "folder"});
        let torch = serde_json::json!({"bench": "loader", "impl": "torchvision", "workers": 2, "images_per_sec": 400.0});
        let extra = [cifar.clone(), jpeg.clone(), torch.clone()];
        let line = loader_line(&jpeg, &extra);
        assert!(line.contains("600 images/s") && line.contains("400 images/s (1.50x)"), "{line}");
        assert!(!loader_line(&cifar, &extra).contains("torchvision"));
        assert_eq!(loader_line(&torch, &extra), "");
        // Without the reference, no ratio.
        assert!(!loader_line(&jpeg, &extra[..2]).contains("torchvision"));
    }
}
