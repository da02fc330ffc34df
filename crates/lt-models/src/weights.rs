//! Weight files: safetensors with torchvision/timm names (with or without
//! `num_batches_tracked`), transformers-style ResNet-50 names, and the project's own backbone
//! artifact.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use lt_core::artifact::KEY_FINGERPRINT;
use lt_core::{Artifact, ArtifactWriter, Format};

use crate::arch::{Arch, Family};
use crate::error::{ModelError, Result};
use crate::model::Model;

/// Artifact kind of a saved backbone.
pub const BACKBONE_FORMAT: Format = Format { name: "lt.backbone", version: 1 };

/// What a weight load did.
#[derive(Clone, Debug, Default)]
pub struct LoadReport {
    /// Tensors loaded.
    pub loaded: usize,
    /// File tensors the model has no use for.
    pub ignored: Vec<String>,
    /// Whether names were translated from transformers' ResNet layout.
    pub transformers_names: bool,
    /// Whether `num_batches_tracked` was absent (and left at zero).
    pub missing_batch_counters: bool,
    /// Why the classifier was left as initialised instead of loaded (the file's is for another
    /// number of classes, or it has none); only [`Model::load_pretrained`] does that.
    pub head_reinitialised: Option<String>,
}

/// Translates a transformers ResNet name (`microsoft/resnet-50`) to torchvision's.
pub fn transformers_to_torchvision(name: &str) -> Option<String> {
    if let Some(rest) = name.strip_prefix("resnet.embedder.embedder.") {
        return if rest == "convolution.weight" {
            Some("conv1.weight".into())
        } else {
            rest.strip_prefix("normalization.").map(|leaf| format!("bn1.{leaf}"))
        };
    }
    if let Some(rest) = name.strip_prefix("classifier.1.") {
        return Some(format!("fc.{rest}"));
    }
    let rest = name.strip_prefix("resnet.encoder.stages.")?;
    let mut it = rest.splitn(4, '.');
    let stage: usize = it.next()?.parse().ok()?;
    if it.next()? != "layers" {
        return None;
    }
    let block: usize = it.next()?.parse().ok()?;
    let tail = it.next()?;
    let prefix = format!("layer{}.{block}", stage + 1);
    if let Some(t) = tail.strip_prefix("shortcut.") {
        return if t == "convolution.weight" {
            Some(format!("{prefix}.downsample.0.weight"))
        } else {
            t.strip_prefix("normalization.").map(|leaf| format!("{prefix}.downsample.1.{leaf}"))
        };
    }
    let t = tail.strip_prefix("layer.")?;
    let (k, leaf) = t.split_once('.')?;
    let k: usize = k.parse().ok()?;
    if leaf == "convolution.weight" {
        Some(format!("{prefix}.conv{}.weight", k + 1))
    } else {
        leaf.strip_prefix("normalization.").map(|l| format!("{prefix}.bn{}.{l}", k + 1))
    }
}

/// Model names of a weight file's tensors.
struct NameMap {
    /// Whether the file uses transformers' ResNet names.
    transformers: bool,
    /// Model name -> file name.
    map: HashMap<String, String>,
    /// File tensors without a model name.
    untranslated: Vec<String>,
}

impl NameMap {
    fn of(a: &Artifact) -> Self {
        let transformers = a.names().any(|n| n.starts_with("resnet.embedder."));
        let (mut map, mut untranslated) = (HashMap::new(), Vec::new());
        for file_name in a.names() {
            let model_name = if transformers {
                transformers_to_torchvision(file_name)
            } else {
                Some(file_name.strip_prefix("module.").unwrap_or(file_name).to_string())
            };
            match model_name {
                Some(m) => {
                    map.insert(m, file_name.to_string());
                }
                None => untranslated.push(file_name.to_string()),
            }
        }
        Self { transformers, map, untranslated }
    }

    /// File tensors the model did not use, sorted.
    fn ignored(&self, a: &Artifact, params: &[(String, Var)], buffers: &[(String, Tensor)]) -> Vec<String> {
        let used: HashSet<&String> = params
            .iter()
            .map(|(n, _)| &self.map[n])
            .chain(buffers.iter().filter_map(|(n, _)| self.map.get(n)))
            .collect();
        let mut ignored = self.untranslated.clone();
        ignored.extend(a.names().filter(|n| !used.contains(&n.to_string())).map(|n| n.to_string()));
        ignored.sort();
        ignored.dedup();
        ignored
    }
}

