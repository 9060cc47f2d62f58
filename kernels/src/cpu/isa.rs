//! Which instruction set the CPU kernels use, detected once at run time.
//!
//! Nothing is compiled for the build host: each kernel is compiled once per ISA inside
//! `#[target_feature]` functions (see `arch/`), and the best one the running CPU has is chosen
//! here. `LANTERN_CPU_ISA=scalar|avx2|avx512` forces one (tests and comparisons); forcing an
//! ISA the CPU lacks falls back to the detected one with a warning, never to undefined code.

use std::sync::OnceLock;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Isa {
    /// Portable Rust, no vector extensions assumed: the reference every other path must equal.
    Scalar,
    /// x86-64 AVX2 with FMA.
    Avx2,
    /// x86-64 AVX-512 (F).
    Avx512,
}

impl Isa {
    pub const ALL: [Isa; 3] = [Isa::Scalar, Isa::Avx2, Isa::Avx512];

    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    pub fn parse(name: &str) -> Option<Isa> {
        Self::ALL.into_iter().find(|isa| isa.name() == name)
    }

    /// Whether the running CPU can execute this ISA's kernels.
    pub fn is_supported(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The best ISA the running CPU supports.
    pub fn detected() -> Isa {
        [Isa::Avx512, Isa::Avx2]
            .into_iter()
            .find(|isa| isa.is_supported())
            .unwrap_or(Isa::Scalar)
    }

    /// The ISA the kernels use: `LANTERN_CPU_ISA` when set and supported, else [`Isa::detected`].
    pub fn active() -> Isa {
        static ACTIVE: OnceLock<Isa> = OnceLock::new();
        *ACTIVE.get_or_init(|| {
            let detected = Isa::detected();
            let Ok(wanted) = std::env::var("LANTERN_CPU_ISA") else {
                return detected;
            };
            match Isa::parse(wanted.trim()) {
                Some(isa) if isa.is_supported() => isa,
                Some(isa) => {
                    eprintln!(
                        "LANTERN_CPU_ISA={} is not supported by this CPU; using {}",
                        isa.name(),
                        detected.name()
                    );
                    detected
                }
                None => {
                    eprintln!(
                        "LANTERN_CPU_ISA={wanted:?} is not one of scalar, avx2, avx512; using {}",
                        detected.name()
                    );
                    detected
                }
            }
        })
    }

    /// Every ISA this CPU supports, the reference first.
    pub fn supported() -> Vec<Isa> {
        Self::ALL
            .into_iter()
            .filter(|isa| isa.is_supported())
            .collect()
    }
}
