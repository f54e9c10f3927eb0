//! Sampling that saves its progress, so that an interrupted `dpsynth run` or `dpsynth sample`
//! continues where it stopped.
//!
//! [`Sampling`] samples the images in parts of about [`PART_IMAGES`] (a whole number of sampler
//! batches). After each part, every finished image is written to the progress file
//! `OUT/sampling/partial.safetensors` ([`progress_file`]) atomically (temp file, sync, rename),
//! so a kill at any moment leaves the previous part's file or the new one, never a partial one.
//! A later run into the same output folder reads the file, checks that it was made with the
//! same [`Settings`] (a mismatch is an error naming the file and the settings that differ: the
//! file is never overwritten nor mixed with other images) and samples the images after it.
//! Each image's noise is its own stream keyed by (seed, image index)
//! ([`crate::diffusion::noise::ImageNoise`]), so the resumed images are those an uninterrupted
//! run draws. Once the samples are written, the caller removes the file ([`remove`]).
//!
//! The file is a safetensors file: one tensor `images` (U8, `[done, C, H, W]`, the finished
//! images in sampling order, class by class) and `__metadata__` with `format` ([`FORMAT`]),
//! `settings` (the [`Settings`] as JSON) and `seconds` (the sampling time the saved images
//! took). Images are kept as the u8 values the synthetic dataset stores (converted image by
//! image as [`Dataset::from_unit_tensor`] does), so a resumed run writes the same bytes as an
//! uninterrupted one, and the file is a quarter of float32's size (30 MB for 10,000 CIFAR-10
//! images).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tch::{Device, Tensor};

use super::ModelDir;
use crate::data::Dataset;
use crate::diffusion::precision::Precision;
use crate::diffusion::sampler::{sample_from, SamplerConfig, SamplerKind, Spacing};
use crate::fsutil;

/// The progress file, relative to the output folder.
pub const PROGRESS_FILE: &str = "sampling/partial.safetensors";

/// The `format` a progress file's metadata names (and its version).
pub const FORMAT: &str = "dpsynth sampling progress 1";

/// Images sampled between saves, before rounding to the sampler batch ([`part_size`]). A save
/// rewrites every finished image (at most 30 MB for 10,000 CIFAR-10 images: well under a
/// second), ten times in a run of 10,000 images; an interruption loses at most one part, a
/// tenth of such a run (6 to 24 minutes of a CIFAR-10 cell sampled on a CPU in 1 to 4 hours,
/// seconds on a GPU).
pub const PART_IMAGES: usize = 1_000;

/// The progress file of the output folder `out`.
pub fn progress_file(out: &Path) -> PathBuf {
    out.join(PROGRESS_FILE)
}

/// `images` rounded to the nearest whole number of sampler batches of `batch_size`, at least
/// one batch: the images of a part.
pub fn part_size(images: usize, batch_size: usize) -> usize {
    let batch = batch_size.max(1);
    batch * ((images + batch / 2) / batch).max(1)
}

/// Everything the sampled images depend on, which a progress file must match to be resumed.
/// The sampler's batch size is not in it: it only says how many images share a forward pass
/// (each image has its own noise stream), so a resumed run may use another. Nor is the device:
/// a sampling resumed on another machine continues the same images, up to the rounding in
/// which devices differ.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    /// The sampled model's identity: sha256 of its weights and configs ([`model_fingerprint`]).
    pub model_sha256: String,
    /// Class names, by label.
    pub classes: Vec<String>,
    /// Images per class.
    pub per_class: usize,
    /// The update rule (with DDIM's η).
    pub sampler: SamplerKind,
    /// Denoising steps.
    pub steps: usize,
    /// How the steps are spaced.
    pub spacing: Spacing,
    /// Classifier-free guidance scale.
    pub guidance: f64,
    /// Whether x̂0 is clipped to [-1, 1] at each step.
    pub clip_sample: bool,
    /// The number format of the forward passes (a sampling started in one format continues
    /// only in it).
    #[serde(default)]
    pub precision: Precision,
    /// Seed of the sampling noise.
    pub seed: u64,
    /// Image shape `[C, H, W]`.
    pub shape: [i64; 3],
}

impl Settings {
    /// The settings of sampling `per_class` images of every class of `model` with `cfg` and
    /// `seed`.
    pub fn of(model: &ModelDir, per_class: usize, cfg: &SamplerConfig, seed: u64) -> Result<Self> {
        Ok(Self {
            model_sha256: model_fingerprint(model)?,
            classes: model.classes.clone(),
            per_class,
            sampler: cfg.kind,
            steps: cfg.num_steps,
            spacing: cfg.spacing,
            guidance: cfg.guidance_scale,
            clip_sample: cfg.clip_sample,
            precision: cfg.precision,
            seed,
            shape: model
                .unet
                .sample_shape()
                .context("the model config has no sample_size")?,
        })
    }
}

