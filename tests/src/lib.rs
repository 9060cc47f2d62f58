//! Shared helpers of the end-to-end tests, which run the real `lantern` binary and talk to it
//! over HTTP on 127.0.0.1 only.

use serde_json::Value;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `target/<profile>/lantern`, built by `cargo test --workspace` (the `lantern` package has
/// integration tests, so cargo builds its binary before any test runs).
pub fn lantern_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    // target/<profile>/deps/<test-binary> -> target/<profile>/lantern
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(PathBuf::from)
        .unwrap_or_default();
    let binary = profile_dir.join(format!("lantern{}", std::env::consts::EXE_SUFFIX));
    assert!(
        binary.exists(),
        "{} is missing: run the tests with `cargo test --workspace`, which builds it",
        binary.display()
    );
    binary
}

/// Says `SKIPPED: <reason>` on stderr, for a test that cannot get its data or tools here;
/// where `LANTERN_REQUIRE_TEST_DATA=1` (CI sets it) a skip is a failure instead.
pub fn skip(reason: &str) {
    if std::env::var("LANTERN_REQUIRE_TEST_DATA").is_ok_and(|v| v == "1") {
        panic!("{reason}; LANTERN_REQUIRE_TEST_DATA=1 allows no skip");
    }
    eprintln!("SKIPPED: {reason}");
}

