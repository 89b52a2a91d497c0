//! Local training: the [`Trainer`] trait and softmax regression with mini-batch SGD.

use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::model::{BIAS, Model, WEIGHT};
use crate::rng::SeededRng;

/// What one round of local training returns.
#[derive(Clone, Debug)]
pub struct TrainOutput {
    /// `local − global`, with the global model's names and shapes.
    pub delta: Model,
    /// Number of local training examples (the FedAvg weight).
    pub num_examples: u32,
    /// Mean cross-entropy of the trained local model on the local data.
    pub loss: f32,
    /// Accuracy of the trained local model on the local data.
    pub accuracy: f32,
}

/// Training settings the server announces with each round.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TrainSettings {
    /// Local passes over the data.
    pub epochs: u32,
    /// Mini-batch size.
    pub batch_size: u32,
    /// SGD step size.
    pub learning_rate: f32,
}

/// A client's local training step.
pub trait Trainer {
    /// Train starting from `global` and return the update.
    fn train(&mut self, global: &Model) -> Result<TrainOutput, Error>;

    /// Adopt the settings the server announced for the coming round (ignored by default).
    fn configure(&mut self, _settings: &TrainSettings) {}
}

/// Softmax regression trained with mini-batch SGD on cross-entropy.
#[derive(Clone, Debug)]
pub struct SoftmaxTrainer {
    /// Local data.
    pub data: Dataset,
    /// Passes over the data per call to [`Trainer::train`].
    pub epochs: usize,
    /// Samples per SGD step.
    pub batch_size: usize,
    /// SGD step size.
    pub learning_rate: f32,
    /// Seed of the per-epoch shuffles (advanced on every call).
    pub seed: u64,
}

/// Borrow the `(weight, bias)` values of a softmax-regression model for `data`'s shape.
fn params<'m>(model: &'m Model, data: &Dataset) -> Result<(&'m [f32], &'m [f32])> {
    let w = model
        .tensors
        .get(WEIGHT)
        .ok_or_else(|| Error::Shape(format!("model has no {WEIGHT:?} tensor")))?;
    let b = model
        .tensors
        .get(BIAS)
        .ok_or_else(|| Error::Shape(format!("model has no {BIAS:?} tensor")))?;
    if w.shape() != [data.classes, data.dim] || b.shape() != [data.classes] {
        return Err(Error::Shape(format!(
            "model weight {:?} / bias {:?} do not fit data of dim {} with {} classes",
            w.shape(),
            b.shape(),
            data.dim,
            data.classes
        )));
    }
    Ok((w.data(), b.data()))
}

/// Numerically stable softmax of `W·x + b` into `probs`.
fn forward(w: &[f32], b: &[f32], x: &[f32], probs: &mut [f32]) {
    let dim = x.len();
    for ((p, row), bias) in probs.iter_mut().zip(w.chunks_exact(dim)).zip(b) {
        *p = row.iter().zip(x).map(|(a, v)| a * v).sum::<f32>() + bias;
    }
    let max = probs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for p in probs.iter_mut() {
        *p = (*p - max).exp();
        sum += *p;
    }
    for p in probs.iter_mut() {
        *p /= sum;
    }
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &x)| {
            if x > bv { (i, x) } else { (bi, bv) }
        })
        .0
}

/// Mean cross-entropy loss and accuracy of a softmax-regression `model` on `data`
/// (`(0, 0)` for an empty dataset).
pub fn evaluate(model: &Model, data: &Dataset) -> Result<(f32, f32)> {
    let (w, b) = params(model, data)?;
    if data.is_empty() {
        return Ok((0.0, 0.0));
    }
    let mut probs = vec![0.0f32; data.classes];
    let (mut loss, mut correct) = (0.0f64, 0usize);
    for (x, &y) in data.features.chunks_exact(data.dim).zip(&data.labels) {
        forward(w, b, x, &mut probs);
        let p = probs.get(usize::from(y)).copied().unwrap_or(0.0);
        loss -= f64::from(p.max(1e-12).ln());
        correct += usize::from(argmax(&probs) == usize::from(y));
    }
    let n = data.len() as f64;
    #[allow(clippy::cast_possible_truncation)]
    Ok(((loss / n) as f32, (correct as f64 / n) as f32))
}

