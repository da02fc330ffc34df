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
use crate::model::{Model, Shapes};

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

/// Fails unless the file holds every parameter and buffer of `shapes` (of a `family` network)
/// with its shape and a float dtype, the classifier checked first (a class-count mismatch is the
/// most common mistake and has its own message); `num_batches_tracked` may be missing or any
/// single value.
/// Returns whether counters were missing.
fn check_holds(path: &Path, a: &Artifact, names: &NameMap, family: &Family, shapes: &Shapes) -> Result<bool> {
    let all = shapes.params.iter().chain(&shapes.buffers);
    let counter = |name: &str| name.ends_with(".num_batches_tracked");
    let missing: Vec<&String> = all.clone().map(|(n, _)| n).filter(|n| !names.map.contains_key(*n)).collect();
    let (counters, missing): (Vec<&String>, Vec<&String>) = missing.into_iter().partition(|n| counter(n));
    if !missing.is_empty() {
        return Err(ModelError::MissingTensors {
            path: path.to_path_buf(),
            arch: family.name(),
            count: missing.len(),
            examples: missing.iter().take(4).map(|n| n.as_str()).collect::<Vec<_>>().join(", "),
        });
    }
    let (head_w, head_b) = family.head_names();
    let mut order: Vec<&(String, Vec<usize>)> = all.filter(|(n, _)| names.map.contains_key(n)).collect();
    order.sort_by_key(|(n, _)| [head_w, head_b].iter().position(|h| h == n).unwrap_or(2));
    for (name, want) in order {
        let file_name = &names.map[name];
        let found = if counter(name) { a.info(file_name)? } else { a.expect_float(file_name)? }.shape.clone();
        if found == *want || (counter(name) && found.iter().product::<usize>() == 1) {
            continue;
        }
        let is_head = name.as_str() == head_w || name.as_str() == head_b;
        if is_head && found.first() != want.first() && found.len() == want.len() {
            return Err(ModelError::ClassCount {
                path: path.to_path_buf(),
                name: file_name.clone(),
                expected: want[0],
                found: found[0],
            });
        }
        return Err(ModelError::Shape {
            path: path.to_path_buf(),
            name: file_name.clone(),
            expected: want.clone(),
            found,
        });
    }
    Ok(!counters.is_empty())
}

/// Refuses, before anything is built, a backbone artifact whose tensors do not hold the network
/// it records: the class and channel counts must be its classifier's and stem's, a depth-`d`
/// network has `d` layers with weights (so at least `d` tensors: this bounds the listing by the
/// file), and every parameter and buffer of the listed network must be in the file with its shape.
fn check_recorded(path: &Path, a: &Artifact, names: &NameMap, arch: &Arch) -> Result<()> {
    let family = &arch.family;
    let recorded = [
        ("num_classes", arch.num_classes, head_classes(a, names, family)?, "classifier"),
        ("in_channels", arch.in_channels, stem_channels(a, names, family)?, "stem convolution"),
    ];
    for (key, value, held, what) in recorded {
        if let Some(held) = held.filter(|&h| h != value) {
            return Err(a.bad_meta(key, format!("the file's {what} has {held}")).into());
        }
    }
    let tensors = a.names().count();
    let (Family::Cifar { depth, .. } | Family::Torchvision { depth }) = *family;
    if tensors < depth {
        let why = format!(
            "a depth-{depth} network has {depth} layers with weights; the file has {tensors} tensors"
        );
        return Err(a.bad_meta("arch", why).into());
    }
    check_holds(path, a, names, family, &listed(path, arch)?).map(|_| ())
}

/// The family a backbone artifact records (`arch`); a refusal names the file and the key.
fn recorded_family(a: &Artifact) -> Result<Family> {
    let name = a.meta("arch")?;
    name.parse().map_err(|e: ModelError| a.bad_meta("arch", e.to_string()).into())
}

/// [`Model::shapes`] of the network a weight file's tensors or metadata describe; a refusal names
/// the file.
fn listed(path: &Path, arch: &Arch) -> Result<Shapes> {
    Model::shapes(arch).map_err(|e| match e {
        ModelError::TooLarge { path: None, name, shape, values, memory } => {
            ModelError::TooLarge { path: Some(path.to_path_buf()), name, shape, values, memory }
        }
        e => ModelError::Invalid(format!("{}: {e}", path.display())),
    })
}

