//! The command lines of the user docs (README.md, docs/*.md) name commands and flags that exist:
//! every `lt ...` line of a shell block and every inline `` `lt ...` `` span is checked against
//! `lt <command> --help`, and every `cargo xtask ...` one is parsed by xtask's own command line,
//! so that a renamed or removed flag cannot stay in the docs.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

fn root() -> PathBuf {
    xtask::workspace_root()
}

/// The user docs: README.md and docs/*.md.
fn doc_files() -> Vec<PathBuf> {
    let mut files = vec![root().join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
}

/// The command lines of `program` (`lt`, `cargo xtask`) in a Markdown text, each with its line
/// number: the commands of shell blocks' lines (continuation lines joined; comments dropped;
/// lists split at `&&`, `;` and `|`) and the inline code spans of paragraphs, a span that wraps
/// onto the next line included (of alternatives `a | b`, the first); a `VAR=value` prefix and
/// brackets around optional parts (`[--init X]`) dropped.
fn commands(text: &str, program: &str) -> Vec<(usize, String)> {
    let program: Vec<&str> = program.split(' ').collect();
    let mut out = Vec::new();
    // Inside a fence: whether it is a shell block.
    let (mut fence, mut pending): (Option<bool>, Option<(usize, String)>) = (None, None);
    let mut paragraph: Vec<(usize, &str)> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.starts_with("```") {
            spans(&std::mem::take(&mut paragraph), &program, &mut out);
            fence = match fence {
                Some(_) => None,
                None => Some(matches!(trimmed, "```sh" | "```bash" | "```console")),
            };
            continue;
        }
        match fence {
            Some(true) => {
                let (n, joined) = match pending.take() {
                    Some((n, before)) => (n, format!("{before} {trimmed}")),
                    None => (i + 1, trimmed.to_string()),
                };
                match joined.strip_suffix('\\') {
                    Some(rest) => pending = Some((n, rest.trim_end().to_string())),
                    // Each command of a list, without its comment.
                    None => {
                        let code = joined.split(" #").next().unwrap_or_default();
                        out.extend(
                            code.split(['&', ';', '|']).filter_map(|c| command(c, &program)).map(|c| (n, c)),
                        );
                    }
                }
            }
            Some(false) => {}
            None if trimmed.is_empty() => spans(&std::mem::take(&mut paragraph), &program, &mut out),
            None => paragraph.push((i + 1, line)),
        }
    }
    spans(&paragraph, &program, &mut out);
    out
}

/// The commands of `program` in a paragraph's inline code spans (its lines, numbered), each with
/// the line its span starts on.
fn spans(paragraph: &[(usize, &str)], program: &[&str], out: &mut Vec<(usize, String)>) {
    let (mut inside, mut span, mut start) = (false, String::new(), 0);
    for &(n, line) in paragraph {
        for (k, piece) in line.split('`').enumerate() {
            if k > 0 {
                // A backtick: a span opens or closes.
                if inside {
                    let first = span.split(" | ").next().unwrap_or_default();
                    out.extend(command(first, program).map(|c| (start, c)));
                    span.clear();
                } else {
                    start = n;
                }
                inside = !inside;
            }
            if inside {
                span.push_str(piece);
            }
        }
        if inside {
            span.push(' ');
        }
    }
}

/// `text` as a command line of `program`, if it is one: its words, a `VAR=value` prefix and
/// brackets around optional parts dropped; the program alone is none.
fn command(text: &str, program: &[&str]) -> Option<String> {
    let text = text.replace(['[', ']'], "");
    let words: Vec<&str> = text.split_whitespace().skip_while(|w| is_assignment(w)).collect();
    (words.len() > program.len() && words.starts_with(program)).then(|| words.join(" "))
}

/// Whether a shell word sets a variable (`RUST_LOG=debug`) rather than naming a program.
fn is_assignment(word: &str) -> bool {
    word.split_once('=').is_some_and(|(name, _)| {
        !name.is_empty() && name.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
    })
}

/// A word that may name a subcommand (not a flag, a value, a path or a variable).
fn is_word(word: &str) -> bool {
    !word.is_empty() && word.chars().all(|c| c.is_ascii_lowercase() || c == '-') && !word.starts_with('-')
}

/// `lt <path> --help`, when it succeeds.
fn help(path: &[&str], cache: &mut BTreeMap<String, Option<String>>) -> Option<String> {
    let key = path.join(" ");
    cache
        .entry(key)
        .or_insert_with(|| {
            let out = Command::new(env!("CARGO_BIN_EXE_lt")).args(path).arg("--help").output().unwrap();
            out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
        })
        .clone()
}