impl Trainer for SoftmaxTrainer {
    fn configure(&mut self, s: &TrainSettings) {
        self.epochs = s.epochs as usize;
        self.batch_size = s.batch_size as usize;
        self.learning_rate = s.learning_rate;
    }

    fn train(&mut self, global: &Model) -> Result<TrainOutput, Error> {
        if self.batch_size == 0 {
            return Err(Error::InvalidArgument("batch size must be positive".into()));
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return Err(Error::InvalidArgument(
                "learning rate must be positive".into(),
            ));
        }
        let num_examples = u32::try_from(self.data.len())
            .map_err(|_| Error::InvalidArgument("too many local examples".into()))?;
        let (w0, b0) = params(global, &self.data)?;
        let (dim, classes) = (self.data.dim, self.data.classes);
        let (mut w, mut b) = (w0.to_vec(), b0.to_vec());
        let mut gw = vec![0.0f32; w.len()];
        let mut gb = vec![0.0f32; classes];
        let mut probs = vec![0.0f32; classes];
        let mut order: Vec<usize> = (0..self.data.len()).collect();
        let mut rng = SeededRng::new(self.seed);
        self.seed = rng.next_u64();

        for _ in 0..self.epochs {
            rng.shuffle(&mut order);
            for batch in order.chunks(self.batch_size) {
                gw.fill(0.0);
                gb.fill(0.0);
                for &i in batch {
                    let (Some(x), Some(&y)) = (self.data.sample(i), self.data.labels.get(i)) else {
                        continue;
                    };
                    forward(&w, &b, x, &mut probs);
                    for (c, ((p, grow), gbc)) in probs
                        .iter()
                        .zip(gw.chunks_exact_mut(dim))
                        .zip(gb.iter_mut())
                        .enumerate()
                    {
                        let g = p - if c == usize::from(y) { 1.0 } else { 0.0 };
                        *gbc += g;
                        for (gv, xv) in grow.iter_mut().zip(x) {
                            *gv += g * xv;
                        }
                    }
                }
                #[allow(clippy::cast_precision_loss)]
                let step = self.learning_rate / batch.len() as f32;
                for (wv, g) in w.iter_mut().zip(&gw) {
                    *wv -= step * g;
                }
                for (bv, g) in b.iter_mut().zip(&gb) {
                    *bv -= step * g;
                }
            }
        }

        let mut local = global.clone();
        if let Some(t) = local.tensors.get_mut(WEIGHT) {
            t.data_mut().copy_from_slice(&w);
        }
        if let Some(t) = local.tensors.get_mut(BIAS) {
            t.data_mut().copy_from_slice(&b);
        }
        let (loss, accuracy) = evaluate(&local, &self.data)?;
        let delta_flat: Vec<f32> = local
            .flatten()
            .iter()
            .zip(global.flatten())
            .map(|(l, g)| l - g)
            .collect();
        Ok(TrainOutput {
            delta: global.unflatten(&delta_flat)?,
            num_examples,
            loss,
            accuracy,
        })
    }
}

/// Trains with an external command (a PyTorch script, say), through safetensors files: the
/// command is run by `sh -c` in the working directory with
/// - `AEGIS_GLOBAL_MODEL`: the global model to start from (safetensors, read it);
/// - `AEGIS_LOCAL_MODEL`: where to write the trained model (safetensors, same tensor names and
///   shapes, F32);
/// - `AEGIS_METRICS`: where to write `{"num_examples": N, "loss": L, "accuracy": A}` (JSON;
///   `num_examples` required, the others optional);
/// - `AEGIS_EPOCHS`, `AEGIS_BATCH_SIZE`, `AEGIS_LEARNING_RATE`: the settings the server
///   announced for the round (when it announced any).
///
/// The model files are written 0600 and removed after the command ran.
///
/// The update sent (masked) is `local − global`. A non-zero exit, a missing output or a model
/// of another layout fails the round for this client (it declines; nothing is sent).
#[derive(Clone, Debug)]
pub struct CommandTrainer {
    command: String,
    work_dir: std::path::PathBuf,
    settings: Option<TrainSettings>,
}

#[derive(serde::Deserialize)]
struct CommandMetrics {
    num_examples: u32,
    #[serde(default)]
    loss: f32,
    #[serde(default)]
    accuracy: f32,
}