/// sha256 (hex) of what the sampled model computes: its U-Net, scheduler and adapter configs,
/// its row → class table when a class has several rows, and every weight of the U-Net and of
/// its adapters (by name, kind, shape and bytes). It reads the weights in memory, so it does not
/// depend on where the model folder is or when it was written (a run resumed on another machine
/// or after a copy matches), but any changed weight, including class rows rebuilt from a
/// class-init table, does. It runs once per sampling.
pub fn model_fingerprint(model: &ModelDir) -> Result<String> {
    let mut h = Sha256::new();
    let mut feed = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    feed(&serde_json::to_vec(model.unet.config())?);
    feed(&serde_json::to_vec(&model.scheduler)?);
    feed(&serde_json::to_vec(&model.adapter)?);
    // a class with several rows samples them in turn (a model without, as before: no bytes)
    if !super::is_identity(&model.row_classes) {
        feed(&serde_json::to_vec(&model.row_classes)?);
    }
    let stores = [Some(&model.unet.vs), model.adapter_store.as_ref()];
    for (i, store) in stores.into_iter().enumerate() {
        let Some(store) = store else { continue };
        let mut vars: Vec<(String, Tensor)> = store.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, t) in vars {
            let t = t.detach().to_device(Device::Cpu).contiguous();
            feed(format!("{i} {name} {:?} {:?}", t.kind(), t.size()).as_bytes());
            let n = t.numel();
            let mut bytes = vec![0u8; n * t.kind().elt_size_in_bytes()];
            t.f_copy_data_u8(&mut bytes, n)
                .with_context(|| format!("reading the weights of {name}"))?;
            feed(&bytes);
        }
    }
    Ok(format!("{:x}", h.finalize()))
}

/// The settings that differ between a progress file's (`saved`, as JSON) and this run's
/// (`now`), as `NAME is FILE'S VALUE there and VALUE now`, long values cut (`None`: they
/// match).
fn difference(saved: &Value, now: &Value) -> Option<String> {
    let show = |v: Option<&Value>| {
        let s = v.map_or("nothing".to_string(), Value::to_string);
        match s.char_indices().nth(60) {
            Some((cut, _)) => format!("{}…", &s[..cut]),
            None => s,
        }
    };
    let empty = serde_json::Map::new();
    let (saved, now) = (
        saved.as_object().unwrap_or(&empty),
        now.as_object().unwrap_or(&empty),
    );
    let mut keys: Vec<&String> = now.keys().chain(saved.keys()).collect();
    keys.sort();
    keys.dedup();
    let diffs: Vec<String> = keys
        .into_iter()
        .filter(|k| saved.get(*k) != now.get(*k))
        .map(|k| {
            format!(
                "{k} is {} there and {} now",
                show(saved.get(k)),
                show(now.get(k))
            )
        })
        .collect();
    (!diffs.is_empty()).then(|| diffs.join("; "))
}

/// An error for a progress file that cannot be read as one.
fn unreadable(file: &Path, why: impl std::fmt::Display) -> anyhow::Error {
    anyhow!(
        "{}: not a readable sampling progress file ({why}); remove it to sample from the start",
        file.display()
    )
}

/// What a progress file holds, once checked against this run.
struct Saved {
    /// The finished images' bytes.
    images: Vec<u8>,
    /// Sampling seconds they took.
    seconds: f64,
}