/// Checks the shapes of the buffers present in the file (`num_batches_tracked` may be any
/// single value).
fn check_buffer_shapes(
    path: &Path,
    a: &Artifact,
    names: &NameMap,
    buffers: &[(String, Tensor)],
) -> Result<()> {
    for (name, t) in buffers {
        let Some(file_name) = names.map.get(name) else { continue };
        let found = a.info(file_name)?.shape.clone();
        let ok = found == t.dims()
            || (name.ends_with(".num_batches_tracked") && found.iter().product::<usize>() == 1);
        if !ok {
            return Err(ModelError::Shape {
                path: path.to_path_buf(),
                name: file_name.clone(),
                expected: t.dims().to_vec(),
                found,
            });
        }
    }
    Ok(())
}

fn float_tensor(a: &Artifact, file_name: &str, shape: &[usize], device: &Device) -> Result<Tensor> {
    let v = a.f32(file_name)?;
    Ok(Tensor::from_vec(v, shape, device)?)
}

/// Number of classes of the classifier stored in a weight file for `family` (torchvision,
/// CIFAR or transformers names), if the file has one. The classifier must be `[classes, D]`
/// with `D` the family's feature dimension and at least one class.
pub fn head_classes(path: &Path, family: &Family) -> Result<Option<usize>> {
    head_classes_in(&Artifact::open_any(path)?, family)
}

/// Input channels of the stem convolution stored in a weight file for `family`, if present. The
/// stem must have the family's output channels and kernel ([`Family::stem`]) and at least one
/// input channel.
pub fn stem_channels(path: &Path, family: &Family) -> Result<Option<usize>> {
    stem_channels_in(&Artifact::open_any(path)?, family)
}

// The shapes' other dimensions are checked, not only read past: they make the count read from
// the file a count of tensors the file holds, so that a small file cannot have a model of
// terabytes built for it.
fn head_classes_in(a: &Artifact, family: &Family) -> Result<Option<usize>> {
    let (w, _) = family.head_names();
    for name in [w.to_string(), format!("module.{w}"), "classifier.1.weight".to_string()] {
        if a.contains(&name) {
            let classes = a.expect_shape(&name, &[None, Some(family.feature_dim())])?.shape[0];
            if classes == 0 {
                return Err(a.bad_value(&name, "a classifier for no classes").into());
            }
            return Ok(Some(classes));
        }
    }
    Ok(None)
}

fn stem_channels_in(a: &Artifact, family: &Family) -> Result<Option<usize>> {
    let (out, k) = family.stem();
    for name in ["conv1.weight", "module.conv1.weight", "resnet.embedder.embedder.convolution.weight"] {
        if a.contains(name) {
            let channels = a.expect_shape(name, &[Some(out), None, Some(k), Some(k)])?.shape[1];
            if channels == 0 {
                return Err(a.bad_value(name, "a stem convolution with no input channel").into());
            }
            return Ok(Some(channels));
        }
    }
    Ok(None)
}

/// Refuses, before anything is built, an architecture recorded in a backbone artifact that the
/// file cannot hold: its classifier and stem must be in the file with the recorded class and
/// channel counts, and a depth-`d` network has `d` layers with weights, so at least `d` tensors.
fn check_recorded_arch(a: &Artifact, arch: &Arch) -> Result<()> {
    let family = &arch.family;
    let recorded = [
        ("num_classes", arch.num_classes, head_classes_in(a, family)?, "classifier"),
        ("in_channels", arch.in_channels, stem_channels_in(a, family)?, "stem convolution"),
    ];
    for (key, value, held, what) in recorded {
        if held != Some(value) {
            let held = held.map_or_else(|| "none".to_string(), |n| n.to_string());
            return Err(a.bad_meta(key, format!("{value}, but the file's {what} has {held}")).into());
        }
    }
    let depth = match *family {
        Family::Cifar { depth, .. } | Family::Torchvision { depth } => depth,
    };
    let tensors = a.names().count();
    if tensors < depth {
        return Err(a.bad_meta("arch", format!("depth {depth} in a file of {tensors} tensors")).into());
    }
    Ok(())
}

impl Model {
    /// Builds `family` with the class count and input channels found in a weight file
    /// (`default_classes` / 3 channels when the file does not say) and loads the weights. A
    /// backbone artifact carries its own architecture, which must then match `family`.
    pub fn from_weights(
        family: Family,
        path: &Path,
        default_classes: usize,
        device: &Device,
    ) -> Result<(Self, LoadReport)> {
        if let Ok(a) = Artifact::open(path, BACKBONE_FORMAT) {
            let arch: Family = a.meta("arch")?.parse()?;
            if arch != family {
                return Err(ModelError::Invalid(format!(
                    "{}: the backbone artifact holds {}, not {}",
                    path.display(),
                    arch.name(),
                    family.name()
                )));
            }
        }
        let a = Artifact::open_any(path)?;
        let classes = head_classes_in(&a, &family)?.unwrap_or(default_classes);
        let in_channels = stem_channels_in(&a, &family)?.unwrap_or(3);
        drop(a);
        let m = Model::new(Arch { family, num_classes: classes, in_channels }, 0, device)?;
        let report = m.load_weights(path)?;
        Ok((m, report))
    }