/// The Python of the venv `.ci/run` makes (`target/ci-venv`), when it can import `module`;
/// otherwise `None`, after saying SKIPPED on stderr (CI always has it).
pub fn ci_python_with(module: &str) -> Option<PathBuf> {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/ci-venv/bin/python");
    let importable = Command::new(&python)
        .args(["-c", &format!("import {module}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if importable {
        Some(python)
    } else {
        skip(&format!(
            "no {module} in {} (.ci/run installs it)",
            python.display()
        ));
        None
    }
}

/// Runs `script` with `python`, `input` on its standard input; its standard output as JSON.
/// A failing script fails the test, with its standard error.
pub fn python_json(python: &Path, script: &str, input: &str) -> Value {
    use std::io::Write;
    let mut child = Command::new(python)
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_bytes())
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let output = child.wait_with_output().unwrap_or_else(|e| panic!("{e}"));
    assert!(
        output.status.success(),
        "the script failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    json(&String::from_utf8_lossy(&output.stdout))
}

/// Writes the tiny dummy model of `arch` with `seed` into `out` using the binary.
pub fn dummy_model(arch: &str, seed: u64, out: &Path) {
    let status = Command::new(lantern_binary())
        .args([
            "dummy-model",
            "--arch",
            arch,
            "--size",
            "tiny",
            "--seed",
            &seed.to_string(),
            "--out",
        ])
        .arg(out)
        .stderr(Stdio::null())
        .status();
    assert!(
        status.is_ok_and(|s| s.success()),
        "lantern dummy-model failed"
    );
}

/// `lantern serve` on a fresh tiny dummy model of `arch`, with a 32 MiB KV cache, `extra`
/// arguments and `envs`; the directory lives as long as the returned guard.
pub fn tiny_server(
    arch: &str,
    seed: u64,
    extra: &[&str],
    envs: &[(&str, &str)],
) -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    dummy_model(arch, seed, dir.path());
    let model = dir.path().to_string_lossy().into_owned();
    let mut args = vec![
        "serve",
        "--model-id",
        model.as_str(),
        "--kv-cache-memory",
        "32Mi",
    ];
    args.extend_from_slice(extra);
    let server = Server::start(&args, envs, 0);
    (dir, server)
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// A running `lantern serve`, killed on drop.
pub struct Server {
    child: Child,
    /// The server's stdin: it exits when this closes, so a server the test process still
    /// holds (a `static` one) dies with it instead of outliving the tests.
    stdin: Option<std::process::ChildStdin>,
    pub base: String,
    log: std::sync::Arc<std::sync::Mutex<String>>,
    /// Everything written on stdout.
    out: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Server {
    /// Starts `lantern <args>` with `envs` on 127.0.0.1 at `port` (0: a port the OS picks, read
    /// back from the server's stdout), and waits until `/ping` says 200.
    pub fn start(args: &[&str], envs: &[(&str, &str)], port: u16) -> Server {
        let server = Self::spawn(args, envs, port);
        server.wait_ready(Duration::from_secs(120));
        server
    }

    /// Starts without waiting.
    pub fn spawn(args: &[&str], envs: &[(&str, &str)], port: u16) -> Server {
        Self::spawn_program(&lantern_binary(), args, envs, port)
    }

    /// Starts `program` (the binary, or a script that runs it) without waiting.
    pub fn spawn_program(
        program: &Path,
        args: &[&str],
        envs: &[(&str, &str)],
        port: u16,
    ) -> Server {
        let mut command = Command::new(program);
        command
            .args(args)
            .env("LANTERN_HOST", "127.0.0.1")
            .env("PORT", port.to_string())
            .env("LANTERN_EXIT_ON_STDIN_EOF", "true")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for name in [
            "HF_MODEL_ID",
            "MODEL_ID",
            "SAGEMAKER_BIND_TO_PORT",
            "MAX_CONCURRENT_REQUESTS",
            "SAGEMAKER_BATCH",
        ] {
            command.env_remove(name);
        }
        for (name, value) in envs {
            command.env(name, value);
        }
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start lantern: {e}"));
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        if let Some(stderr) = child.stderr.take() {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if let Ok(mut log) = log.lock() {
                        log.push_str(&line);
                        log.push('\n');
                    }
                }
            });
        }
        // The server announces its address on stdout ("lantern listening on http://..."),
        // where EMF records go too: every line is kept.
        let (address_sender, address) = std::sync::mpsc::channel::<String>();
        let out = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        if let Some(stdout) = child.stdout.take() {
            let out = out.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if let Some(url) = line.strip_prefix("lantern listening on ") {
                        let _ = address_sender.send(url.to_string());
                    }
                    if let Ok(mut out) = out.lock() {
                        out.push_str(&line);
                        out.push('\n');
                    }
                }
            });
        }
        let base = if port == 0 {
            address
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|_| {
                    panic!(
                        "the server did not say where it listens: {}",
                        log.lock().map(|l| l.clone()).unwrap_or_default()
                    )
                })
        } else {
            format!("http://127.0.0.1:{port}")
        };
        Server {
            stdin: child.stdin.take(),
            child,
            base,
            log,
            out,
        }
    }

    /// The same process, reached at another port (SAGEMAKER_BIND_TO_PORT moves it).
    pub fn at(mut server: Server, port: u16) -> Server {
        server.base = format!("http://127.0.0.1:{port}");
        server
    }

    pub fn wait_ready(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(response) = ureq::get(&format!("{}/ping", self.base)).call() {
                if response.status() == 200 {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "server not ready in time; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Closes the server's stdin, as the death of the process that started it does.
    pub fn close_stdin(&mut self) {
        self.stdin.take();
    }

    /// Sends SIGTERM, as SageMaker, ECS and Kubernetes do to stop a container.
    pub fn terminate(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
    }

    /// The value of an unlabelled metric in `/metrics`.
    pub fn metric(&self, name: &str) -> Option<f64> {
        let text = self.get("/metrics").body;
        text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
            l.strip_prefix(name)
                .and_then(|rest| rest.strip_prefix(' '))
                .and_then(|v| v.trim().parse().ok())
        })
    }

    /// Whether the log says `needle` within `limit` (stderr is read by a thread: a line the
    /// server just wrote may not be here yet).
    pub fn log_says(&self, needle: &str, limit: Duration) -> bool {
        let deadline = std::time::Instant::now() + limit;
        while !self.log().contains(needle) {
            if std::time::Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    /// What the server wrote on stdout so far.
    pub fn stdout(&self) -> String {
        self.out.lock().map(|l| l.clone()).unwrap_or_default()
    }

    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// The exit status, waiting up to `limit` for the process to end.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// POSTs a JSON body; returns status, headers of interest and the body text.
    pub fn post(&self, path: &str, body: &Value) -> (u16, String) {
        self.post_raw(path, "application/json", &body.to_string(), &[])
            .into()
    }

    pub fn post_raw(
        &self,
        path: &str,
        content_type: &str,
        body: &str,
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut request =
            ureq::post(&format!("{}{path}", self.base)).set("Content-Type", content_type);
        for (name, value) in headers {
            request = request.set(name, value);
        }
        Reply::from(request.send_string(body))
    }

    /// [`Self::post_raw`], with `None` when the connection failed instead of answering.
    pub fn try_post_raw(&self, path: &str, content_type: &str, body: &str) -> Option<Reply> {
        let request = ureq::post(&format!("{}{path}", self.base)).set("Content-Type", content_type);
        match request.send_string(body) {
            Err(ureq::Error::Transport(_)) => None,
            other => Some(Reply::from(other)),
        }
    }

    pub fn get(&self, path: &str) -> Reply {
        Reply::from(ureq::get(&format!("{}{path}", self.base)).call())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A response, whatever its status.
pub struct Reply {
    pub status: u16,
    pub body: String,
    pub custom_attributes: Option<String>,
}

impl From<Result<ureq::Response, ureq::Error>> for Reply {
    fn from(result: Result<ureq::Response, ureq::Error>) -> Self {
        let response = match result {
            Ok(r) | Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("transport error: {e}"),
        };
        let status = response.status();
        let custom_attributes = response
            .header("x-amzn-sagemaker-custom-attributes")
            .map(str::to_string);
        let mut body = String::new();
        let _ = response.into_reader().read_to_string(&mut body);
        Reply {
            status,
            body,
            custom_attributes,
        }
    }
}

impl From<Reply> for (u16, String) {
    fn from(reply: Reply) -> Self {
        (reply.status, reply.body)
    }
}

pub fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// The `data:` payloads of an SSE body.
pub fn sse_data(body: &str) -> Vec<String> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| d.trim_start().to_string())
        .collect()
}