fn float_tensor(a: &Artifact, file_name: &str, shape: &[usize], device: &Device) -> Result<Tensor> {
    let v = a.f32(file_name)?;
    Ok(Tensor::from_vec(v, shape, device)?)
}

/// The count a weight file gives at dimension `at` of tensor `model_name` (under any name
/// [`NameMap`] reads), if it holds that tensor. The tensor must have `want`'s other dimensions
/// and the count must not be 0: that makes it a count of values the file holds, so that a small
/// file cannot have a network of terabytes built for it.
fn count_in(
    a: &Artifact,
    names: &NameMap,
    model_name: &str,
    want: &[Option<usize>],
) -> Result<Option<usize>> {
    let Some(file_name) = names.map.get(model_name) else { return Ok(None) };
    let at = want.iter().position(Option::is_none).expect("one dimension to read");
    match a.expect_shape(file_name, want)?.shape[at] {
        0 => Err(a.bad_value(file_name, format!("dimension {at} is 0")).into()),
        n => Ok(Some(n)),
    }
}

/// The classes of a weight file's classifier for `family` (`[classes, D]`), if it has one.
fn head_classes(a: &Artifact, names: &NameMap, family: &Family) -> Result<Option<usize>> {
    count_in(a, names, family.head_names().0, &[None, Some(family.feature_dim())])
}

/// The input channels of a weight file's stem for `family` ([`Family::stem`]), if it has one.
fn stem_channels(a: &Artifact, names: &NameMap, family: &Family) -> Result<Option<usize>> {
    let (out, k) = family.stem();
    count_in(a, names, "conv1.weight", &[Some(out), None, Some(k), Some(k)])
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
        let a = Artifact::open_any(path)?;
        if a.check_format(BACKBONE_FORMAT).is_ok() {
            let arch = recorded_family(&a)?;
            if arch != family {
                return Err(ModelError::Invalid(format!(
                    "{}: the backbone artifact holds {}, not {}",
                    path.display(),
                    arch.name(),
                    family.name()
                )));
            }
        }
        let names = NameMap::of(&a);
        let classes = head_classes(&a, &names, &family)?.unwrap_or(default_classes);
        let in_channels = stem_channels(&a, &names, &family)?.unwrap_or(3);
        let arch = Arch { family, num_classes: classes, in_channels };
        check_holds(path, &a, &names, &family, &listed(path, &arch)?)?;
        let m = Model::new(arch, 0, device)?;
        let report = m.load_from(path, &a, &names, false)?;
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
        self.load_from(path, &a, &NameMap::of(&a), fit_head)
    }

    /// [`Model::load_checked`] from the weight file `a` at `path`, already open.
    fn load_from(&self, path: &Path, a: &Artifact, names: &NameMap, fit_head: bool) -> Result<LoadReport> {
        let head = if fit_head { self.head_mismatch(path, a, names)? } else { None };
        let (head_w, head_b) = self.head_names();
        let params: Vec<(String, Var)> = self
            .store()
            .named_params()
            .into_iter()
            .filter(|(n, _)| head.is_none() || (n != head_w && n != head_b))
            .collect();
        let buffers = self.store().named_buffers();
        let dims = |n: &String, d: &[usize]| (n.clone(), d.to_vec());
        let shapes = Shapes {
            params: params.iter().map(|(n, v)| dims(n, v.dims())).collect(),
            buffers: buffers.iter().map(|(n, t)| dims(n, t.dims())).collect(),
        };
        let missing_counters = check_holds(path, a, names, &self.arch().family, &shapes)?;
        let loaded = self.apply(a, names, &params, &buffers)?;
        Ok(LoadReport {
            loaded,
            ignored: names.ignored(a, &params, &buffers),
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
        let family = recorded_family(&a)?;
        let arch = Arch {
            family,
            num_classes: a.meta_parse("num_classes")?,
            in_channels: a.meta_parse("in_channels")?,
        };
        let names = NameMap::of(&a);
        check_recorded(path, &a, &names, &arch)?;
        let m = Model::new(arch, 0, device)?;
        m.load_from(path, &a, &names, false)?;
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