    /// Loads weights from a safetensors file with torchvision/timm names (a `module.` prefix is
    /// stripped), or transformers' ResNet names (translated). Every parameter and running
    /// statistic must be present with the right shape; `num_batches_tracked` is optional.
    /// Everything is checked before anything changes.
    pub fn load_weights(&self, path: &Path) -> Result<LoadReport> {
        self.load_checked(path, false)
    }

    /// Loads pretrained weights to fine-tune from, as [`Model::load_weights`] does, except for
    /// the classifier: one for another number of classes (same input dimension), or none at all,
    /// is left as initialised and the reason given in [`LoadReport::head_reinitialised`]. Every
    /// backbone tensor must fit: one that does not is an error naming it.
    pub fn load_pretrained(&self, path: &Path) -> Result<LoadReport> {
        self.load_checked(path, true)
    }

    fn load_checked(&self, path: &Path, fit_head: bool) -> Result<LoadReport> {
        let a = Artifact::open_any(path)?;
        let names = NameMap::of(&a);
        let head = if fit_head { self.head_mismatch(path, &a, &names)? } else { None };
        let (head_w, head_b) = self.head_names();
        let params: Vec<(String, Var)> = self
            .store()
            .named_params()
            .into_iter()
            .filter(|(n, _)| head.is_none() || (n != head_w && n != head_b))
            .collect();
        let buffers = self.store().named_buffers();
        let missing_counters = self.check_present(path, &names, &params, &buffers)?;
        self.check_param_shapes(path, &a, &names, &params)?;
        check_buffer_shapes(path, &a, &names, &buffers)?;
        let loaded = self.apply(&a, &names, &params, &buffers)?;
        Ok(LoadReport {
            loaded,
            ignored: names.ignored(&a, &params, &buffers),
            transformers_names: names.transformers,
            missing_batch_counters: missing_counters,
            head_reinitialised: head,
        })
    }

    /// Why the file's classifier cannot be loaded into this model's (it has none, or one of
    /// another shape: usually another class count), or `None` when it fits. (A file whose
    /// backbone does not fit either is refused by the backbone's checks.)
    fn head_mismatch(&self, path: &Path, a: &Artifact, names: &NameMap) -> Result<Option<String>> {
        let (w, b) = self.head_names();
        let (wv, bv) = self.head();
        let (Some(fw), Some(fb)) = (names.map.get(w), names.map.get(b)) else {
            return Ok(match (names.map.contains_key(w), names.map.contains_key(b)) {
                (false, false) => Some(format!("{} has no classifier (`{w}`)", path.display())),
                _ => None, // half a classifier: reported as missing by the presence check
            });
        };
        let (sw, sb) = (a.info(fw)?.shape.clone(), a.info(fb)?.shape.clone());
        Ok(if sw == wv.dims() && sb == bv.dims() {
            None
        } else if sw.len() == 2 && sw[1] == wv.dims()[1] {
            Some(format!("the classifier `{fw}` of {} is for {} classes", path.display(), sw[0]))
        } else {
            Some(format!("the classifier `{fw}` of {} has shape {sw:?}, not {:?}", path.display(), wv.dims()))
        })
    }

    /// Fails unless every parameter and buffer has a tensor in the file; returns whether
    /// `num_batches_tracked` counters were missing (allowed).
    fn check_present(
        &self,
        path: &Path,
        names: &NameMap,
        params: &[(String, Var)],
        buffers: &[(String, Tensor)],
    ) -> Result<bool> {
        let mut missing = Vec::new();
        let mut missing_counters = false;
        for name in params.iter().map(|(n, _)| n).chain(buffers.iter().map(|(n, _)| n)) {
            if !names.map.contains_key(name) {
                if name.ends_with(".num_batches_tracked") {
                    missing_counters = true;
                } else {
                    missing.push(name.clone());
                }
            }
        }
        if !missing.is_empty() {
            return Err(ModelError::MissingTensors {
                path: path.to_path_buf(),
                arch: self.arch().family.name(),
                count: missing.len(),
                examples: missing.iter().take(4).cloned().collect::<Vec<_>>().join(", "),
            });
        }
        Ok(missing_counters)
    }

