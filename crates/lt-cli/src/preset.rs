//! Presets: a whole pipeline recipe as a TOML file under `presets/` (embedded in the binary;
//! `--preset-file` reads a user's copy).

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use lt_data::DataSpec;
use lt_retrain::RetrainConfig;
use lt_train::extract::ExtractConfig;
use serde::{Deserialize, Serialize};

/// Report settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportSection {
    /// Which paper table stands beside ours (`imagenet-lt`).
    #[serde(default)]
    pub paper: Option<String>,
}

/// A pipeline recipe.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preset {
    /// Name.
    pub name: String,
    /// One line about it.
    pub description: String,
    /// Seeds of the full pipeline (mean ± std in the report; `cargo xtask reproduce` needs at
    /// least 1, from here or its `--seeds`; the `lt` stages run one seed each and do not read it).
    #[serde(default)]
    pub seeds: usize,
    /// Data (absent: the synthetic set).
    #[serde(default)]
    pub data: DataSpec,
    /// Stage 1.
    pub train: lt_train::TrainConfig,
    /// Stochastic representations (`seed` comes from the command line).
    #[serde(default)]
    pub extract: ExtractConfig,
    /// Stage 2: the settings shared by every row of the plan (each row sets its method,
    /// backbone and own knobs on top).
    #[serde(default)]
    pub retrain: RetrainConfig,
    /// Report.
    #[serde(default)]
    pub report: ReportSection,
}

/// The presets shipped with the project (`presets/*.toml`).
pub const EMBEDDED: [(&str, &str); 8] = [
    ("synthetic", include_str!("../../../presets/synthetic.toml")),
    ("tiny", include_str!("../../../presets/tiny.toml")),
    ("fmnist-lt", include_str!("../../../presets/fmnist-lt.toml")),
    ("cifar10-lt", include_str!("../../../presets/cifar10-lt.toml")),
    ("cifar100-lt", include_str!("../../../presets/cifar100-lt.toml")),
    ("imagenet-lt", include_str!("../../../presets/imagenet-lt.toml")),
    ("inat2018", include_str!("../../../presets/inat2018.toml")),
    ("folder", include_str!("../../../presets/folder.toml")),
];

/// Parses a preset from TOML text (`origin` names it in errors).
pub fn parse(text: &str, origin: &str) -> Result<Preset> {
    let p: Preset = match toml::from_str(text) {
        Ok(p) => p,
        Err(e) => {
            let (unknown, whole) = unknown_settings(text);
            if unknown.len() > 1 {
                bail!(
                    "preset {origin}: {}{} settings are not known (check their spelling, and the table they are \
                     in):\n  {}",
                    if whole { "" } else { "at least " },
                    unknown.len(),
                    unknown.join("\n  ")
                );
            }
            return Err(anyhow::Error::new(e).context(format!("preset {origin}")));
        }
    };
    p.data.name().with_context(|| format!("preset {origin}: [data] dataset"))?;
    p.data.validate().with_context(|| format!("preset {origin}: [data]"))?;
    p.train.validate().with_context(|| format!("preset {origin}: [train]"))?;
    p.extract.validate().with_context(|| format!("preset {origin}: [extract]"))?;
    p.retrain.validate().with_context(|| format!("preset {origin}: [retrain]"))?;
    // The table is shared by every row of the plan: a setting that tells rows apart would make
    // some rows other runs than their labels say. Most such settings are SRepr's: its row is the
    // example when it is one of those.
    let srepr = lt_retrain::rows::row("swa-srepr").into_iter();
    for r in srepr.chain(lt_retrain::rows::ROWS) {
        let differ = r.differences(&r.config(&p.retrain));
        if !differ.is_empty() {
            bail!(
                "preset {origin}: [retrain] is shared by every row of the plan, and sets what tells rows apart: \
                 row {} would not be itself ({}); leave that setting out (`lt retrain --row` runs each variant of \
                 the plan, `--name` records one of your own)",
                r.id,
                lt_core::diff::summary(&differ)
            );
        }
    }
    Ok(p)
}

/// Most unknown settings that one preset text lists (serde stops at the first).
const UNKNOWN_SHOWN: usize = 20;

