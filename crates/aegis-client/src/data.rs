//! Datasets: loading the digits CSV, non-IID splits, a binary encoding and encrypted shards.
//!
//! Binary encoding ([`Dataset::to_bytes`]), all integers little-endian:
//!
//! ```text
//! "AEGISDS1" (8 bytes) ‖ dim: u32 ‖ classes: u32 ‖ n: u64 ‖ n·dim f32 features ‖ n u8 labels
//! ```

use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use aegis_crypto::{Format, Keyset, SecretKey};

use crate::error::{Error, Result};
use crate::rng::SeededRng;

/// Pixel features per digits sample (an 8×8 image).
pub const DIGITS_DIM: usize = 64;
/// Number of digit classes.
pub const DIGITS_CLASSES: usize = 10;
/// Largest pixel value in the digits CSV.
const DIGITS_MAX_PIXEL: u8 = 16;
const MAGIC: &[u8; 8] = b"AEGISDS1";
const HEADER_LEN: usize = 8 + 4 + 4 + 8;

/// A labelled dataset: `features` is row-major `len() × dim`.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    /// Row-major features, `labels.len() * dim` values.
    pub features: Vec<f32>,
    /// One label per sample, each `< classes`.
    pub labels: Vec<u8>,
    /// Features per sample.
    pub dim: usize,
    /// Number of classes.
    pub classes: usize,
}

impl Dataset {
    /// A dataset after checking that the lengths and labels are consistent.
    pub fn new(features: Vec<f32>, labels: Vec<u8>, dim: usize, classes: usize) -> Result<Self> {
        if dim == 0 || classes == 0 || classes > usize::from(u8::MAX) + 1 {
            return Err(Error::InvalidArgument(format!(
                "dim {dim} and classes {classes} must be positive (classes ≤ 256)"
            )));
        }
        if labels.len().checked_mul(dim) != Some(features.len()) {
            return Err(Error::Shape(format!(
                "{} features for {} samples of dim {dim}",
                features.len(),
                labels.len()
            )));
        }
        if let Some(bad) = labels.iter().find(|&&l| usize::from(l) >= classes) {
            return Err(Error::InvalidArgument(format!(
                "label {bad} out of range for {classes} classes"
            )));
        }
        Ok(Self {
            features,
            labels,
            dim,
            classes,
        })
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The features of sample `i`, if it exists.
    pub fn sample(&self, i: usize) -> Option<&[f32]> {
        let start = i.checked_mul(self.dim)?;
        self.features.get(start..start.checked_add(self.dim)?)
    }

    /// The samples at `indices`, in that order (indices out of range are an error).
    pub fn subset(&self, indices: &[usize]) -> Result<Dataset> {
        let mut features = Vec::with_capacity(indices.len().saturating_mul(self.dim));
        let mut labels = Vec::with_capacity(indices.len());
        for &i in indices {
            let (x, y) = self
                .sample(i)
                .zip(self.labels.get(i))
                .ok_or_else(|| Error::InvalidArgument(format!("sample index {i} out of range")))?;
            features.extend_from_slice(x);
            labels.push(*y);
        }
        Dataset::new(features, labels, self.dim, self.classes)
    }

    /// Shuffle with `seed` and split into `(train, test)` with `round(len·test_fraction)` test
    /// samples. `test_fraction` must be in `[0, 1]`.
    pub fn train_test_split(&self, seed: u64, test_fraction: f64) -> Result<(Dataset, Dataset)> {
        if !(0.0..=1.0).contains(&test_fraction) {
            return Err(Error::InvalidArgument(format!(
                "test fraction {test_fraction} not in [0, 1]"
            )));
        }
        let mut order: Vec<usize> = (0..self.len()).collect();
        SeededRng::new(seed).shuffle(&mut order);
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let n_test = ((self.len() as f64) * test_fraction).round() as usize;
        let (test, train) = order.split_at(n_test.min(order.len()));
        Ok((self.subset(train)?, self.subset(test)?))
    }

    /// The documented binary encoding (see the module docs).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.features.len() * 4 + self.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&u32::try_from(self.dim).unwrap_or(u32::MAX).to_le_bytes());
        out.extend_from_slice(
            &u32::try_from(self.classes)
                .unwrap_or(u32::MAX)
                .to_le_bytes(),
        );
        out.extend_from_slice(&(self.len() as u64).to_le_bytes());
        for f in &self.features {
            out.extend_from_slice(&f.to_le_bytes());
        }
        out.extend_from_slice(&self.labels);
        out
    }