    /// Checks the parameters' shapes, the classifier first (a class-count mismatch is the most
    /// common mistake and deserves its own message).
    fn check_param_shapes(
        &self,
        path: &Path,
        a: &Artifact,
        names: &NameMap,
        params: &[(String, Var)],
    ) -> Result<()> {
        let (head_w, head_b) = self.head_names();
        let mut order: Vec<&(String, Var)> = params.iter().collect();
        order.sort_by_key(|(n, _)| {
            if n == head_w {
                0
            } else if n == head_b {
                1
            } else {
                2
            }
        });
        for (name, var) in order {
            let file_name = &names.map[name];
            let found = a.info(file_name)?.shape.clone();
            if found == var.dims() {
                continue;
            }
            let is_head = name.as_str() == head_w || name.as_str() == head_b;
            if is_head && found.first() != var.dims().first() && found.len() == var.dims().len() {
                return Err(ModelError::ClassCount {
                    path: path.to_path_buf(),
                    name: file_name.clone(),
                    expected: var.dims()[0],
                    found: found[0],
                });
            }
            return Err(ModelError::Shape {
                path: path.to_path_buf(),
                name: file_name.clone(),
                expected: var.dims().to_vec(),
                found,
            });
        }
        Ok(())
    }

    /// Sets every parameter and the buffers present in the file; returns how many.
    fn apply(
        &self,
        a: &Artifact,
        names: &NameMap,
        params: &[(String, Var)],
        buffers: &[(String, Tensor)],
    ) -> Result<usize> {
        let dev = self.device().clone();
        for (name, var) in params {
            var.set(&float_tensor(a, &names.map[name], var.dims(), &dev)?)?;
        }
        let mut loaded = params.len();
        for (name, t) in buffers {
            let Some(file_name) = names.map.get(name) else { continue };
            let value = if name.ends_with(".num_batches_tracked") {
                let v = a
                    .i64(file_name)
                    .or_else(|_| a.f32(file_name).map(|f| f.iter().map(|&x| x as i64).collect()))?;
                Tensor::new(v.first().copied().unwrap_or(0), &dev)?
            } else {
                float_tensor(a, file_name, t.dims(), &dev)?
            };
            self.store().set_buffer(name, value)?;
            loaded += 1;
        }
        Ok(loaded)
    }

    /// Saves parameters and buffers with PyTorch names as a backbone artifact; `meta` adds
    /// metadata (e.g. the run configuration and a fingerprint).
    pub fn save(&self, path: &Path, meta: &[(&str, String)]) -> Result<()> {
        let mut w = ArtifactWriter::new(BACKBONE_FORMAT);
        w.meta("arch", self.arch().family.name())
            .meta("num_classes", self.arch().num_classes.to_string())
            .meta("in_channels", self.arch().in_channels.to_string());
        for (k, v) in meta {
            w.meta(k, v.clone());
        }
        for (name, var) in self.store().named_params() {
            w.push_tensor(&name, &var.as_detached_tensor().to_dtype(DType::F32)?)?;
        }
        for (name, t) in self.store().named_buffers() {
            w.push_tensor(&name, &t)?;
        }
        Ok(w.write(path)?)
    }

    /// Builds the model a backbone artifact describes and loads its weights.
    pub fn from_artifact(path: &Path, device: &Device) -> Result<Self> {
        let a = Artifact::open(path, BACKBONE_FORMAT)?;
        let family: Family = a.meta("arch")?.parse()?;
        let arch = Arch {
            family,
            num_classes: a.meta_parse("num_classes")?,
            in_channels: a.meta_parse("in_channels")?,
        };
        check_recorded_arch(&a, &arch)?;
        drop(a);
        let m = Model::new(arch, 0, device)?;
        m.load_weights(path)?;
        Ok(m)
    }

    /// The fingerprint recorded in a backbone artifact, if any.
    pub fn artifact_fingerprint(path: &Path) -> Result<Option<String>> {
        let a = Artifact::open(path, BACKBONE_FORMAT)?;
        Ok(a.meta_opt(KEY_FINGERPRINT).map(|s| s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transformers_names_translate() {
        let t = |s| transformers_to_torchvision(s).unwrap();
        assert_eq!(t("resnet.embedder.embedder.convolution.weight"), "conv1.weight");
        assert_eq!(t("resnet.embedder.embedder.normalization.running_var"), "bn1.running_var");
        assert_eq!(
            t("resnet.encoder.stages.0.layers.0.shortcut.convolution.weight"),
            "layer1.0.downsample.0.weight"
        );
        assert_eq!(
            t("resnet.encoder.stages.3.layers.2.shortcut.normalization.bias"),
            "layer4.2.downsample.1.bias"
        );
        assert_eq!(t("resnet.encoder.stages.1.layers.3.layer.2.convolution.weight"), "layer2.3.conv3.weight");
        assert_eq!(t("resnet.encoder.stages.2.layers.5.layer.0.normalization.weight"), "layer3.5.bn1.weight");
        assert_eq!(t("classifier.1.weight"), "fc.weight");
        assert!(transformers_to_torchvision("resnet.pooler.x").is_none());
    }
}
