//! Diagnostic: for which row counts does candle's CPU matmul give a row the same bits as it
//! gets in a big batch? Prints, per (k, n) shape, the row counts whose row 0 differs.

use candle_core::{DType, Device, Tensor};

fn main() -> anyhow::Result<()> {
    let device = Device::Cpu;
    let shapes = [
        (64, 64),
        (64, 32),
        (64, 128),
        (128, 64),
        (64, 512),
        (16, 37),
        (37, 16),
        (576, 576),
        (576, 192),
        (576, 1536),
        (1536, 576),
        (64, 300),
        (300, 64),
    ];
    for (k, n) in shapes {
        let x = Tensor::randn(0f32, 1., (512, k), &device)?;
        let w = Tensor::randn(0f32, 1., (n, k), &device)?;
        let reference = x
            .narrow(0, 0, 512)?
            .matmul(&w.t()?)?
            .get(0)?
            .to_vec1::<f32>()?;
        let mut differ = Vec::new();
        for m in 1..=512 {
            let row = x
                .narrow(0, 0, m)?
                .matmul(&w.t()?)?
                .get(0)?
                .to_vec1::<f32>()?;
            if row != reference {
                differ.push(m);
            }
        }
        // Also: does a row's result depend on its index within the batch?
        let shifted = x
            .narrow(0, 1, 64)?
            .matmul(&w.t()?)?
            .get(0)?
            .to_vec1::<f32>()?;
        let at1 = x
            .narrow(0, 0, 64)?
            .matmul(&w.t()?)?
            .get(1)?
            .to_vec1::<f32>()?;
        println!("k={k} n={n}: row 0 differs from the 512-row result at m = {:?}{}; position-dependent: {}", &differ[..differ.len().min(20)], if differ.len() > 20 { format!(" ... ({} total)", differ.len()) } else { String::new() }, shifted != at1);
        let _ = DType::F32;
    }
    Ok(())
}
