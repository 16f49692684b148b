//! Host activations: a row-major `[rows, cols]` f32 matrix.

use candle_core::{Device, Tensor};

use crate::backend::{BackendError, BackendResult};

#[derive(Debug, Clone, PartialEq)]
pub struct CpuTensor {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f32>,
}

impl CpuTensor {
    pub fn new(rows: usize, cols: usize, data: Vec<f32>) -> BackendResult<Self> {
        if data.len() != rows * cols {
            return Err(BackendError::Shape {
                op: "tensor",
                detail: format!("{} elements for [{rows}, {cols}]", data.len()),
            });
        }
        Ok(Self { rows, cols, data })
    }

    pub fn zeros(rows: usize, cols: usize) -> Self {
        Self {
            rows,
            cols,
            data: vec![0.0; rows * cols],
        }
    }

    pub fn row(&self, r: usize) -> &[f32] {
        &self.data[r * self.cols..(r + 1) * self.cols]
    }

    pub fn to_candle(&self) -> BackendResult<Tensor> {
        Ok(Tensor::from_slice(
            &self.data,
            (self.rows, self.cols),
            &Device::Cpu,
        )?)
    }

    pub fn from_candle(t: &Tensor) -> BackendResult<Self> {
        let (rows, cols) = t.dims2()?;
        let data = t.flatten_all()?.to_vec1::<f32>()?;
        Self::new(rows, cols, data)
    }
}

/// Fails unless `a` and `b` have the same shape.
pub fn same_shape(op: &'static str, a: &CpuTensor, b: &CpuTensor) -> BackendResult<()> {
    if a.rows != b.rows || a.cols != b.cols {
        return Err(BackendError::Shape {
            op,
            detail: format!("[{}, {}] vs [{}, {}]", a.rows, a.cols, b.rows, b.cols),
        });
    }
    Ok(())
}