impl CommandTrainer {
    /// A trainer running `command` in `work_dir` (which must exist).
    pub fn new(command: &str, work_dir: &std::path::Path) -> Result<CommandTrainer> {
        if command.trim().is_empty() {
            return Err(Error::InvalidArgument(
                "the training command is empty".into(),
            ));
        }
        // Absolute, since the command runs inside it and is given paths within it.
        let work_dir = std::fs::canonicalize(work_dir)
            .ok()
            .filter(|p| p.is_dir())
            .ok_or_else(|| {
                Error::InvalidArgument(format!("{}: not a directory", work_dir.display()))
            })?;
        Ok(CommandTrainer {
            command: command.to_string(),
            work_dir,
            settings: None,
        })
    }
}

impl Trainer for CommandTrainer {
    fn configure(&mut self, settings: &TrainSettings) {
        self.settings = Some(*settings);
    }

    fn train(&mut self, global: &Model) -> Result<TrainOutput, Error> {
        let paths = [
            self.work_dir.join("aegis-global.safetensors"),
            self.work_dir.join("aegis-local.safetensors"),
        ];
        let out = self.run(global, &paths);
        for p in paths
            .iter()
            .chain([&self.work_dir.join("aegis-metrics.json")])
        {
            let _ = std::fs::remove_file(p);
        }
        out
    }
}

impl CommandTrainer {
    fn run(&self, global: &Model, paths: &[std::path::PathBuf; 2]) -> Result<TrainOutput, Error> {
        let io = |path: &std::path::Path| {
            let path = path.to_owned();
            move |source| Error::Io { path, source }
        };
        let [global_path, local_path] = paths;
        let metrics_path = self.work_dir.join("aegis-metrics.json");
        for p in [local_path, &metrics_path] {
            // Left over from a crashed run.
            match std::fs::remove_file(p) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(p)(e)),
                _ => {}
            }
        }
        aegis_crypto::fsutil::replace_private(global_path, &global.to_safetensors()?)?;
        // Created 0600 for the command to fill (opening it for writing keeps the mode): the
        // trained model is plaintext too.
        aegis_crypto::fsutil::create_private(local_path, b"")?;
        let mut cmd = std::process::Command::new("sh");
        cmd.arg("-c")
            .arg(&self.command)
            .current_dir(&self.work_dir)
            .env("AEGIS_GLOBAL_MODEL", global_path)
            .env("AEGIS_LOCAL_MODEL", local_path)
            .env("AEGIS_METRICS", &metrics_path)
            .stdin(std::process::Stdio::null());
        if let Some(s) = &self.settings {
            cmd.env("AEGIS_EPOCHS", s.epochs.to_string())
                .env("AEGIS_BATCH_SIZE", s.batch_size.to_string())
                .env("AEGIS_LEARNING_RATE", s.learning_rate.to_string());
        }
        let status = cmd
            .status()
            .map_err(|e| Error::TrainCommand(format!("cannot run sh: {e}")))?;
        if !status.success() {
            return Err(Error::TrainCommand(format!(
                "the command failed ({status})"
            )));
        }
        let local_bytes = std::fs::read(local_path).map_err(io(local_path))?;
        let local = Model::from_safetensors(&local_bytes)?;
        if !local.same_layout(global) {
            return Err(Error::Shape(
                "the trained model's tensor names or shapes differ from the global model's".into(),
            ));
        }
        let text = std::fs::read_to_string(&metrics_path).map_err(io(&metrics_path))?;
        let m: CommandMetrics = serde_json::from_str(&text)
            .map_err(|e| Error::TrainCommand(format!("{}: {e}", metrics_path.display())))?;
        let delta: Vec<f32> = local
            .flatten()
            .iter()
            .zip(global.flatten())
            .map(|(l, g)| l - g)
            .collect();
        if delta.iter().any(|v| !v.is_finite()) {
            return Err(Error::TrainCommand(
                "the trained model holds NaN or infinity".into(),
            ));
        }
        Ok(TrainOutput {
            delta: global.unflatten(&delta)?,
            num_examples: m.num_examples,
            loss: m.loss,
            accuracy: m.accuracy,
        })
    }
}