/// Reads `file` and checks it against `settings` (this run's, as JSON) for `total` images of
/// `per_image` bytes. A mismatch or a damaged file is an error naming the file; nothing panics.
fn read(file: &Path, settings: &Value, total: usize, per_image: usize) -> Result<Saved> {
    let bytes = std::fs::read(file).with_context(|| format!("{}: cannot read", file.display()))?;
    let Some((len, rest)) = bytes.split_first_chunk::<8>() else {
        return Err(unreadable(file, "shorter than a safetensors header"));
    };
    let len = u64::from_le_bytes(*len);
    if len > rest.len() as u64 {
        let why = format!(
            "a {len}-byte header in a {}-byte file: truncated",
            bytes.len()
        );
        return Err(unreadable(file, why));
    }
    let (header, data) = rest.split_at(len as usize);
    let header: Value =
        serde_json::from_slice(header).map_err(|e| unreadable(file, format!("header: {e}")))?;
    let meta = |key: &str| {
        header["__metadata__"][key]
            .as_str()
            .ok_or_else(|| unreadable(file, format!("no {key} in its metadata")))
    };
    let format = meta("format")?;
    if format != FORMAT {
        return Err(unreadable(
            file,
            format!("format '{format}', not '{FORMAT}'"),
        ));
    }
    let saved: Value = serde_json::from_str(meta("settings")?)
        .map_err(|e| unreadable(file, format!("settings: {e}")))?;
    if let Some(diff) = difference(&saved, settings) {
        bail!(
            "{}: sampling progress made with other settings: {diff}. It is never mixed with \
             other images: sample with the settings it was made with to resume it, or remove it \
             to sample from the start",
            file.display()
        );
    }
    let seconds: f64 = meta("seconds")?
        .parse()
        .map_err(|e| unreadable(file, format!("seconds: {e}")))?;
    if !(seconds.is_finite() && seconds >= 0.0) {
        return Err(unreadable(file, format!("seconds {seconds}")));
    }
    let images = &header["images"];
    if images["dtype"] != "U8" {
        return Err(unreadable(file, "no U8 tensor named images"));
    }
    let dims: Option<Vec<u64>> = (images["shape"].as_array())
        .map(|d| d.iter().filter_map(Value::as_u64).collect())
        .filter(|d: &Vec<u64>| d.len() == 4);
    let Some(dims) = dims else {
        return Err(unreadable(file, "images is not N×C×H×W"));
    };
    // images of this run's shape (which the matching settings name)
    let shape = settings["shape"].as_array().map(|s| {
        s.iter()
            .map(|d| d.as_u64().unwrap_or(0))
            .collect::<Vec<_>>()
    });
    if shape.as_deref() != Some(&dims[1..]) {
        return Err(unreadable(
            file,
            format!("images of shape {:?}", &dims[1..]),
        ));
    }
    let done = dims[0];
    if done > total as u64 {
        let why = format!("{done} images where the settings make {total}");
        return Err(unreadable(file, why));
    }
    let size = done as usize * per_image;
    let offsets: Vec<u64> = (images["data_offsets"].as_array())
        .map(|o| o.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default();
    if offsets != [0, size as u64] || data.len() != size {
        let why = format!(
            "{done} images need {size} bytes of data, the file has {}: truncated or damaged",
            data.len()
        );
        return Err(unreadable(file, why));
    }
    Ok(Saved {
        images: data.to_vec(),
        seconds,
    })
}

/// The sampling of `per_class` images of every class of a model, in parts, each saved to the
/// output folder's progress file; opened by [`Sampling::open`], which resumes the file there.
pub struct Sampling<'a> {
    model: &'a ModelDir,
    cfg: SamplerConfig,
    seed: u64,
    labels: Vec<i64>,
    /// The class-embedding row each image is sampled from ([`super::rows_in_turn`]).
    rows: Vec<i64>,
    shape: [i64; 3],
    /// This run's [`Settings`] as JSON, as saved.
    settings: String,
    file: PathBuf,
    part: usize,
    /// The finished images' bytes, in order.
    images: Vec<u8>,
    resumed: usize,
    /// Sampling seconds of the images read from the file.
    earlier_seconds: f64,
    started: Instant,
}

/// What a finished [`Sampling`] gives.
pub struct Sampled {
    /// The images, labelled class by class (`per_class` of each, in class order).
    pub dataset: Dataset,
    /// Sampling seconds, over every run that sampled some of the images.
    pub seconds: f64,
}

impl<'a> Sampling<'a> {
    /// Starts sampling `per_class` images of every class of `model` with `cfg` and `seed`, in
    /// parts of `part_images` rounded to the batch size ([`part_size`]; [`PART_IMAGES`] in the
    /// commands), saved to the progress file of `out`. When that file exists it is resumed:
    /// its settings must be this run's (else an error names the file and the settings that
    /// differ) and its images are kept.
    pub fn open(
        model: &'a ModelDir,
        per_class: usize,
        cfg: &SamplerConfig,
        seed: u64,
        out: &Path,
        part_images: usize,
    ) -> Result<Self> {
        let settings = Settings::of(model, per_class, cfg, seed)?;
        let shape = settings.shape;
        let labels = super::class_labels(model.classes.len(), per_class);
        let text = serde_json::to_string(&settings)?;
        let file = progress_file(out);
        let (images, earlier_seconds) = if file.exists() {
            // compared as JSON parsed from text, as the file's settings are
            let now: Value = serde_json::from_str(&text)?;
            let per_image = shape.iter().product::<i64>().max(0) as usize;
            let saved = read(&file, &now, labels.len(), per_image)?;
            (saved.images, saved.seconds)
        } else {
            (Vec::new(), 0.0)
        };
        let mut s = Self {
            model,
            cfg: *cfg,
            seed,
            rows: super::rows_in_turn(&model.row_classes, &labels),
            labels,
            shape,
            settings: text,
            file,
            part: part_size(part_images, cfg.batch_size),
            images,
            resumed: 0,
            earlier_seconds,
            started: Instant::now(),
        };
        s.resumed = s.done();
        Ok(s)
    }

    /// Bytes of one image.
    fn per_image(&self) -> usize {
        self.shape.iter().product::<i64>().max(1) as usize
    }