/// The settings of a preset text that no table knows, in order, each as `line N, [table] key:
/// unknown field ...` (an unknown table as `line N, table [name]: ...`), and whether the search
/// saw the whole text. serde stops at the first, so each is taken away in turn (its line, or an
/// unknown table's lines) and the text read again. The search ends at the first error of another
/// kind; it stops short at a setting it cannot take away (inside an inline table, or a value over
/// several lines) and after [`UNKNOWN_SHOWN`].
fn unknown_settings(text: &str) -> (Vec<String>, bool) {
    let mut text = text.to_string();
    let mut found = Vec::new();
    loop {
        let Err(e) = toml::from_str::<Preset>(&text) else { return (found, true) };
        let Some(span) = e.span().filter(|_| e.message().starts_with("unknown field")) else {
            return (found, true);
        };
        if found.len() == UNKNOWN_SHOWN {
            return (found, false);
        }
        let start = text[..span.start].rfind('\n').map_or(0, |i| i + 1);
        let line_end = |from: usize| text[from..].find('\n').map_or(text.len(), |i| from + i);
        // Lines are only ever emptied, never removed: the numbers stay the file's.
        let line = text[..start].matches('\n').count() + 1;
        let is_header = |l: &str| l.trim_start().starts_with('[');
        let (place, end) = if is_header(&text[start..]) {
            // An unknown table: its header and its settings, up to the next header.
            let mut end = line_end(start);
            while end < text.len() && !is_header(&text[end + 1..]) {
                end = line_end(end + 1);
            }
            (format!("table {}", header(&text[start..])), end)
        } else {
            let table = text[..start].lines().rev().find(|l| is_header(l)).map(header);
            // The key as written (`lrr`, `srepr.lamda`; within an inline table `srepr.lamda` too).
            let before = &text[start..span.start];
            let key = match before.split_once('{') {
                Some((outer, _)) => {
                    format!("{}.{}", outer.trim_end().trim_end_matches('=').trim(), &text[span.clone()])
                }
                None => text[start..span.end].trim().to_string(),
            };
            (table.map_or(key.clone(), |t| format!("{t} {key}")), line_end(start))
        };
        found.push(format!("line {line}, {place}: {}", e.message()));
        let mut rest = text.clone();
        rest.replace_range(start..end, &"\n".repeat(text[start..end].matches('\n').count()));
        // A setting within an inline table, or a value over several lines, leaves text that no
        // longer reads as TOML: the search stops there.
        if text[start..span.start].contains('{') || toml::from_str::<toml::Table>(&rest).is_err() {
            return (found, false);
        }
        text = rest;
    }
}

/// A table header line without its comment (`[retrain.srepr]`).
fn header(line: &str) -> &str {
    let line = line.lines().next().unwrap_or_default();
    line.split('#').next().unwrap_or_default().trim()
}

/// An embedded preset by name.
pub fn embedded(name: &str) -> Result<Preset> {
    let (_, text) = EMBEDDED.iter().find(|(n, _)| *n == name).ok_or_else(|| {
        anyhow!(
            "unknown preset {name:?}; expected one of {}",
            EMBEDDED.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
        )
    })?;
    parse(text, name)
}

/// A preset from a file.
pub fn from_file(path: &Path) -> Result<Preset> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse(&text, &path.display().to_string())
}

/// Where a command's settings start: `--preset NAME` or `--preset-file FILE` (each command reads
/// its own section of it), or neither (the defaults).
#[derive(Args, Clone, Debug, Default)]
pub struct PresetArgs {
    /// Start from an embedded preset (the section this command reads).
    #[arg(long, value_parser = embedded_names())]
    pub preset: Option<String>,
    /// Start from a preset file (the section this command reads).
    #[arg(long, conflicts_with = "preset")]
    pub preset_file: Option<PathBuf>,
}

impl PresetArgs {
    /// The preset given, if any.
    pub fn resolve(&self) -> Result<Option<Preset>> {
        match (&self.preset, &self.preset_file) {
            (_, Some(f)) => from_file(f).map(Some),
            (Some(n), None) => embedded(n).map(Some),
            (None, None) => Ok(None),
        }
    }
}

