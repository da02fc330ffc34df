//! `lt backbone`: inspect backbones, run them on inputs, and resolve pretrained starts.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::{Args, Subcommand};
use lt_core::{Artifact, ArtifactWriter, Format};
use lt_models::hub::{fetch, HubOptions};
use lt_models::{Arch, Family, Model};
use lt_train::init::InitWeights;

/// Where weights come from.
#[derive(Args, Clone, Debug)]
pub struct WeightSource {
    /// A safetensors file (torchvision/timm or transformers names, or an `lt` backbone artifact).
    #[arg(long, conflicts_with = "hub")]
    pub weights: Option<PathBuf>,
    /// A Hugging Face hub model repository, e.g. `timm/resnet50.tv_in1k` (from `HF_ENDPOINT`
    /// where it names a mirror).
    #[arg(long)]
    pub hub: Option<String>,
    /// File in the hub repository.
    #[arg(long, default_value = "model.safetensors")]
    pub hub_file: String,
    /// Hub revision (branch, tag or commit).
    #[arg(long)]
    pub revision: Option<String>,
    /// Only read the hub cache, never the network (also `HF_HUB_OFFLINE=1`).
    #[arg(long)]
    pub offline: bool,
    /// Hub cache directory (default: `HF_HUB_CACHE`, `HF_HOME/hub`, `~/.cache/huggingface/hub`).
    #[arg(long)]
    pub hub_cache: Option<PathBuf>,
}

impl WeightSource {
    /// The local weight file, fetching from the hub when asked.
    pub fn resolve(&self) -> Result<Option<PathBuf>> {
        if let Some(w) = &self.weights {
            return Ok(Some(w.clone()));
        }
        if let Some(repo) = &self.hub {
            let opts = HubOptions {
                cache_dir: self.hub_cache.clone(),
                offline: self.offline,
                revision: self.revision.clone(),
                endpoint: None,
            };
            return Ok(Some(fetch(repo, &self.hub_file, &opts)?));
        }
        Ok(None)
    }
}

/// `lt backbone ...`
#[derive(Args)]
pub struct BackboneArgs {
    #[command(subcommand)]
    command: BackboneCommand,
}

#[derive(Subcommand)]
enum BackboneCommand {
    /// Print the parameter count and every parameter's and buffer's shape.
    Info {
        /// Architecture: resnet20/32/44/56/110, `cifar-resnet<depth>[x<width>]` (depth 6n + 2 up to
        /// 10,000, width up to 65,536), resnet18/34/50.
        #[arg(long)]
        arch: String,
        /// Classes of the head (read from the weights when given).
        #[arg(long, default_value_t = 1000)]
        classes: usize,
        /// Input channels (read from the weights when given).
        #[arg(long, default_value_t = 3)]
        in_channels: usize,
        #[command(flatten)]
        source: WeightSource,
    },
    /// Run a backbone in eval mode on `input` (N x C x H x W) and write `features` and `logits`.
    Run {
        /// Architecture.
        #[arg(long)]
        arch: String,
        #[command(flatten)]
        source: WeightSource,
        /// Safetensors file with an f32 tensor named `input`.
        #[arg(long)]
        input: PathBuf,
        /// Output safetensors file.
        #[arg(long)]
        output: PathBuf,
    },
    /// Resolve a pretrained start as `lt train --init` does (fetching a hub file into the cache
    /// unless offline) and print its identity as JSON: spec, path, repo, commit, sha256 and the
    /// `identity` that enters the run's fingerprint.
    Init {
        /// `hub:<org>/<name>[@revision][:file]` or a safetensors file.
        spec: String,
        /// Only read the hub cache: print `null` for a hub file it does not hold yet.
        #[arg(long)]
        cached_only: bool,
    },
}

const RUN_FORMAT: Format = Format { name: "lt.backbone-output", version: 1 };

fn build(arch: &str, classes: usize, in_channels: usize, source: &WeightSource) -> Result<Model> {
    let family: Family = arch.parse()?;
    match source.resolve()? {
        Some(path) => {
            let (m, report) = Model::from_weights(family, &path, classes, &Device::Cpu)
                .with_context(|| format!("loading {}", path.display()))?;
            if report.transformers_names {
                tracing::info!("translated transformers parameter names");
            }
            if !report.ignored.is_empty() {
                tracing::warn!(
                    "{} tensor(s) in the file were not used, e.g. {}",
                    report.ignored.len(),
                    report.ignored[0]
                );
            }
            Ok(m)
        }
        None => Ok(Model::new(Arch::new(arch, classes, in_channels)?, 0, &Device::Cpu)?),
    }
}

/// Runs `lt backbone`.
pub fn run(args: BackboneArgs) -> Result<()> {
    match args.command {
        BackboneCommand::Info { arch, classes, in_channels, source } => {
            let m = build(&arch, classes, in_channels, &source)?;
            let a = m.arch();
            println!(
                "{}: {} classes, {} input channels, feature dimension {}",
                a.family.name(),
                a.num_classes,
                a.in_channels,
                m.feature_dim()
            );
            println!("parameters: {}", m.num_params());
            for (name, var) in m.store().named_params() {
                println!("  {name:<48} {:?}", var.dims());
            }
            println!("buffers:");
            for (name, t) in m.store().named_buffers() {
                println!("  {name:<48} {:?}", t.dims());
            }
            Ok(())
        }
        BackboneCommand::Init { spec, cached_only } => {
            let init = if cached_only {
                InitWeights::resolve_cached(&spec)?
            } else {
                Some(InitWeights::resolve(&spec)?)
            };
            let json = match init {
                Some(w) => {
                    let mut v = serde_json::to_value(&w)?;
                    v["identity"] = w.identity().into();
                    v
                }
                None => serde_json::Value::Null,
            };
            println!("{}", serde_json::to_string(&json)?);
            Ok(())
        }
        BackboneCommand::Run { arch, source, input, output } => {
            if source.weights.is_none() && source.hub.is_none() {
                bail!("`lt backbone run` needs --weights FILE or --hub REPO");
            }
            let m = build(&arch, 1000, 3, &source)?;
            let a = Artifact::open_any(&input).with_context(|| format!("reading {}", input.display()))?;
            let info = a.expect_shape("input", &[None, Some(m.arch().in_channels), None, None])?;
            if info.numel() == 0 {
                bail!("{}: tensor `input` is empty", input.display());
            }
            let x = candle_core::Tensor::from_vec(a.f32("input")?, info.shape.clone(), &Device::Cpu)?;
            let (features, logits) = m.infer(&x)?;
            let mut w = ArtifactWriter::new(RUN_FORMAT);
            w.meta("arch", m.arch().family.name());
            w.push_tensor("features", &features)?.push_tensor("logits", &logits)?;
            w.write(&output).with_context(|| format!("writing {}", output.display()))?;
            println!(
                "features {:?} and logits {:?} written to {}",
                features.dims(),
                logits.dims(),
                output.display()
            );
            Ok(())
        }
    }
}