    /// Decode [`Dataset::to_bytes`], checking every length.
    pub fn from_bytes(bytes: &[u8]) -> Result<Dataset> {
        let bad = |why: &str| Error::DatasetFormat(why.to_owned());
        let (header, body) = bytes
            .split_at_checked(HEADER_LEN)
            .ok_or_else(|| bad("shorter than the header"))?;
        let (magic, rest) = header.split_at(8);
        if magic != MAGIC {
            return Err(bad("wrong magic"));
        }
        let (dim, rest) = rest.split_at(4);
        let (classes, n) = rest.split_at(4);
        let to_usize = |v: u64| usize::try_from(v).map_err(|_| bad("size too large"));
        let dim = to_usize(u64::from(u32::from_le_bytes(
            dim.try_into().map_err(|_| bad("header"))?,
        )))?;
        let classes = to_usize(u64::from(u32::from_le_bytes(
            classes.try_into().map_err(|_| bad("header"))?,
        )))?;
        let n = to_usize(u64::from_le_bytes(n.try_into().map_err(|_| bad("header"))?))?;
        let n_feat = n.checked_mul(dim).ok_or_else(|| bad("size overflow"))?;
        let feat_bytes = n_feat.checked_mul(4).ok_or_else(|| bad("size overflow"))?;
        if feat_bytes.checked_add(n) != Some(body.len()) {
            return Err(bad("length does not match the header"));
        }
        let (feat, labels) = body.split_at(feat_bytes);
        let features = feat
            .chunks_exact(4)
            .map(|c| {
                <[u8; 4]>::try_from(c)
                    .map(f32::from_le_bytes)
                    .map_err(|_| bad("feature bytes"))
            })
            .collect::<Result<Vec<f32>>>()?;
        if features.iter().any(|f| !f.is_finite()) {
            return Err(bad("non-finite feature"));
        }
        Dataset::new(features, labels.to_vec(), dim, classes)
            .map_err(|e| Error::DatasetFormat(e.to_string()))
    }

    /// Encrypt [`Dataset::to_bytes`] under `key` (aegis-crypto v2) and write it atomically to
    /// `path` (mode 0600, temp file + rename).
    pub fn write_encrypted(&self, path: &Path, key: &SecretKey) -> Result<()> {
        let plain = zeroize::Zeroizing::new(self.to_bytes());
        let blob = aegis_crypto::seal(key, &plain, Format::V2)?;
        aegis_crypto::fsutil::replace_private(path, &blob)?;
        Ok(())
    }

    /// Read and decrypt a file written by [`Dataset::write_encrypted`]; the plaintext only
    /// ever exists in memory. A tampered file or a missing key is an error, with no output.
    pub fn read_encrypted(path: &Path, keyset: &Keyset) -> Result<Dataset> {
        let blob = std::fs::read(path).map_err(|source| Error::Io {
            path: path.to_owned(),
            source,
        })?;
        // The plaintext exists only in this buffer, wiped when it goes.
        let plain = zeroize::Zeroizing::new(aegis_crypto::open(keyset, &blob)?);
        Dataset::from_bytes(&plain)
    }
}

/// Load the gzip-compressed digits CSV at `path`: 64 integer pixels (0–16) then the label
/// (0–9) per line; features are scaled to `[0, 1]` by /16. Blank lines are skipped.
pub fn load_digits(path: &Path) -> Result<Dataset> {
    let file = std::fs::File::open(path).map_err(|source| Error::Io {
        path: path.to_owned(),
        source,
    })?;
    parse_digits_csv(BufReader::new(flate2::read::GzDecoder::new(file))).map_err(|e| match e {
        Error::Io { source, .. } => Error::Io {
            path: path.to_owned(),
            source,
        },
        other => other,
    })
}