/// Whether `help` declares flag `--name` (followed by something other than a name character).
fn lists(help: &str, name: &str) -> bool {
    let flag = format!("--{name}");
    // Only the lines that declare options (`  -h, --help`, `      --log <LOG>`), not the prose.
    help.lines().filter(|l| l.trim_start().starts_with('-')).any(|l| {
        l.match_indices(&flag).any(|(i, _)| {
            let next = l[i + flag.len()..].chars().next();
            !next.is_some_and(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
    })
}

/// What is wrong with a documented command line, if anything: a command `lt` does not have, or a
/// flag its command does not take (nor `lt` itself).
fn problem(command: &str, cache: &mut BTreeMap<String, Option<String>>) -> Option<String> {
    let words: Vec<&str> = command.split_whitespace().skip(1).collect();
    // Up to two words that may name the command (`bench backbone`), flags skipped, up to the
    // first value that cannot (`DIR`, `hub:timm/x`); the longest that `lt` takes is the command.
    let mut named = Vec::new();
    for w in words.iter().filter(|w| !w.starts_with("--")) {
        if !is_word(w) || named.len() == 2 {
            break;
        }
        named.push(*w);
    }
    let (path, text) = (0..=named.len())
        .rev()
        .find_map(|n| help(&named[..n], cache).map(|h| (&named[..n], h)))
        .expect("lt --help succeeds");
    if let Some(next) = named.get(path.len()) {
        // A command with subcommands lists them: a word it does not list is none of them.
        if text.contains("\nCommands:") && !text.contains(&format!("\n  {next} ")) {
            return Some(format!("`lt {}` has no subcommand `{next}`", path.join(" ")));
        }
    }
    let global = help(&[], cache).expect("lt --help succeeds");
    let unknown: Vec<String> = words
        .iter()
        .filter_map(|w| w.strip_prefix("--"))
        .map(|f| f.split('=').next().unwrap_or(f))
        .filter(|f| !f.is_empty() && !lists(&text, f) && !lists(&global, f))
        .map(|f| format!("--{f}"))
        .collect();
    (!unknown.is_empty()).then(|| format!("`lt {}` takes no {}", path.join(" "), unknown.join(", ")))
}

#[test]
fn the_docs_command_lines_name_flags_that_exist() {
    let mut cache = BTreeMap::new();
    let (mut checked, mut wrong) = (0, Vec::new());
    for file in doc_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        for (line, command) in commands(&text, "lt") {
            checked += 1;
            if let Some(p) = problem(&command, &mut cache) {
                let name = file.strip_prefix(root()).unwrap_or(&file).display().to_string();
                wrong.push(format!("{name}:{line}: {command}\n    {p}"));
            }
        }
    }
    assert!(checked > 50, "found {checked} command lines");
    assert!(wrong.is_empty(), "{} documented command lines are wrong:\n{}", wrong.len(), wrong.join("\n"));
}

/// Every documented `cargo xtask` line parses, but for its values: placeholders (`DIR`, `N`) may
/// not be values of their flags, and `$VAR` or `...` stand for what the reader fills in.
#[test]
fn the_docs_cargo_xtask_lines_parse() {
    let (mut checked, mut wrong) = (0, Vec::new());
    for file in doc_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        for (line, command) in commands(&text, "cargo xtask") {
            checked += 1;
            if let Some(p) = xtask_problem(&command) {
                let name = file.strip_prefix(root()).unwrap_or(&file).display().to_string();
                wrong.push(format!("{name}:{line}: {command}\n    {p}"));
            }
        }
    }
    assert!(checked > 20, "found {checked} command lines");
    assert!(wrong.is_empty(), "{} documented command lines are wrong:\n{}", wrong.len(), wrong.join("\n"));
}

/// What `cargo xtask`'s parser says of a documented command line: an argument or task it does not
/// have (an unparsable value is the reader's to fill in).
fn xtask_problem(command: &str) -> Option<String> {
    use clap::error::ErrorKind;
    use clap::Parser;
    let words = command.split_whitespace().skip(2).filter(|w| !w.starts_with('$') && *w != "...");
    match xtask::cli::Cli::try_parse_from(std::iter::once("cargo xtask").chain(words)) {
        Err(e) if matches!(e.kind(), ErrorKind::UnknownArgument | ErrorKind::InvalidSubcommand) => {
            Some(e.to_string().lines().next().unwrap_or_default().to_string())
        }
        _ => None,
    }
}

/// The checker itself: it finds shell lines and inline spans, and refuses what `lt` lacks.
#[test]
fn the_checker_finds_commands_and_refuses_what_lt_lacks() {
    let text =
        "Run `lt train --resume` or:\n\n```sh\nRUST_LOG=debug lt retrain --row swa-la \\\n  --features f\n\
                cargo xtask reproduce\nlt train --out r && lt extract --run r # both\n```\n";
    let listed = commands(text, "lt");
    let found: Vec<(usize, &str)> = listed.iter().map(|(n, c)| (*n, c.as_str())).collect();
    assert_eq!(
        found,
        [
            (1, "lt train --resume"),
            (4, "lt retrain --row swa-la --features f"),
            (7, "lt train --out r"),
            (7, "lt extract --run r")
        ]
    );
    // A span that wraps onto the next line, one behind a variable, one of alternatives.
    let text = "See `lt bench\nbackbone --profile` and `LT_KERNELS=avx2 lt bench backbone --tf32`,\n\
                `lt eval | lt report --runs` too.\n\nNext paragraph.";
    let spanned = commands(text, "lt");
    let found: Vec<(usize, &str)> = spanned.iter().map(|(n, c)| (*n, c.as_str())).collect();
    assert_eq!(found, [(1, "lt bench backbone --profile"), (2, "lt bench backbone --tf32"), (3, "lt eval")]);
    let mut cache = BTreeMap::new();
    assert_eq!(problem("lt train --resume --out DIR", &mut cache), None);
    // A flag its help mentions in prose only is not one of its flags.
    assert_eq!(problem("lt bench --device", &mut cache).unwrap(), "`lt bench` takes no --device");
    assert_eq!(problem("lt --plain bench backbone --profile", &mut cache), None);
    assert_eq!(problem("lt backbone init hub:timm/x --cached-only", &mut cache), None);
    assert_eq!(problem("lt train --resum", &mut cache).unwrap(), "`lt train` takes no --resum");
    assert_eq!(problem("lt retrain --row x --lamda 1", &mut cache).unwrap(), "`lt retrain` takes no --lamda");
    assert_eq!(
        problem("lt bench nope --steps 1", &mut cache).unwrap(),
        "`lt bench` has no subcommand `nope`"
    );
}
