//! Models as named f32 tensors: safetensors on disk, one flat vector for secure aggregation.

use std::collections::BTreeMap;

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

use crate::error::{Error, Result};

/// Name of the softmax-regression weight matrix, shape `[classes, dim]`.
pub const WEIGHT: &str = "weight";
/// Name of the softmax-regression bias vector, shape `[classes]`.
pub const BIAS: &str = "bias";

/// A dense f32 tensor, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    shape: Vec<usize>,
    data: Vec<f32>,
}

impl Tensor {
    /// A tensor, checking that `data.len()` is the product of `shape`.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Result<Self> {
        let n = element_count(&shape)?;
        if n != data.len() {
            return Err(Error::Shape(format!(
                "shape {shape:?} needs {n} values, got {}",
                data.len()
            )));
        }
        Ok(Self { shape, data })
    }

    /// A tensor of zeros.
    pub fn zeros(shape: Vec<usize>) -> Result<Self> {
        let n = element_count(&shape)?;
        Ok(Self {
            shape,
            data: vec![0.0; n],
        })
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The values, row-major.
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    /// The values, mutable (the shape stays fixed).
    pub fn data_mut(&mut self) -> &mut [f32] {
        &mut self.data
    }
}

fn element_count(shape: &[usize]) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| Error::Shape(format!("shape {shape:?} overflows")))
}

/// Named tensors, kept in name order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Model {
    /// The tensors by name.
    pub tensors: BTreeMap<String, Tensor>,
}

impl Model {
    /// A softmax-regression model (`weight: [classes, dim]`, `bias: [classes]`) of zeros.
    pub fn softmax_regression(dim: usize, classes: usize) -> Result<Model> {
        let mut tensors = BTreeMap::new();
        tensors.insert(WEIGHT.to_owned(), Tensor::zeros(vec![classes, dim])?);
        tensors.insert(BIAS.to_owned(), Tensor::zeros(vec![classes])?);
        Ok(Model { tensors })
    }

    /// Total number of values across tensors.
    pub fn num_params(&self) -> usize {
        self.tensors.values().map(|t| t.data.len()).sum()
    }

    /// All values as one vector, tensors concatenated in name order.
    pub fn flatten(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.num_params());
        for t in self.tensors.values() {
            out.extend_from_slice(&t.data);
        }
        out
    }

    /// A model with this model's names and shapes and the values of `flat` (the inverse of
    /// [`Model::flatten`]). `flat` must have exactly [`Model::num_params`] values.
    pub fn unflatten(&self, flat: &[f32]) -> Result<Model> {
        if flat.len() != self.num_params() {
            return Err(Error::Shape(format!(
                "flat vector has {} values, the model {}",
                flat.len(),
                self.num_params()
            )));
        }
        let mut rest = flat;
        let mut tensors = BTreeMap::new();
        for (name, t) in &self.tensors {
            let (head, tail) = rest.split_at(t.data.len());
            tensors.insert(name.clone(), Tensor::new(t.shape.clone(), head.to_vec())?);
            rest = tail;
        }
        Ok(Model { tensors })
    }

    /// Whether `other` has the same names and shapes.
    pub fn same_layout(&self, other: &Model) -> bool {
        self.tensors.len() == other.tensors.len()
            && self
                .tensors
                .iter()
                .zip(&other.tensors)
                .all(|((a, ta), (b, tb))| a == b && ta.shape == tb.shape)
    }

    /// Serialize to the safetensors format (all tensors F32, little-endian).
    pub fn to_safetensors(&self) -> Result<Vec<u8>> {
        let bytes: Vec<(String, Vec<u8>, &[usize])> = self
            .tensors
            .iter()
            .map(|(name, t)| {
                let raw = t.data.iter().flat_map(|v| v.to_le_bytes()).collect();
                (name.clone(), raw, t.shape.as_slice())
            })
            .collect();
        let views = bytes
            .iter()
            .map(|(name, raw, shape)| {
                TensorView::new(Dtype::F32, shape.to_vec(), raw)
                    .map(|v| (name.as_str(), v))
                    .map_err(|e| Error::Safetensors(e.to_string()))
            })
            .collect::<Result<Vec<_>>>()?;
        safetensors::serialize(views, None).map_err(|e| Error::Safetensors(e.to_string()))
    }

    /// Parse a safetensors buffer; any dtype other than F32 is refused.
    pub fn from_safetensors(bytes: &[u8]) -> Result<Model> {
        let st = SafeTensors::deserialize(bytes).map_err(|e| Error::Safetensors(e.to_string()))?;
        let mut tensors = BTreeMap::new();
        for (name, view) in st.tensors() {
            if view.dtype() != Dtype::F32 {
                return Err(Error::UnsupportedDtype {
                    name,
                    dtype: format!("{:?}", view.dtype()),
                });
            }
            let data = view
                .data()
                .chunks_exact(4)
                .map(|c| {
                    <[u8; 4]>::try_from(c)
                        .map(f32::from_le_bytes)
                        .map_err(|_| Error::Safetensors("truncated f32 data".into()))
                })
                .collect::<Result<Vec<f32>>>()?;
            let t = Tensor::new(view.shape().to_vec(), data)?;
            tensors.insert(name, t);
        }
        Ok(Model { tensors })
    }
}
