//! The compute roofs the benchmarks compare against: each ISA's largest dense microkernel and
//! its quantized kernel, run on data that stays in L1 on the calling thread.

use super::arch::{MAX_ROWS, PANEL_GROUPS};
use super::generic::PANEL;
use super::matmul::tile_shape;
use super::quant::{QuantFormat, QuantPanels, QuantizedRows, BLOCK};

impl super::CpuKernels {
    /// Multiply-adds per second of this ISA's largest microkernel on data that stays in L1,
    /// on the calling thread: the compute roof the benchmarks compare against.
    pub fn microkernel_peak_flops(&self, seconds: f64) -> f64 {
        let (rows, group) = tile_shape(self.kernels, MAX_ROWS);
        let (k, panels) = (128, PANEL_GROUPS[group]);
        let x = vec![0.5f32; rows * k];
        let w = vec![0.25f32; panels * k * PANEL];
        let mut out = vec![0f32; panels * rows * PANEL];
        let tile = self.kernels.tile_f32[rows - 1][group];
        let started = std::time::Instant::now();
        let mut calls = 0u64;
        while started.elapsed().as_secs_f64() < seconds {
            for _ in 0..1000 {
                tile(&x, k, &w, &mut out, rows * PANEL);
            }
            calls += 1000;
            std::hint::black_box(&mut out);
        }
        let flops = 2.0 * (calls as f64) * (rows * k * panels * PANEL) as f64;
        flops / started.elapsed().as_secs_f64()
    }
}

impl super::CpuKernels {
    /// Integer multiply-adds (x2, as operations) per second of this ISA's quantized kernel on
    /// one Q4_0 panel of 18 blocks and 4 rows that stay in L1, on the calling thread: the
    /// compute roof of the quantized products.
    pub fn quant_peak_ops(&self, seconds: f64) -> f64 {
        let (rows, blocks, format) = (4, 18, QuantFormat::Q4_0);
        let k = blocks * BLOCK;
        let gguf: Vec<u8> = (0..16 * blocks * format.gguf_block_bytes())
            .map(|i| {
                if i % 18 < 2 {
                    0x20
                } else {
                    (i * 37 % 251) as u8
                }
            })
            .collect();
        let Ok(panel) = QuantPanels::from_gguf(format, &gguf, 16, k) else {
            return 0.0;
        };
        let x: Vec<f32> = (0..rows * k)
            .map(|i| ((i % 13) as f32 - 6.0) / 13.0)
            .collect();
        let mut quantized = QuantizedRows::default();
        quantized.quantize(&x, rows, k);
        let view = quantized.rows(0, rows, k);
        let mut out = vec![0f32; rows * PANEL];
        let tile = self.kernels.quant_tile;
        let started = std::time::Instant::now();
        let mut calls = 0u64;
        while started.elapsed().as_secs_f64() < seconds {
            for _ in 0..1000 {
                tile(format, view, blocks, &panel.bytes, &mut out);
            }
            calls += 1000;
            std::hint::black_box(&mut out);
        }
        2.0 * (calls as f64) * (rows * k * PANEL) as f64 / started.elapsed().as_secs_f64()
    }
}
