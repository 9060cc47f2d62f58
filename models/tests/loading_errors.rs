//! Loading failures name the file or tensor at fault and never panic; sharded checkpoints load
//! to the same model as a single file.

mod common;

use candle_core::{Device, Tensor};
use common::{tiny_model, Paged, TestResult};
use lantern_models::dummy::{write_dummy_model, DummySize, DummySpec};
use lantern_models::{load, Architecture, LoadOptions, LogitsWanted, ModelSource};
use std::collections::HashMap;
use std::path::Path;

fn dummy_dir(arch: Architecture) -> TestResult<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    let spec = DummySpec {
        architecture: arch,
        size: DummySize::Tiny,
        seed: 3,
    };
    write_dummy_model(spec, dir.path())?;
    Ok(dir)
}

/// The error message of loading `path`, which must fail.
fn load_error(path: &Path) -> String {
    match ModelSource::resolve(&path.to_string_lossy(), None)
        .and_then(|s| load(&s, &LoadOptions::cpu()))
    {
        Ok(_) => panic!("loading {} should fail", path.display()),
        Err(e) => e.to_string(),
    }
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) -> TestResult {
    let path = dir.join("config.json");
    let mut config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    edit(&mut config);
    std::fs::write(path, serde_json::to_string(&config)?)?;
    Ok(())
}

/// Rewrites `model.safetensors` as two shards plus an index; `keep` filters the tensors.
fn shard(dir: &Path, keep: impl Fn(&str) -> bool) -> TestResult {
    let single = dir.join("model.safetensors");
    let tensors = candle_core::safetensors::load(&single, &Device::Cpu)?;
    std::fs::remove_file(&single)?;
    let mut names: Vec<&String> = tensors.keys().filter(|n| keep(n)).collect();
    names.sort();
    let mut weight_map = serde_json::Map::new();
    for (index, part) in names.chunks(names.len().div_ceil(2)).enumerate() {
        let file = format!("model-{:05}-of-00002.safetensors", index + 1);
        let shard: HashMap<String, Tensor> = part
            .iter()
            .map(|n| ((*n).clone(), tensors[*n].clone()))
            .collect();
        candle_core::safetensors::save(&shard, dir.join(&file))?;
        for name in part {
            weight_map.insert((*name).clone(), file.clone().into());
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string())?;
    Ok(())
}

#[test]
fn sharded_checkpoint_loads_to_the_same_model() -> TestResult {
    let dir = dummy_dir(Architecture::Qwen2)?;
    let mut single = load(
        &ModelSource::Directory(dir.path().into()),
        &LoadOptions::cpu(),
    )?;
    shard(dir.path(), |_| true)?;
    let mut sharded = load(
        &ModelSource::Directory(dir.path().into()),
        &LoadOptions::cpu(),
    )?;
    let prompt = [5u32, 17, 99, 250];
    let run = |decoder: &mut lantern_models::Decoder| -> TestResult<Tensor> {
        let mut paged = Paged::new(decoder, 4, 16)?;
        let seq = paged.add_sequence();
        Ok(decoder.forward(&[paged.step(seq, &prompt, LogitsWanted::Last)?])?)
    };
    common::assert_close(
        "sharded vs single",
        &run(&mut sharded.decoder)?,
        &run(&mut single.decoder)?,
        0.0,
    )?;
    Ok(())
}

#[test]
fn missing_shard_is_named() -> TestResult {
    let dir = dummy_dir(Architecture::Llama)?;
    shard(dir.path(), |_| true)?;
    std::fs::remove_file(dir.path().join("model-00002-of-00002.safetensors"))?;
    let message = load_error(dir.path());
    assert!(
        message.contains("model-00002-of-00002.safetensors") && message.contains("missing"),
        "{message}"
    );
    Ok(())
}

#[test]
fn missing_tensor_is_named() -> TestResult {
    let dir = dummy_dir(Architecture::Llama)?;
    shard(dir.path(), |name| {
        name != "model.layers.1.mlp.up_proj.weight"
    })?;
    let message = load_error(dir.path());
    assert!(
        message.contains("model.layers.1.mlp.up_proj.weight") && message.contains("missing"),
        "{message}"
    );
    Ok(())
}

#[test]
fn wrong_shape_names_tensor_file_and_shapes() -> TestResult {
    let dir = dummy_dir(Architecture::Mistral)?;
    edit_config(dir.path(), |c| c["intermediate_size"] = 96.into())?;
    let message = load_error(dir.path());
    assert!(
        message.contains("model.layers.0.mlp.gate_proj.weight"),
        "{message}"
    );
    assert!(
        message.contains("model.safetensors")
            && message.contains("[128, 64]")
            && message.contains("[96, 64]"),
        "{message}"
    );
    Ok(())
}

#[test]
fn unknown_architecture_lists_what_is_supported() -> TestResult {
    let dir = dummy_dir(Architecture::Llama)?;
    edit_config(dir.path(), |c| c["model_type"] = "gpt_neox".into())?;
    let message = load_error(dir.path());
    assert!(
        message.contains("gpt_neox") && message.contains("llama, mistral, qwen2, qwen3"),
        "{message}"
    );
    Ok(())
}

#[test]
fn corrupt_files_are_named() -> TestResult {
    let dir = dummy_dir(Architecture::Qwen3)?;
    let weights = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&weights)?;
    std::fs::write(&weights, &bytes[..bytes.len() / 2])?;
    let message = load_error(dir.path());
    assert!(
        message.contains("model.safetensors") && message.contains("not a valid safetensors file"),
        "{message}"
    );

    std::fs::write(dir.path().join("config.json"), "{ not json")?;
    let message = load_error(dir.path());
    assert!(message.contains("config.json"), "{message}");

    let gguf = dir.path().join("broken.gguf");
    std::fs::write(&gguf, b"GGUF but not really a gguf file at all")?;
    let message = load_error(&gguf);
    assert!(
        message.contains("broken.gguf") && message.contains("not a valid GGUF file"),
        "{message}"
    );
    Ok(())
}

