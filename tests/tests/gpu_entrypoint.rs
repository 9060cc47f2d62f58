//! The GPU image's start-up choices in docker/entrypoint.sh, played without a GPU: a stub
//! `nvidia-smi` on PATH answers as each GPU generation (or as a host with none), and a stub
//! `lantern` prints what it was started with. One fat binary serves every generation, so the
//! entrypoint's choices are the library path (CUDA forward-compatibility libraries for old
//! drivers, the stub libcuda when there is no driver) and the log line saying which of the
//! image's kernels the GPU runs.

use lantern_tests::{lantern_binary, Server};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// What the stub `nvidia-smi` does.
enum Gpu {
    /// `name, compute_cap, driver_version`, as `--format=csv,noheader` prints it.
    Answers(&'static str),
    /// Installed but no driver reachable (its real exit status and message).
    Fails,
    /// Not in the container at all (no `--gpus all`).
    Absent,
}

struct Started {
    /// The stub lantern's report: `args=...` and `ld=...` lines.
    report: String,
    /// The entrypoint's stderr.
    log: String,
    compat: PathBuf,
    stubs: PathBuf,
}

fn write_script(path: &Path, body: &str) {
    std::fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap_or_else(|e| panic!("{e}"));
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| panic!("{e}"));
}

fn entrypoint() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docker/entrypoint.sh")
}

/// Runs the entrypoint as the GPU image does (`serve --port 0`), with `extra` environment.
fn start(gpu: Gpu, extra: &[(&str, &str)]) -> Started {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let bin = dir.path().join("bin");
    let compat = dir.path().join("compat");
    let stubs = dir.path().join("stubs");
    for d in [&bin, &compat, &stubs] {
        std::fs::create_dir_all(d).unwrap_or_else(|e| panic!("{e}"));
    }
    match gpu {
        Gpu::Answers(line) => write_script(
            &bin.join("nvidia-smi"),
            &format!(
                "case \"$*\" in *--query-gpu=name,compute_cap,driver_version*) echo '{line}' ;; *) exit 3 ;; esac"
            ),
        ),
        Gpu::Fails => write_script(
            &bin.join("nvidia-smi"),
            "echo \"NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\"; exit 9",
        ),
        Gpu::Absent => {}
    }
    let fake_lantern = dir.path().join("lantern");
    write_script(
        &fake_lantern,
        "echo \"args=$*\"; echo \"ld=${LD_LIBRARY_PATH:-}\"; echo \"device=${LANTERN_DEVICE:-}\"",
    );
    let mut command = Command::new(entrypoint());
    command
        .args(["serve", "--port", "0"])
        .env_clear()
        .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
        .env("LANTERN_BIN", &fake_lantern)
        .env("LANTERN_IMAGE_CUDA", "12.4")
        .env("LANTERN_DRIVER_MIN", "550")
        .env("LANTERN_DEVICE", "cuda")
        .env("LANTERN_CUDA_COMPAT_DIR", &compat)
        .env("LANTERN_CUDA_STUB_DIR", &stubs);
    for (name, value) in extra {
        command.env(name, value);
    }
    let output = command.output().unwrap_or_else(|e| panic!("{e}"));
    assert!(output.status.success(), "{output:?}");
    let started = Started {
        report: String::from_utf8_lossy(&output.stdout).into_owned(),
        log: String::from_utf8_lossy(&output.stderr).into_owned(),
        compat: compat.clone(),
        stubs: stubs.clone(),
    };
    // The directory (and so the paths in the report) must outlive the assertions.
    std::mem::forget(dir);
    started
}

impl Started {
    fn library_path(&self) -> &str {
        self.report
            .lines()
            .find_map(|l| l.strip_prefix("ld="))
            .unwrap_or_default()
    }
    fn uses_compat(&self) -> bool {
        self.library_path()
            .split(':')
            .any(|d| Path::new(d) == self.compat)
    }
    fn uses_stub(&self) -> bool {
        self.library_path()
            .split(':')
            .any(|d| Path::new(d) == self.stubs)
    }
    fn served(&self) -> bool {
        self.report.lines().any(|l| l == "args=serve --port 0")
    }
}