/// The embedded presets' names, as `--preset`'s possible values (listed in its help).
fn embedded_names() -> clap::builder::PossibleValuesParser {
    clap::builder::PossibleValuesParser::new(EMBEDDED.iter().map(|(n, _)| *n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_embedded_preset_parses() {
        for (name, _) in EMBEDDED {
            let p = embedded(name).unwrap();
            assert_eq!(p.name, name);
            assert!(p.seeds >= 1);
        }
        assert!(embedded("nope").unwrap_err().to_string().contains("synthetic"));
        // The library's CIFAR-LT recipe is the presets' (lt train's default without a preset).
        for name in ["cifar10-lt", "cifar100-lt"] {
            assert_eq!(embedded(name).unwrap().train, lt_train::TrainConfig::cifar_lt(), "{name}");
        }
        let err = parse("name = 1", "x").unwrap_err();
        assert!(format!("{err:#}").contains("preset x"));
    }

    /// A preset with several misspelt settings names each of them, with its line and table; one
    /// alone keeps serde's own message, which shows the line.
    #[test]
    fn a_preset_names_every_unknown_setting_at_once() {
        let text = "name = \"mine\"\ndescription = \"d\"\nseed = 3\n[train]\nlrr = 0.1\narch = \"resnet32\"\n\
                    epochs = 10\nbatch_size = 8\nlr = 0.1\nweight_decay = 0.0\n[retrain.srepr]\nlamda = 0.5\n";
        let err = format!("{:#}", parse(text, "mine.toml").unwrap_err());
        assert!(err.starts_with("preset mine.toml: 3 settings are not known"), "{err}");
        for want in [
            "\n  line 3, seed: unknown field `seed`, expected one of `name`",
            "\n  line 5, [train] lrr: unknown field `lrr`",
            "\n  line 12, [retrain.srepr] lamda: unknown field `lamda`",
        ] {
            assert!(err.contains(want), "{want:?} in {err}");
        }
        let one = format!("{:#}", parse("name = \"m\"\nseed = 3\n", "one.toml").unwrap_err());
        assert!(one.contains("line 2, column 1") && one.contains("unknown field `seed`"), "{one}");
        let head = "name = \"m\"\ndescription = \"d\"\nseed = 3\n";
        let listed = |rest: &str| format!("{:#}", parse(&format!("{head}{rest}"), "p.toml").unwrap_err());
        // An unknown table is one finding (not each of its settings), named by its header
        // without its comment; a dotted key is named as written, CRLF endings count lines alike.
        let err =
            listed("[trian] # stage 1\r\nepochs = 10\r\nlr = 0.1\r\n[retrain] # two\r\nsrepr.lamda = 1\r\n");
        assert!(err.contains("\n  line 4, table [trian]: unknown field `trian`"), "{err}");
        assert!(err.contains("\n  line 8, [retrain] srepr.lamda: unknown field `lamda`"), "{err}");
        assert!(err.contains("3 settings are not known") && !err.contains("`epochs`,"), "{err}");
        // A setting inside an inline table, or a value over several lines, cannot be taken away:
        // the search stops there, and says that there may be more.
        let err = listed("[retrain]\nsrepr = { lamda = 1.0 }\nepoch = 2\n");
        assert!(err.contains("at least 2 settings are not known"), "{err}");
        assert!(err.contains("line 5, [retrain] srepr.lamda: unknown field `lamda`"), "{err}");
        let err = listed("[retrain.select]\ntau_gridd = [\n  1.0,\n]\n[retrain]\nepoch = 2\n");
        assert!(err.contains("at least 2 settings") && !err.contains("`epoch`"), "{err}");
        // Past UNKNOWN_SHOWN, the count says "at least".
        let many: String = (0..UNKNOWN_SHOWN + 3).map(|i| format!("x{i} = 1\n")).collect();
        let err = listed(&many);
        assert!(err.contains(&format!("at least {UNKNOWN_SHOWN} settings are not known")), "{err}");
    }

    /// The data section is checked with the rest, named; a file may leave the seeds to
    /// `cargo xtask reproduce --seeds` and the data to the synthetic default.
    #[test]
    fn a_preset_file_is_checked_section_by_section() {
        let text = |rest: &str| {
            format!(
                "name = \"mine\"\ndescription = \"\"\n\
                 [train]\narch = \"resnet32\"\nepochs = 10\nbatch_size = 8\nlr = 0.1\nweight_decay = 0.0\n{rest}"
            )
        };
        let p = parse(&text(""), "mine.toml").unwrap();
        assert_eq!((p.seeds, p.data.name().unwrap()), (0, lt_data::DatasetName::Synthetic));
        for (data, want) in [
            (
                "[data]\ndataset = \"folder\"\ntest_fraction = 0.0\n",
                "preset mine.toml: [data]: data.test_fraction must be a finite number in (0, 1), got 0",
            ),
            (
                "[data]\ndata_seed = 1\nimage_size = 64\n",
                "preset mine.toml: [data]: data.image_size must be left unset",
            ),
            ("[data]\ndataset = \"cifar7\"\n", "preset mine.toml: [data] dataset"),
            (
                "[retrain]\npredict = \"ensemble\"\n",
                "preset mine.toml: [retrain] is shared by every row of the plan, and sets what tells rows apart: \
                 row swa-srepr would not be itself (retrain.predict: \"single\" for the row, \"ensemble\" here)",
            ),
            (
                "[retrain.srepr]\nteacher = \"frozen\"\n",
                "preset mine.toml: [retrain] is shared by every row of the plan, and sets what tells rows apart: \
                 row swa-srepr would not be itself (retrain.srepr.teacher: \"online\" for the row, \"frozen\" here)",
            ),
            (
                "[retrain.srepr]\nlambda = 0.0\n",
                "preset mine.toml: [retrain] is shared by every row of the plan, and sets what tells rows apart: \
                 row swa-srepr would not be itself (retrain.srepr.lambda: \"not 0\" for the row, \"0\" here)",
            ),
        ] {
            let err = format!("{:#}", parse(&text(data), "mine.toml").unwrap_err());
            assert!(err.starts_with(want), "{err}");
        }
    }
}
