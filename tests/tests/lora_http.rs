//! LoRA adapters over HTTP, on the real binary: chosen per request on every API and matching
//! the merged model; SageMaker's adapter API checked against AWS's container standard (its
//! request models and messages); vLLM's load/unload routes; every bad source or adapter
//! refused with serving going on; adapters added and removed under 32 running clients
//! without a request lost.

use lantern_tests::{ci_python_with, json, lantern_binary, python_json, Server};
use serde_json::{json as body, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

fn run(args: &[&str]) {
    let status = Command::new(lantern_binary())
        .args(args)
        .stderr(Stdio::null())
        .status();
    assert!(status.is_ok_and(|s| s.success()), "lantern {args:?} failed");
}

fn text(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// A root holding the tiny Llama (`base`) and adapters `a` (rank 8, all projections, with
/// its merged twin `merged-a`), `b` (rank 4, q/v, rslora), `c` (rank 16) and `wide` (rank 64).
struct Place {
    root: tempfile::TempDir,
}

impl Place {
    fn new() -> Self {
        let root = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let p = |name: &str| text(&root.path().join(name));
        lantern_tests::dummy_model("llama", 5, &root.path().join("base"));
        let adapter = |base: &str, out: &str, extra: &[&str]| {
            let (base, out) = (p(base), p(out));
            let mut args = vec!["dummy-adapter", "--base", &base, "--out", &out];
            args.extend_from_slice(extra);
            run(&args);
        };
        let merged = p("merged-a");
        adapter(
            "base",
            "a",
            &["--rank", "8", "--seed", "1", "--merged-into", &merged],
        );
        adapter(
            "base",
            "b",
            &[
                "--rank",
                "4",
                "--rslora",
                "--targets",
                "q_proj,v_proj",
                "--seed",
                "2",
            ],
        );
        adapter("base", "c", &["--rank", "16", "--seed", "3"]);
        adapter("base", "wide", &["--rank", "64", "--seed", "4"]);
        Self { root }
    }

    fn path(&self, name: &str) -> String {
        text(&self.root.path().join(name))
    }

    /// `lantern serve` on the base with adapter `a` from the start.
    fn serve(&self, extra: &[&str]) -> Server {
        let (base, a) = (self.path("base"), format!("a={}", self.path("a")));
        let mut args = vec![
            "serve",
            "--model-id",
            &base,
            "--kv-cache-memory",
            "32Mi",
            "--lora-adapters",
            &a,
            "--max-lora-rank",
            "32",
        ];
        args.extend_from_slice(extra);
        Server::start(&args, &[], 0)
    }
}

fn generate(server: &Server, inputs: &str, parameters: Value) -> Value {
    let (status, reply) = server.post(
        "/generate",
        &body!({"inputs": inputs, "parameters": parameters}),
    );
    assert_eq!(status, 200, "{reply}");
    json(&reply)
}

/// Greedy tokens with each one's lead over the runner-up, and the prompt's teacher-forced
/// log-probabilities.
fn details(server: &Server, adapter: Option<&str>) -> (Vec<(u64, f64)>, Vec<f64>) {
    let mut parameters = body!({"max_new_tokens": 12, "details": true,
        "decoder_input_details": true, "top_n_tokens": 2});
    if let Some(adapter) = adapter {
        parameters["adapter_id"] = body!(adapter);
    }
    let reply = generate(server, "the river runs past the mill and", parameters);
    let detail = &reply["details"];
    let tokens = detail["tokens"].as_array().cloned().unwrap_or_default();
    let tops = detail["top_tokens"].as_array().cloned().unwrap_or_default();
    let greedy = tokens
        .iter()
        .zip(&tops)
        .map(|(t, top)| {
            let lp = |i: usize| top[i]["logprob"].as_f64().unwrap_or(f64::NAN);
            (t["id"].as_u64().unwrap_or(0), lp(0) - lp(1))
        })
        .collect();
    let prefill = detail["prefill"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["logprob"].as_f64())
        .collect();
    (greedy, prefill)
}

#[test]
fn adapters_are_chosen_per_request_on_every_api_and_match_the_merged_model() {
    let place = Place::new();
    // Compared with the merged model within 1e-3: keys and values kept in f32 on both.
    let f32_cache = ["--kv-cache-dtype", "f32"];
    let server = place.serve(&f32_cache);
    let merged = Server::start(
        &[
            "serve",
            "--model-id",
            &place.path("merged-a"),
            "--kv-cache-memory",
            "32Mi",
            f32_cache[0],
            f32_cache[1],
        ],
        &[],
        0,
    );
    // The oracle: teacher-forced log-probabilities within 1e-3, greedy tokens equal until
    // the merged model's two best are within 1e-3.
    let (ours, our_prefill) = details(&server, Some("a"));
    let (theirs, their_prefill) = details(&merged, None);
    assert_eq!(our_prefill.len(), their_prefill.len());
    for (o, t) in our_prefill.iter().zip(&their_prefill) {
        assert!(
            (o - t).abs() < 1e-3,
            "prompt log-probabilities {our_prefill:?} vs {their_prefill:?}"
        );
    }
    for (i, ((our, _), (their, lead))) in ours.iter().zip(&theirs).enumerate() {
        if *lead < 1e-3 {
            break;
        }
        assert_eq!(our, their, "greedy token {i}");
    }
    let (base, _) = details(&server, None);
    assert_ne!(base, ours, "the adapter changes nothing");
    // The base's own name means the base.
    let model_name = json(&server.get("/info").body)["model_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(details(&server, Some(&model_name)).0, base);

    // OpenAI: `model` names the adapter; an unknown model is a 404 naming it.
    let chat = |model: &str| {
        server.post(
            "/v1/chat/completions",
            &body!({"model": model, "messages": [{"role": "user", "content": "hello"}],
                    "max_tokens": 8, "temperature": 0}),
        )
    };
    let (status, under_a) = chat("a");
    assert_eq!(status, 200, "{under_a}");
    assert_eq!(json(&under_a)["model"], "a");
    let (status, as_base) = chat(&model_name);
    assert_eq!(status, 200, "{as_base}");
    assert_ne!(
        json(&under_a)["choices"][0]["message"]["content"],
        json(&as_base)["choices"][0]["message"]["content"]
    );
    let (status, typo) = chat("aa");
    assert_eq!(status, 404, "{typo}");
    assert!(
        json(&typo)["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("`aa`")),
        "{typo}"
    );
    let models = json(&server.get("/v1/models").body);
    let listed = models["data"].as_array().cloned().unwrap_or_default();
    assert!(
        listed
            .iter()
            .any(|m| m["id"] == "a" && m["parent"] == body!(model_name)),
        "{models}"
    );

    // TGI: an unknown adapter_id is a 422 naming the field.
    let (status, unknown) = server.post(
        "/generate",
        &body!({"inputs": "hi", "parameters": {"adapter_id": "nope"}}),
    );
    assert_eq!(status, 422, "{unknown}");
    assert!(unknown.contains("nope"), "{unknown}");

    // SageMaker: the header picks the adapter whatever the body's schema.
    let tgi =
        body!({"inputs": "the river runs past the mill and", "parameters": {"max_new_tokens": 12}});
    let invoke = |adapter: &str, request: &Value| {
        server.post_raw(
            "/invocations",
            "application/json",
            &request.to_string(),
            &[("X-Amzn-SageMaker-Adapter-Identifier", adapter)],
        )
    };
    let by_header = invoke("a", &tgi);
    assert_eq!(by_header.status, 200, "{}", by_header.body);
    let by_field = generate(
        &server,
        "the river runs past the mill and",
        body!({"max_new_tokens": 12, "adapter_id": "a"}),
    );
    assert_eq!(
        json(&by_header.body)[0]["generated_text"],
        by_field["generated_text"]
    );
    let chat_body = body!({"messages": [{"role": "user", "content": "hello"}], "max_tokens": 8, "temperature": 0});
    let chat_by_header = invoke("a", &chat_body);
    assert_eq!(
        json(&chat_by_header.body)["choices"][0]["message"]["content"],
        json(&under_a)["choices"][0]["message"]["content"]
    );
    let missing = invoke("nope", &tgi);
    assert_eq!(missing.status, 404, "{}", missing.body);
    assert!(missing.body.contains("nope"), "{}", missing.body);

    // Metrics: requests per adapter, and vLLM's adapter info series.
    let metrics = server.get("/metrics").body;
    assert!(
        metrics.contains("lantern_lora_requests_total{adapter=\"a\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("vllm:lora_requests_info{"), "{metrics}");
    let info = json(&server.get("/info").body);
    assert!(
        info["lora_adapter_bytes"].as_u64().is_some_and(|b| b > 0),
        "{info}"
    );
}

/// SageMaker's adapter API, driven with AWS's container standard's own request models: the
/// register, invoke, unregister flow answers its messages, what its models refuse the
/// server refuses with 400, and its defaults (preload, no pin) are the server's.
#[test]
fn the_sagemaker_adapter_flow_follows_the_container_standard() {
    let Some(python) = ci_python_with("model_hosting_container_standards.sagemaker.lora.models")
    else {
        return;
    };
    let place = Place::new();
    let server = place.serve(&[]);
    let script = r#"
import json, sys, urllib.request, urllib.error
from model_hosting_container_standards.sagemaker.lora.models import SageMakerRegisterLoRAAdapterRequest
from model_hosting_container_standards.sagemaker.lora.constants import SageMakerLoRAApiHeader, ResponseMessage
cfg = json.load(sys.stdin)
def call(method, path, body=None, headers=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(cfg["base"] + path, data=data, method=method,
        headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request) as r:
            return [r.status, r.read().decode()]
    except urllib.error.HTTPError as e:
        return [e.code, e.read().decode()]
alias = {SageMakerLoRAApiHeader.ADAPTER_ALIAS: "b-alias"}
pick = {SageMakerLoRAApiHeader.ADAPTER_IDENTIFIER: "b"}
invoke = {"inputs": "hello", "parameters": {"max_new_tokens": 8}}
out = {}
register = SageMakerRegisterLoRAAdapterRequest(name="b", src=cfg["b"])
out["register"] = call("POST", "/adapters", register.model_dump(), alias)
out["expected_register"] = ResponseMessage.ADAPTER_REGISTERED.format(alias="b-alias")
out["listing"] = json.loads(call("GET", "/adapters")[1])
out["defaults"] = register.model_dump()
out["invoke"] = call("POST", "/invocations", invoke, pick)
out["delete"] = call("DELETE", "/adapters/b", None, alias)
out["expected_delete"] = ResponseMessage.ADAPTER_UNREGISTERED.format(alias="b-alias")
out["after"] = call("POST", "/invocations", invoke, pick)
out["delete_again"] = call("DELETE", "/adapters/b")
out["expected_not_found"] = ResponseMessage.ADAPTER_NOT_FOUND.format(alias="b")
refused = []
for body in [{"name": "", "src": cfg["b"]}, {"name": "x", "src": ""}, {"name": "x"}, {"src": cfg["b"]}]:
    try:
        SageMakerRegisterLoRAAdapterRequest.model_validate(body)
        valid = True
    except Exception:
        valid = False
    refused.append([valid, call("POST", "/adapters", body)[0]])
out["refused"] = refused
print(json.dumps(out))
"#;
    let base_url = server.base.clone();
    let out = python_json(
        &python,
        script,
        &body!({"base": base_url, "b": place.path("b")}).to_string(),
    );
    assert_eq!(
        out["register"],
        body!([200, out["expected_register"]]),
        "{out}"
    );
    let listed = out["listing"]["adapters"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let b = listed
        .iter()
        .find(|a| a["name"] == "b")
        .cloned()
        .unwrap_or_default();
    assert_eq!(b["loaded"], out["defaults"]["preload"], "{out}");
    assert_eq!(b["pinned"], out["defaults"]["pin"], "{out}");
    assert_eq!(out["invoke"][0], 200, "{out}");
    assert_eq!(out["delete"], body!([200, out["expected_delete"]]), "{out}");
    assert_eq!(out["after"][0], 404, "{out}");
    assert_eq!(out["delete_again"][0], 404, "{out}");
    assert!(
        out["delete_again"][1]
            .as_str()
            .is_some_and(|m| m.contains(out["expected_not_found"].as_str().unwrap_or("?"))),
        "{out}"
    );
    for pair in out["refused"].as_array().cloned().unwrap_or_default() {
        assert_eq!(pair, body!([false, 400]), "{out}");
    }
}

#[test]
fn vllm_load_and_unload_routes_add_and_remove_adapters() {
    let place = Place::new();
    let server = place.serve(&[]);
    let (status, loaded) = server.post(
        "/v1/load_lora_adapter",
        &body!({"lora_name": "b", "lora_path": place.path("b")}),
    );
    assert_eq!(status, 200, "{loaded}");
    let (status, reply) = server.post(
        "/v1/completions",
        &body!({"model": "b", "prompt": "the river", "max_tokens": 6, "temperature": 0}),
    );
    assert_eq!(status, 200, "{reply}");
    let (status, again) = server.post(
        "/v1/load_lora_adapter",
        &body!({"lora_name": "b", "lora_path": place.path("b")}),
    );
    assert_eq!(status, 409, "{again}");
    let (status, unloaded) = server.post("/v1/unload_lora_adapter", &body!({"lora_name": "b"}));
    assert_eq!(status, 200, "{unloaded}");
    let (status, gone) = server.post(
        "/v1/completions",
        &body!({"model": "b", "prompt": "the river", "max_tokens": 6}),
    );
    assert_eq!(status, 404, "{gone}");
    let (status, twice) = server.post("/v1/unload_lora_adapter", &body!({"lora_name": "b"}));
    assert_eq!(status, 404, "{twice}");
}

#[test]
fn bad_sources_and_bad_adapters_are_refused_and_serving_goes_on() {
    let place = Place::new();
    let server = place.serve(&[]);
    let outside = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    // An adapter outside the roots, reached by `..` and by a symlink inside the root.
    run(&[
        "dummy-adapter",
        "--base",
        &place.path("base"),
        "--out",
        &text(&outside.path().join("secret")),
    ]);
    let link = place.root.path().join("link");
    std::os::unix::fs::symlink(outside.path().join("secret"), &link)
        .unwrap_or_else(|e| panic!("{e}"));
    let escape = format!(
        "{}/../{}",
        place.path("base"),
        relative_to_parent(outside.path(), place.root.path())
    );
    // Missing files, an unsupported field, a target outside the decoder.
    let missing = place.root.path().join("missing");
    std::fs::create_dir_all(&missing).unwrap_or_else(|e| panic!("{e}"));
    let dora = copy_adapter(&place, "a", "dora", |c| c["use_dora"] = body!(true));
    let embed = copy_adapter(&place, "a", "embed", |c| {
        c["target_modules"] = body!(["embed_tokens"])
    });
    let cases: Vec<(String, u16, &str)> = vec![
        (escape, 403, "outside the adapter roots"),
        (text(&link), 403, "outside the adapter roots"),
        ("s3://bucket/adapters/a".into(), 400, "remote source"),
        (text(&missing), 424, "adapter_config.json"),
        (place.path("wide"), 424, "max-lora-rank"),
        (swapped_q_and_k(&place), 424, "the base model's is"),
        (dora, 424, "use_dora"),
        (embed, 424, "embed_tokens"),
    ];
    for (src, status, says) in cases {
        let reply = server.post_raw(
            "/adapters",
            "application/json",
            &body!({"name": "bad", "src": src}).to_string(),
            &[],
        );
        assert_eq!(reply.status, status, "{src}: {}", reply.body);
        assert!(
            reply.body.contains(says),
            "{src}: `{says}` not in {}",
            reply.body
        );
    }
    let taken = server.post_raw(
        "/adapters",
        "application/json",
        &body!({"name": "a", "src": place.path("c")}).to_string(),
        &[],
    );
    assert_eq!(taken.status, 409, "{}", taken.body);
    let listing = json(&server.get("/adapters").body);
    assert_eq!(
        listing["adapters"].as_array().map(Vec::len),
        Some(1),
        "{listing}"
    );
    let reply = generate(
        &server,
        "still serving",
        body!({"max_new_tokens": 4, "adapter_id": "a"}),
    );
    assert!(reply["generated_text"].is_string());
}

/// `outside` as a path from `root`'s parent (both temporary directories).
fn relative_to_parent(outside: &Path, root: &Path) -> String {
    let parent = root.parent().unwrap_or(root);
    let up = root
        .strip_prefix(parent)
        .map_or(0, |r| r.components().count());
    let mut path = PathBuf::new();
    for _ in 0..up {
        path.push("..");
    }
    match outside.strip_prefix(parent) {
        Ok(rest) => text(&path.join(rest).join("secret")),
        Err(_) => text(&outside.join("secret")),
    }
}

/// A copy of adapter `a` whose q_proj and k_proj tensors trade names (in the safetensors
/// header, whose offsets stay valid): shapes that do not fit the base.
fn swapped_q_and_k(place: &Place) -> String {
    let to = copy_adapter(place, "a", "swapped", |_| {});
    let path = Path::new(&to).join("adapter_model.safetensors");
    let mut bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{e}"));
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap_or_default()) as usize;
    let header = String::from_utf8_lossy(&bytes[8..8 + header_len])
        .replace("q_proj", "#_proj")
        .replace("k_proj", "q_proj")
        .replace("#_proj", "k_proj");
    bytes[8..8 + header_len].copy_from_slice(header.as_bytes());
    std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("{e}"));
    to
}

/// A copy of adapter `from` named `to` with its config edited.
fn copy_adapter(place: &Place, from: &str, to: &str, edit: impl Fn(&mut Value)) -> String {
    let (from, to) = (place.root.path().join(from), place.root.path().join(to));
    std::fs::create_dir_all(&to).unwrap_or_else(|e| panic!("{e}"));
    for file in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(from.join(file), to.join(file)).unwrap_or_else(|e| panic!("{e}"));
    }
    let config_path = to.join("adapter_config.json");
    let mut config = json(&std::fs::read_to_string(&config_path).unwrap_or_default());
    edit(&mut config);
    std::fs::write(&config_path, config.to_string()).unwrap_or_else(|e| panic!("{e}"));
    text(&to)
}

/// 32 clients generate without pause under the base, `a` and `c` while `c` and `b` are
/// registered and unregistered again and again: no request fails or comes back short, and
/// unregistering `c` waits for its running requests.
#[test]
fn adding_and_removing_adapters_under_32_clients_loses_nothing() {
    let place = Place::new();
    let server = Arc::new(place.serve(&["--max-loras", "2"]));
    let register = |name: &str| {
        let reply = server.post_raw(
            "/adapters",
            "application/json",
            &body!({"name": name, "src": place.path(name)}).to_string(),
            &[],
        );
        assert_eq!(reply.status, 200, "{}", reply.body);
    };
    register("c");
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..32)
        .map(|i| {
            let (server, stop) = (server.clone(), stop.clone());
            std::thread::spawn(move || {
                let adapter = ["", "a", "c"][i % 3];
                let mut done = 0;
                while !stop.load(Ordering::Relaxed) || done == 0 {
                    let mut parameters = body!({"max_new_tokens": 6, "ignore_eos": true});
                    if !adapter.is_empty() {
                        parameters["adapter_id"] = body!(adapter);
                    }
                    let (status, reply) = server.post(
                        "/generate",
                        &body!({"inputs": format!("client {i} turn {done}"), "parameters": parameters}),
                    );
                    assert_eq!(status, 200, "client {i}: {reply}");
                    let reply = json(&reply);
                    assert!(reply["generated_text"].is_string(), "{reply}");
                    done += 1;
                }
                done
            })
        })
        .collect();
    for _ in 0..4 {
        register("b");
        let (status, reply) = server.post(
            "/generate",
            &body!({"inputs": "under b", "parameters": {"max_new_tokens": 4, "adapter_id": "b"}}),
        );
        assert_eq!(status, 200, "{reply}");
        let gone = ureq::delete(&format!("{}/adapters/b", server.base)).call();
        assert!(gone.is_ok_and(|r| r.status() == 200));
    }
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for client in clients {
        total += client.join().unwrap_or_else(|_| panic!("a client failed"));
    }
    assert!(total >= 32);
    // Unregistering `c` waits for its running request, which ends whole.
    let long = {
        let server = server.clone();
        std::thread::spawn(move || {
            let (status, reply) = server.post(
                "/generate",
                &body!({"inputs": "a long one", "parameters":
                    {"max_new_tokens": 120, "ignore_eos": true, "adapter_id": "c", "details": true}}),
            );
            (
                status,
                json(&reply)["details"]["generated_tokens"].clone(),
                std::time::Instant::now(),
            )
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(200));
    let deleted = ureq::delete(&format!("{}/adapters/c", server.base)).call();
    let deleted_at = std::time::Instant::now();
    assert!(deleted.is_ok_and(|r| r.status() == 200));
    let (status, generated, finished_at) = long.join().unwrap_or_else(|_| panic!("long request"));
    assert_eq!((status, generated), (200, body!(120)));
    assert!(
        finished_at <= deleted_at,
        "unregistered before its request finished"
    );
    let listing = json(&server.get("/adapters").body);
    let names: Vec<&str> = listing["adapters"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a["name"].as_str())
        .collect();
    assert_eq!(names, ["a"], "{listing}");
}

/// `--lora-adapters` with a bare hub id: found in the hub cache (offline here; a reachable hub
/// would fill the cache the same way), named by its id, and the cache is an adapter root.
#[test]
fn a_hub_id_adapter_comes_from_the_hub_cache() {
    let place = Place::new();
    let home = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let repo = home.path().join("hub").join("models--org--tone");
    let snapshot = repo.join("snapshots").join("0123abcd");
    std::fs::create_dir_all(&snapshot).unwrap_or_else(|e| panic!("{e}"));
    std::fs::create_dir_all(repo.join("refs")).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(repo.join("refs").join("main"), "0123abcd").unwrap_or_else(|e| panic!("{e}"));
    for file in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(place.root.path().join("a").join(file), snapshot.join(file))
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let base = place.path("base");
    let home_path = text(home.path());
    let server = Server::start(
        &[
            "serve",
            "--model-id",
            &base,
            "--kv-cache-memory",
            "32Mi",
            "--lora-adapters",
            "org/tone",
        ],
        &[("HF_HOME", home_path.as_str()), ("HF_HUB_OFFLINE", "1")],
        0,
    );
    let by_id = generate(
        &server,
        "the river runs",
        body!({"max_new_tokens": 8, "adapter_id": "org/tone"}),
    );
    // The same adapter registered from the cache's snapshot (the cache is a root).
    let (status, reply) = server.post(
        "/v1/load_lora_adapter",
        &body!({"lora_name": "local", "lora_path": text(&snapshot)}),
    );
    assert_eq!(status, 200, "{reply}");
    let local = generate(
        &server,
        "the river runs",
        body!({"max_new_tokens": 8, "adapter_id": "local"}),
    );
    assert_eq!(by_id["generated_text"], local["generated_text"]);
}