#[test]
fn each_gpu_generation_runs_the_code_the_image_has_for_it() {
    // (nvidia-smi's answer, the code the log must name, whether compat libraries are needed)
    let cases = [
        (
            "NVIDIA A100-SXM4-40GB, 8.0, 470.256.02",
            "sm_80 machine code",
            true,
        ),
        ("NVIDIA A10G, 8.6, 535.183.01", "sm_80 machine code", true),
        ("NVIDIA L4, 8.9, 550.127.05", "sm_80 machine code", false),
        (
            "NVIDIA H100 80GB HBM3, 9.0, 550.127.05",
            "sm_90 machine code",
            false,
        ),
        ("NVIDIA H200, 9.0, 580.95.05", "sm_90 machine code", false),
        ("NVIDIA B200, 10.0, 580.95.05", "compute_90 PTX", false),
    ];
    for (answer, code, compat) in cases {
        let started = start(Gpu::Answers(answer), &[]);
        assert!(started.served(), "{answer}: {}", started.report);
        let lines: Vec<&str> = started.log.lines().collect();
        assert_eq!(lines.len(), 1, "{answer}: one log line: {}", started.log);
        let line: serde_json::Value = serde_json::from_str(lines[0])
            .unwrap_or_else(|e| panic!("{answer}: {e}: {}", lines[0]));
        let message = line["fields"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(code), "{answer}: {message}");
        assert_eq!(
            started.uses_compat(),
            compat,
            "{answer}: {}",
            started.report
        );
        assert_eq!(
            message.contains("forward-compatibility"),
            compat,
            "{answer}: {message}"
        );
        assert!(!started.uses_stub(), "{answer}: {}", started.report);
        assert!(started.report.contains("device=cuda"), "{}", started.report);
    }
}

#[test]
fn a_gpu_older_than_ampere_is_left_to_lantern_to_refuse() {
    // T4 (ml.g4dn): no kernels in the image. The entrypoint logs nothing of its own, so the
    // one line the user sees is lantern's, naming the instance types that work
    // (lantern_kernels::device_choice::check_compute_capability, unit-tested there).
    let started = start(Gpu::Answers("Tesla T4, 7.5, 535.183.01"), &[]);
    assert!(started.served(), "{}", started.report);
    assert_eq!(started.log, "");
}

#[test]
fn without_a_driver_lantern_starts_on_the_stub_and_explains() {
    for gpu in [Gpu::Absent, Gpu::Fails] {
        let started = start(gpu, &[]);
        assert!(started.served(), "{}", started.report);
        assert!(started.uses_stub(), "{}", started.report);
        assert!(!started.uses_compat(), "{}", started.report);
        assert_eq!(started.log, "");
    }
}

#[test]
fn cpu_device_and_cpu_image_skip_the_gpu_checks() {
    let answer = Gpu::Answers("NVIDIA A10G, 8.6, 470.256.02");
    let on_cpu = start(answer, &[("LANTERN_DEVICE", "cpu")]);
    assert!(on_cpu.served() && !on_cpu.uses_compat() && !on_cpu.uses_stub());
    assert_eq!(on_cpu.log, "");
    let cpu_image = start(Gpu::Absent, &[("LANTERN_IMAGE_CUDA", "")]);
    assert!(cpu_image.served() && !cpu_image.uses_stub());
}

#[test]
fn other_commands_pass_through() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let fake = dir.path().join("lantern");
    write_script(&fake, "echo \"args=$*\"");
    let output = Command::new(entrypoint())
        .args(["dummy-model", "--arch", "llama"])
        .env("LANTERN_BIN", &fake)
        .env("LANTERN_IMAGE_CUDA", "12.4")
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "args=dummy-model --arch llama\n"
    );
}

/// The real binary through the entrypoint on this GPU-less machine, asked for CUDA as the GPU
/// image asks: it exits non-zero, its last log line (JSON, as every other) naming the way out.
#[test]
fn asking_for_a_gpu_that_cannot_be_used_fails_clearly() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap_or_else(|e| panic!("{e}"));
    let binary = lantern_binary();
    let mut server = Server::spawn_program(
        &entrypoint(),
        &["serve"],
        &[
            ("LANTERN_BIN", binary.to_str().unwrap_or_default()),
            ("LANTERN_IMAGE_CUDA", "12.4"),
            ("LANTERN_DEVICE", "cuda"),
            ("LANTERN_CUDA_STUB_DIR", bin.to_str().unwrap_or_default()),
            ("LOG_FORMAT", "json"),
        ],
        0,
    );
    let status = server
        .wait_exit(Duration::from_secs(60))
        .unwrap_or_else(|| panic!("still running: {}", server.log()));
    assert!(!status.success(), "{status:?}");
    // The log is read on another thread: wait for its last line.
    assert!(
        server.log_says("lantern stopped", Duration::from_secs(10)),
        "{}",
        server.log()
    );
    let log = server.log();
    let last = log.lines().last().unwrap_or_default();
    let line: serde_json::Value =
        serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: {log}"));
    assert_eq!(line["level"], "ERROR", "{log}");
    let error = line["fields"]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("--device cpu"),
        "the error names the fix: {log}"
    );
}