/// Parse uncompressed digits CSV text (see [`load_digits`]).
pub fn parse_digits_csv<R: Read>(reader: R) -> Result<Dataset> {
    let mut features = Vec::new();
    let mut labels = Vec::new();
    for (idx, line) in BufReader::new(reader).lines().enumerate() {
        let line_no = idx + 1;
        let line = line.map_err(|source| Error::Io {
            path: "<digits csv>".into(),
            source,
        })?;
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let csv = |reason: String| Error::Csv {
            line: line_no,
            reason,
        };
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        if fields.len() != DIGITS_DIM + 1 {
            return Err(csv(format!(
                "expected {} comma-separated values, found {}",
                DIGITS_DIM + 1,
                fields.len()
            )));
        }
        let (pixels, label) = fields.split_at(DIGITS_DIM);
        for (col, p) in pixels.iter().enumerate() {
            let v: u8 = p
                .parse()
                .ok()
                .filter(|v| *v <= DIGITS_MAX_PIXEL)
                .ok_or_else(|| {
                    csv(format!(
                        "column {}: pixel must be an integer 0..={DIGITS_MAX_PIXEL}",
                        col + 1
                    ))
                })?;
            features.push(f32::from(v) / f32::from(DIGITS_MAX_PIXEL));
        }
        let label: u8 = label
            .first()
            .and_then(|l| l.parse().ok())
            .filter(|l| usize::from(*l) < DIGITS_CLASSES)
            .ok_or_else(|| {
                csv(format!(
                    "label must be an integer 0..={}",
                    DIGITS_CLASSES - 1
                ))
            })?;
        labels.push(label);
    }
    Dataset::new(features, labels, DIGITS_DIM, DIGITS_CLASSES)
}

/// A deterministic label-skewed split into `shards` datasets; every sample is used exactly once.
///
/// Samples are sorted by label and cut into `2·shards` chunks; each shard gets two chunks
/// chosen by a shuffle seeded with `seed`. When there are at least as many chunks as labels,
/// chunks are cut within each label (each label gets `⌊2·shards / labels⌋` chunks, the first
/// labels one more), so every chunk holds one label and a shard at most two. Otherwise the
/// sorted order is cut into equal chunks. A shard may be empty if a label has fewer samples
/// than chunks.
pub fn split_non_iid(data: &Dataset, shards: usize, seed: u64) -> Result<Vec<Dataset>> {
    if shards == 0 {
        return Err(Error::InvalidArgument("shards must be positive".into()));
    }
    let n_chunks = shards
        .checked_mul(2)
        .ok_or_else(|| Error::InvalidArgument("too many shards".into()))?;
    let mut order: Vec<usize> = (0..data.len()).collect();
    order.sort_by_key(|&i| data.labels.get(i).copied());

    // Group boundaries by label, in sorted order.
    let mut groups: Vec<&[usize]> = Vec::new();
    let mut rest: &[usize] = &order;
    while let Some(&first) = rest.first() {
        let label = data.labels.get(first);
        let len = rest
            .iter()
            .position(|&i| data.labels.get(i) != label)
            .unwrap_or(rest.len());
        let (group, tail) = rest.split_at(len);
        groups.push(group);
        rest = tail;
    }

    let cut = |items: &[usize], k: usize, out: &mut Vec<Vec<usize>>| {
        let m = items.len();
        for piece in 0..k {
            let (a, b) = (piece * m / k, (piece + 1) * m / k);
            out.push(items.get(a..b).map(<[usize]>::to_vec).unwrap_or_default());
        }
    };
    let mut chunks: Vec<Vec<usize>> = Vec::with_capacity(n_chunks);
    if !groups.is_empty() && n_chunks >= groups.len() {
        let base = n_chunks / groups.len();
        let extra = n_chunks % groups.len();
        for (g, group) in groups.iter().enumerate() {
            cut(group, base + usize::from(g < extra), &mut chunks);
        }
    } else {
        cut(&order, n_chunks, &mut chunks);
    }

    let mut perm: Vec<usize> = (0..chunks.len()).collect();
    SeededRng::new(seed).shuffle(&mut perm);
    perm.chunks(2)
        .map(|pair| {
            let idx: Vec<usize> = pair
                .iter()
                .filter_map(|&c| chunks.get(c))
                .flatten()
                .copied()
                .collect();
            data.subset(&idx)
        })
        .collect()
}