#[test]
fn missing_tokenizer_is_named() -> TestResult {
    let dir = dummy_dir(Architecture::Qwen2)?;
    std::fs::remove_file(dir.path().join("tokenizer.json"))?;
    let message = load_error(dir.path());
    assert!(
        message.contains("tokenizer.json") && message.contains("missing"),
        "{message}"
    );
    Ok(())
}

#[test]
fn a_missing_local_path_is_not_mistaken_for_a_hub_id() {
    let message = load_error(Path::new("/nonexistent/model/dir"));
    assert!(
        message.contains("/nonexistent/model/dir") && message.contains("no such file"),
        "{message}"
    );
}

#[test]
fn transformers5_config_shape_loads() -> TestResult {
    let (dir, model) = tiny_model(Architecture::Mistral)?;
    edit_config(dir.path(), |c| {
        let theta = c["rope_theta"].clone();
        c.as_object_mut().map(|o| o.remove("rope_theta"));
        c["rope_parameters"] = serde_json::json!({"rope_theta": theta, "rope_type": "default"});
        c["sliding_window"] = serde_json::Value::Null;
    })?;
    let reloaded = load(
        &ModelSource::Directory(dir.path().into()),
        &LoadOptions::cpu(),
    )?;
    let config = reloaded.decoder.config();
    assert_eq!(config.rope, model.decoder.config().rope);
    assert!(config.sliding_window.iter().all(Option::is_none));
    Ok(())
}

#[test]
fn sizes_that_overflow_are_refused_by_name() -> TestResult {
    let dir = dummy_dir(Architecture::Llama)?;
    edit_config(dir.path(), |c| {
        c["hidden_size"] = (u64::MAX / 4).into();
        c["intermediate_size"] = (u64::MAX / 4).into();
    })?;
    let message = load_error(dir.path());
    assert!(message.contains("multiply past"), "{message}");
    Ok(())
}

/// A GGUF file whose embedding table has no dimension or one (malformed, or another model's)
/// is refused with the tensor and its shape named, not a panic.
#[test]
fn a_gguf_embedding_of_the_wrong_rank_is_refused_by_name() -> TestResult {
    use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
    let dir = tempfile::tempdir()?;
    let architecture = gguf_file::Value::String("llama".into());
    let hidden = gguf_file::Value::U32(8);
    let heads = gguf_file::Value::U32(2);
    let layers = gguf_file::Value::U32(1);
    let metadata = [
        ("general.architecture", &architecture),
        ("llama.embedding_length", &hidden),
        ("llama.attention.head_count", &heads),
        ("llama.block_count", &layers),
    ];
    let one_dim = dir.path().join("rank1.gguf");
    let table = QTensor::quantize(
        &Tensor::zeros(64, candle_core::DType::F32, &Device::Cpu)?,
        GgmlDType::F32,
    )?;
    let mut file = std::fs::File::create(&one_dim)?;
    gguf_file::write(&mut file, &metadata, &[("token_embd.weight", &table)])?;
    drop(file);
    // candle writes no 0-d tensor: the same file with the dimension cut out of the tensor
    // info (n_dims 0; 8 bytes of padding keep the data where it was).
    let bytes = std::fs::read(&one_dim)?;
    let name = b"token_embd.weight";
    let at = bytes
        .windows(name.len())
        .position(|w| w == name)
        .ok_or("no tensor name in the file")?
        + name.len();
    let (n_dims, dim, rest) = (at, at + 4, at + 12);
    let mut no_dim = bytes[..n_dims].to_vec();
    no_dim.extend_from_slice(&0u32.to_le_bytes());
    no_dim.extend_from_slice(&bytes[rest..rest + 12]); // type and offset
    no_dim.extend_from_slice(&[0; 8]);
    no_dim.extend_from_slice(&bytes[rest + 12..]);
    assert_eq!(&bytes[n_dims..dim], &1u32.to_le_bytes());
    let zero_dim = dir.path().join("rank0.gguf");
    std::fs::write(&zero_dim, no_dim)?;
    for (path, named) in [(zero_dim, "[]"), (one_dim, "[64]")] {
        let message = load_error(&path);
        assert!(
            message.contains("token_embd.weight") && message.contains(named),
            "{message}"
        );
    }
    Ok(())
}