    /// Images finished (read from the progress file or sampled since).
    pub fn done(&self) -> usize {
        self.images.len() / self.per_image()
    }

    /// Images in all.
    pub fn total(&self) -> usize {
        self.labels.len()
    }

    /// Images read from the progress file when it was opened (0: a fresh start).
    pub fn resumed(&self) -> usize {
        self.resumed
    }

    /// The progress file.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// Samples the next part (nothing once all are done) and saves every finished image to
    /// the progress file, calling `progress(images done)` after each batch; returns the images
    /// done.
    pub fn sample_part(&mut self, progress: &mut dyn FnMut(usize)) -> Result<usize> {
        let first = self.done();
        let end = (first + self.part).min(self.total());
        if first == end {
            return Ok(first);
        }
        let labels = &self.labels[first..end];
        let unet = &self.model.unet;
        let x = sample_from(
            unet,
            &self.model.schedule,
            &self.rows[first..end],
            first,
            self.shape,
            &self.cfg,
            self.seed,
            unet.device(),
            progress,
        )?;
        let part = Dataset::from_unit_tensor(
            &x,
            labels.iter().map(|&l| l as u8).collect(),
            self.model.classes.clone(),
        )?;
        self.images.extend_from_slice(&part.images);
        self.save()?;
        Ok(end)
    }

    /// Sampling seconds so far, over every run that sampled some of the images.
    fn seconds(&self) -> f64 {
        self.earlier_seconds + self.started.elapsed().as_secs_f64()
    }

    /// Writes the finished images to the progress file, atomically.
    fn save(&self) -> Result<()> {
        let done = self.done();
        let [c, h, w] = self.shape;
        let header = serde_json::json!({
            "__metadata__": {
                "format": FORMAT,
                "settings": self.settings,
                "seconds": self.seconds().to_string(),
            },
            "images": {
                "dtype": "U8",
                "shape": [done as i64, c, h, w],
                "data_offsets": [0, self.images.len()],
            },
        });
        let mut bytes = serde_json::to_vec(&header)?;
        // safetensors pads the header with spaces to 8 bytes
        bytes.resize(bytes.len().div_ceil(8) * 8, b' ');
        let len = (bytes.len() as u64).to_le_bytes();
        bytes.splice(0..0, len);
        bytes.extend_from_slice(&self.images);
        fsutil::write_atomic(&self.file, &bytes)
            .with_context(|| format!("writing {}", self.file.display()))
    }

    /// Samples every part left (saving each) and returns the images: those of the progress
    /// file followed by those sampled now, labelled class by class.
    pub fn run(mut self, progress: &mut dyn FnMut(usize)) -> Result<Sampled> {
        while self.done() < self.total() {
            self.sample_part(progress)?;
        }
        let seconds = self.seconds();
        let [c, h, w] = self.shape.map(|d| d as usize);
        let dataset = Dataset::new(
            Path::new("<generated images>"),
            self.images,
            self.labels.iter().map(|&l| l as u8).collect(),
            [c, h, w],
            self.model.classes.clone(),
        )?;
        Ok(Sampled { dataset, seconds })
    }
}

/// Removes the progress file of the output folder `out` (and its folder, when nothing else is
/// left in it): the samples are written. No file is no error.
pub fn remove(out: &Path) -> Result<()> {
    let file = progress_file(out);
    match std::fs::remove_file(&file) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("removing {}", file.display()));
        }
        _ => {}
    }
    if let Some(dir) = file.parent() {
        // temp files a killed save left behind
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if entry.file_name().to_string_lossy().starts_with(".tmp-") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        let _ = std::fs::remove_dir(dir); // kept when something else is in it
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_whole_batches() {
        assert_eq!(part_size(1000, 250), 1000);
        assert_eq!(part_size(1000, 256), 1024);
        assert_eq!(part_size(1000, 300), 900);
        assert_eq!(part_size(1000, 5000), 5000);
        assert_eq!(part_size(0, 0), 1);
    }

    #[test]
    fn differences_name_each_setting() {
        let a = serde_json::json!({"seed": 1, "steps": 50, "classes": ["a"]});
        let b = serde_json::json!({"seed": 2, "steps": 50, "classes": ["a"], "new": true});
        assert_eq!(difference(&a, &a), None);
        assert_eq!(
            difference(&a, &b).unwrap(),
            "new is nothing there and true now; seed is 1 there and 2 now"
        );
        // long values are cut
        let long = serde_json::json!({"seed": 1, "steps": 50, "classes": ["x".repeat(100)]});
        let diff = difference(&a, &long).unwrap();
        assert!(
            diff.starts_with("classes is [\"a\"] there and [\"xxx"),
            "{diff}"
        );
        assert!(diff.ends_with("x… now"), "{diff}");
    }
}
