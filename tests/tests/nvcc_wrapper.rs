//! docker/nvcc-gencode.sh, the `nvcc` that cudaforge runs for the CUDA builds (the GPU image,
//! docker/build-cuda.sh, benches/gpu/build.sh), played with a fake real nvcc that records its
//! arguments: the architecture list it substitutes, and FlashAttention compiled only for the
//! kernels Lantern launches (the real compile and link of the stubs is shown by
//! benches/gpu/build.sh, whose binary links every specialisation flash_api.cu names).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const SHIPPED: &str =
    "-gencode=arch=compute_80,code=sm_80 -gencode=arch=compute_90,code=compute_90";

fn shipped() -> Vec<&'static str> {
    SHIPPED.split(' ').collect()
}

fn wrapper() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docker/nvcc-gencode.sh")
}

struct Compiled {
    /// The real nvcc's arguments, one per line.
    args: Vec<String>,
}

impl Compiled {
    fn gencodes(&self) -> Vec<&str> {
        self.args
            .iter()
            .filter(|a| a.starts_with("-gencode="))
            .map(String::as_str)
            .collect()
    }
    fn source(&self) -> &str {
        self.args.last().map(String::as_str).unwrap_or_default()
    }
}

/// Runs the wrapper as cudaforge does: `-gencode=<its own> -c -o <object> ... <source>`, in
/// the crate's directory with `source` relative to it.
fn compile(dir: &Path, crate_dir: &Path, source: &str, ptx: bool) -> Compiled {
    let real = dir.join("real-nvcc");
    let record = dir.join("args");
    std::fs::write(
        &real,
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$@\" > '{}'\n",
            record.display()
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| panic!("{e}"));
    let object = dir.join("out.o");
    let mut command = Command::new(wrapper());
    command
        .current_dir(crate_dir)
        .env("LANTERN_REAL_NVCC", &real)
        .env("LANTERN_CUDA_GENCODE", SHIPPED)
        .arg("-gencode=arch=compute_90a,code=sm_90a");
    if ptx {
        command.args(["--ptx", "-o"]).arg(dir.join("out.ptx"));
    } else {
        command.args(["-c", "-o"]).arg(&object);
    }
    command.args(["-std=c++17", "-O3"]).arg(source);
    let output = command.output().unwrap_or_else(|e| panic!("{e}"));
    assert!(output.status.success(), "{output:?}");
    let args = std::fs::read_to_string(&record).unwrap_or_else(|e| panic!("{e}"));
    Compiled {
        args: args.lines().map(str::to_owned).collect(),
    }
}

/// The crate directory as cargo's registry names it (the wrapper recognises FlashAttention by it).
fn flash_crate(root: &Path) -> PathBuf {
    root.join("registry/candle-flash-attn-0.11.1")
}

/// A candle-flash-attn kernel file as the crate ships it; returns its path from the crate.
fn flash_file(root: &Path, name: &str, specialisation: &str) -> String {
    let kernels = flash_crate(root).join("kernels");
    std::fs::create_dir_all(&kernels).unwrap_or_else(|e| panic!("{e}"));
    let path = kernels.join(name);
    let body = format!(
        "#include \"flash_fwd_launch_template.h\"\n\ntemplate<>\n{specialisation} {{\n    \
         run_something<T>(params, stream);\n}}\n"
    );
    std::fs::write(&path, body).unwrap_or_else(|e| panic!("{e}"));
    format!("kernels/{name}")
}

#[test]
fn object_builds_get_the_shipped_architectures_and_ptx_builds_one_virtual_one() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let crate_dir = dir.path().join("registry/candle-core-0.11.1");
    std::fs::create_dir_all(crate_dir.join("src")).unwrap_or_else(|e| panic!("{e}"));
    let source = "src/mmq_instance_q4_0.cu";
    std::fs::write(crate_dir.join(source), "").unwrap_or_else(|e| panic!("{e}"));

    let object = compile(dir.path(), &crate_dir, source, false);
    assert_eq!(object.gencodes(), shipped());
    assert_eq!(object.source(), source);

    let ptx = compile(dir.path(), &crate_dir, source, true);
    assert_eq!(ptx.gencodes(), ["-gencode=arch=compute_90,code=sm_90"]);
}

#[test]
fn flash_attention_kernels_lantern_launches_are_compiled_as_they_are() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    for name in [
        "flash_api.cu",
        "flash_fwd_splitkv_hdim64_bf16_causal_sm80.cu",
        "flash_fwd_splitkv_hdim128_fp16_sm80.cu",
        "flash_fwd_splitkv_hdim256_bf16_sm80.cu",
    ] {
        let source = flash_file(dir.path(), name, "void f()");
        let crate_dir = flash_crate(dir.path());
        let kept = compile(dir.path(), &crate_dir, &source, false);
        assert_eq!(kept.source(), source, "{name}");
        assert_eq!(kept.gencodes(), shipped(), "{name}");
    }
}

#[test]
fn flash_attention_kernels_lantern_never_launches_become_aborting_stubs() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let cases = [
        (
            "flash_fwd_hdim128_bf16_causal_sm80.cu",
            "void run_mha_fwd_<cutlass::bfloat16_t, 128, true>(Flash_fwd_params &params, cudaStream_t stream)",
        ),
        (
            "flash_fwd_hdim32_fp16_sm80.cu",
            "void run_mha_fwd_<cutlass::half_t, 32, false>(Flash_fwd_params &params, cudaStream_t stream)",
        ),
        (
            "flash_fwd_splitkv_hdim512_fp16_causal_sm80.cu",
            "void run_mha_fwd_splitkv_paged_<cutlass::half_t, 512, true>(Flash_fwd_params &params, cudaStream_t stream)",
        ),
    ];
    for (name, specialisation) in cases {
        let source = flash_file(dir.path(), name, specialisation);
        let crate_dir = flash_crate(dir.path());
        let stubbed = compile(dir.path(), &crate_dir, &source, false);
        let stub = PathBuf::from(stubbed.source());
        assert_ne!(
            stub,
            Path::new(&source),
            "{name} must not be compiled as shipped"
        );
        let include = format!("-I{}", crate_dir.join("kernels").display());
        assert!(
            stubbed.args.contains(&include),
            "{name}: {:?}",
            stubbed.args
        );
        assert_eq!(stubbed.gencodes(), shipped(), "{name}");

        let text = std::fs::read_to_string(&stub).unwrap_or_else(|e| panic!("{e}"));
        // The same specialisation, so flash_api.cu's call still links...
        assert!(
            text.contains(&format!("template<>\n{specialisation}\n{{")),
            "{text}"
        );
        // ...declared by flash.h instead of instantiating the kernel templates...
        assert!(text.contains("#include \"flash.h\""), "{text}");
        assert!(!text.contains("flash_fwd_launch_template.h"), "{text}");
        assert!(!text.contains("run_something"), "{text}");
        // ...and loud if anything ever reaches it.
        assert!(text.contains("std::abort();"), "{text}");
        assert!(text.contains(name), "the message names the kernel: {text}");
    }
}
